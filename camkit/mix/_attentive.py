"""Attentive CutMix (Walawalkar et al., ICASSP 2020): the partner's most relevant cells pasted.

A CAM-guided mix whose *draws* depend on the CAMs: the cells pasted are the ``top_k`` cells of the
partner's CAM (the un-mixed batch's, from the frozen side pass of the training step), where the
paper used the attention grid of a separate pretrained network. Volumes take the same code with
one more axis: the cells of a 3-D CAM, upsampled to voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from camkit._checks import check_int, check_permutation, check_probability, check_tensor
from camkit._config import config_setting
from camkit.mix._base import Mix
from camkit.mix._ops import soft_targets


class CellMixParams(NamedTuple):
    """The draws of one [`AttentiveCutMix`][camkit.AttentiveCutMix] call.

    Attributes:
        perm: ``(B,)`` partner index of each image.
        cells: ``(B, h, w)`` bool, the cells of the feature grid pasted from the partner (all
            ``False`` where the image is not mixed); volumes: ``(B, d, h, w)``. Cell ``(r, c)``
            covers the pixel rows ``⌈r·H/h⌉ … ⌈(r+1)·H/h⌉ − 1`` (the rows ``y`` with
            ``⌊y·h/H⌋ = r``) and the columns (slices) alike.
    """

    perm: torch.Tensor
    cells: torch.Tensor


@dataclass(frozen=True)
class _AttentiveConfig:
    num_classes: int
    top_k: int = 6
    prob: float = 1.0

    def __post_init__(self) -> None:
        check_int(self.num_classes, "num_classes", minimum=1)
        check_int(self.top_k, "top_k", minimum=1)
        object.__setattr__(self, "prob", check_probability(self.prob, "prob"))


def _pixel_mask(cells: torch.Tensor, *size: int) -> torch.Tensor:
    """``(B, *size)`` bool: the pixels (voxels) of the ``True`` cells of ``cells`` ``(B, *grid)``,
    ``size`` ``(H, W)`` or ``(D, H, W)``: pixel ``y`` lies in cell ``⌊y·h/H⌋`` along each axis."""
    mask = cells
    for axis, (side, grid) in enumerate(zip(size, cells.shape[1:], strict=True)):
        index = torch.arange(side, device=cells.device) * grid // side
        mask = mask.index_select(axis + 1, index)
    return mask


class AttentiveCutMix(Mix):
    """Attentive CutMix: the ``top_k`` most relevant cells of the partner pasted in place.

    Convention:
        The partner is ``perm[i]`` (a random permutation). Its CAM for its own label (``cams``,
        ``(B, h, w)``, the un-mixed batch) ranks the ``h·w`` cells of the feature grid (ties to the
        lower row-major index); ``mixed[i]`` takes the partner's pixels in its ``top_k`` cells
        and keeps its own elsewhere. The target is ``(1 − a)·onehot(y_i) + a·onehot(y_perm[i])``
        with ``a`` the pasted share of the image (the paper's ``k/N`` when the grid divides the
        image). Each batch (one coin) is mixed with probability ``prob``. Volumes: the ``d·h·w``
        cells of the ``(B, d, h, w)`` CAMs, ranked row-major over ``(d, h, w)``, each pasted as
        its voxels; ``a`` the pasted share of the volume (the same code with one more axis).

    Args:
        num_classes: ``K``.
        top_k: cells pasted (the paper: 6 of a 7×7 grid); at most ``h·w − 1`` (``d·h·w − 1``).
        prob: probability that a batch is mixed.
        generator: random generator of the draws (the permutation and the coin).

    Shape:
        - images: ``(B, C, H, W)`` float, or ``(B, C, D, H, W)`` volumes; labels ``(B,)``; cams
          ``(B, h, w)`` (volumes: ``(B, d, h, w)``), the CAMs of the un-mixed images for their
          labels (e.g. ``CAMExtractor.forward_frozen(images, labels)``).
        - output: ``mixed`` of the images' shape, ``soft`` ``(B, K)``.

    Examples:
        >>> import torch
        >>> from camkit import AttentiveCutMix
        >>> mix = AttentiveCutMix(2, top_k=2, generator=torch.Generator().manual_seed(0))
        >>> images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
        >>> mixed, soft = mix(images, labels, torch.rand(4, 4, 4))
        >>> soft.sum(1)
        tensor([1., 1., 1., 1.])
    """

    needs_cams = "unmixed"
    draws_need_cams = True
    volumes = True
    num_classes = config_setting("num_classes")
    top_k = config_setting("top_k")
    prob = config_setting("prob")

    def __init__(
        self,
        num_classes: int,
        top_k: int = 6,
        prob: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(_AttentiveConfig(num_classes, top_k, prob), generator)

    def _draw(self, batch_size, height, width, cams, device, generator, depth=None):
        b, grid = cams.shape[0], tuple(cams.shape[1:])
        count = math.prod(grid)
        if self.config.top_k >= count:
            kind = "image" if depth is None else "volume"
            raise ValueError(
                f"top_k: {self.config.top_k} cells leave nothing of the {kind} in a "
                f"{'×'.join(map(str, grid))} grid; expected at most {count - 1}"
            )
        perm = torch.randperm(batch_size, generator=generator, device=device)
        coin = torch.rand(1, generator=generator, device=device) < self.config.prob
        perm = perm.to(cams.device, non_blocking=True)
        order = torch.argsort(cams.detach()[perm].flatten(1), dim=1, descending=True, stable=True)
        cells = torch.zeros(b, count, dtype=torch.bool, device=cams.device)
        cells.scatter_(1, order[:, : self.config.top_k], True)
        cells &= coin.to(cams.device, non_blocking=True)
        return CellMixParams(perm=perm, cells=cells.view(b, *grid))

    def _apply(self, images: torch.Tensor, params: CellMixParams) -> torch.Tensor:
        mask = _pixel_mask(params.cells.to(images.device), *images.shape[2:])
        partner = images.index_select(0, params.perm.to(images.device, non_blocking=True))
        return torch.where(mask[:, None], partner, images)

    def _weigh(self, labels, cams, params, size, dtype) -> torch.Tensor:
        mask = _pixel_mask(params.cells.to(labels.device), *size)
        share = mask.flatten(1).double().mean(1)
        return soft_targets(labels, params.perm, 1.0 - share, share, self.num_classes, dtype=dtype)

    def check_params(self, params: object, batch_size: int, size: tuple[int, ...]) -> None:
        if not isinstance(params, CellMixParams):
            raise TypeError(f"params: expected a CellMixParams, got {type(params).__name__}")
        check_tensor(params.perm, "params.perm", shape=(batch_size,), floating=False)
        grid = (None,) * len(size)  # (h, w); volumes (d, h, w)
        check_tensor(params.cells, "params.cells", shape=(batch_size, *grid), dtype=torch.bool)
        check_permutation(params.perm, "params.perm")
        grid = tuple(params.cells.shape[1:])
        if any(g > s for g, s in zip(grid, size, strict=True)):  # a cell covers a pixel or more
            kind = "image" if len(size) == 2 else "volume"
            raise ValueError(
                f"params.cells: expected a grid no finer than the {'×'.join(map(str, size))} "
                f"{kind}, got a {'×'.join(map(str, grid))} grid"
            )

    def extra_repr(self) -> str:
        c = self.config
        return f"num_classes={c.num_classes}, top_k={c.top_k}, prob={c.prob}"
