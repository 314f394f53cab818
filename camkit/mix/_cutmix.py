"""CutMix (Yun et al., ICCV 2019) and Mixup (Zhang et al., ICLR 2018): the mixes without CAMs.

Both equal timm's ``Mixup`` (``mixup_alpha=0, cutmix_alpha=α`` and ``mixup_alpha=α,
cutmix_alpha=0``, ``label_smoothing=0``, ``correct_lam=True``) on the same draws, bit for bit,
images and targets: ``mode="batch"`` is timm's ``mode="batch"`` and ``mode="sample"`` its
``mode="elem"`` (``tests/test_mix.py`` pins both, on several image sizes). They differ from timm
in how the partner is drawn: a random permutation of the batch (as in SnapMix), where timm pairs
the batch with its reverse (``x.flip(0)``); draws with ``perm = arange(B).flip(0)`` reproduce
timm's batch. Not offered: timm's ``mode="pair"`` (each pair of reversed images swaps its boxes
with one draw: a pairing that only the reversed-batch partner defines) and
``correct_lam=False`` (the label weight from the drawn λ even where the box was clipped at the
image border, so that the targets misstate the pasted area; timm's default is ``True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from camkit._checks import (
    check_choice,
    check_in_range,
    check_int,
    check_permutation,
    check_positive,
    check_probability,
    check_tensor,
)
from camkit._config import config_setting
from camkit.mix._base import Mix
from camkit.mix._ops import paste, soft_targets
from camkit.mix._random import (
    _sample_beta_device,
    _sample_beta_host,
    _sample_boxes,
    _sample_cuboids,
)
from camkit.mix._snapmix import Box, BoxMode, SnapMixParams, _check_box_params


class CutMixParams(NamedTuple):
    """The random draws of one CutMix call ([`CutMix.sample`][camkit.Mix.sample]).

    Attributes:
        perm: ``(B,)`` partner index of each image.
        box: ``(B, 4)`` box ``(y0, x0, y1, x1)``, half-open, cut from the partner and pasted at the
            same place (volumes: ``(B, 6)`` cuboids ``(z0, y0, x0, z1, y1, x1)``).
        apply: ``(B,)`` bool, whether the image is mixed (the ``prob`` coin and a non-empty box).
        shared_box: ``(box, mixed)`` as host ints when the batch shares one box drawn on the host;
            ``None`` otherwise (set it to ``None`` when editing the tensors by hand).
    """

    perm: torch.Tensor
    box: torch.Tensor
    apply: torch.Tensor
    shared_box: tuple[Box, bool] | None = None


class MixupParams(NamedTuple):
    """The random draws of one Mixup call ([`Mixup.sample`][camkit.Mix.sample]).

    Attributes:
        perm: ``(B,)`` partner index of each image.
        lam: ``(B,)`` float64 weight ``λ`` of each image itself (``1 − λ`` of its partner); 1 where
            the image is not mixed.
        shared_lam: ``λ`` as a host float when the batch shares one weight drawn on the host;
            ``None`` otherwise.
    """

    perm: torch.Tensor
    lam: torch.Tensor
    shared_lam: float | None = None


@dataclass(frozen=True)
class _MixConfig:
    """CutMix's and Mixup's settings, validated once when built."""

    num_classes: int
    alpha: float = 1.0
    prob: float = 1.0
    mode: BoxMode = "batch"

    def __post_init__(self) -> None:
        check_int(self.num_classes, "num_classes", minimum=1)
        object.__setattr__(self, "alpha", check_positive(self.alpha, "alpha"))
        object.__setattr__(self, "prob", check_probability(self.prob, "prob"))
        check_choice(self.mode, "mode", ("batch", "sample"))


def _beta(config: _MixConfig, count: int, generator, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return _sample_beta_host(config.alpha, (count,), generator)
    return _sample_beta_device(config.alpha, (count,), generator, device)


class _TimmLikeMix(Mix):
    """What CutMix and Mixup share: settings, the host/device choice, the docstring fields."""

    num_classes = config_setting("num_classes")
    alpha = config_setting("alpha")
    prob = config_setting("prob")
    mode = config_setting("mode")

    def __init__(
        self,
        num_classes: int,
        alpha: float = 1.0,
        prob: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        mode: BoxMode = "batch",
    ) -> None:
        super().__init__(_MixConfig(num_classes, alpha, prob, mode), generator)

    @property
    def _host_draws(self) -> bool:
        return self.config.mode == "batch"

    def extra_repr(self) -> str:
        c = self.config
        return f"num_classes={c.num_classes}, alpha={c.alpha}, prob={c.prob}, mode={c.mode!r}"


class CutMix(_TimmLikeMix):
    """CutMix: a box of the partner image pasted at the same place, labels weighed by area.

    Convention:
        ``λ ~ Beta(α, α)``; the box is timm's ``rand_bbox``: sides ``cut = floor(H·sqrt(1 − λ))``
        (and ``W``), a uniform centre ``c``, rows ``c − cut // 2`` to ``c + (cut + 1) // 2``
        (half-open), clipped to the image; ``mixed[i]`` is ``images[perm[i]]`` inside ``box[i]``
        and ``images[i]`` outside, copied pixel for pixel; the target is
        ``λ'·onehot(y_i) + (1 − λ')·onehot(y_perm[i])`` with ``1 − λ'`` the box's share of the
        image (timm's ``correct_lam=True``), computed as timm does: in float64 for
        ``mode="batch"`` (one box and one coin for the batch, timm's default), with ``λ'`` first
        rounded to the targets' dtype for ``"sample"`` (one per image, timm's ``"elem"``, whose
        per-image λ are float32). SnapMix's boxes are the SnapMix authors' ``rand_bbox``, whose
        far edge is ``c + cut // 2``: one pixel shorter where ``cut`` is odd.

    Args:
        num_classes: ``K``.
        alpha: Beta parameter α > 0 (timm's and the CutMix paper's default: 1).
        prob: probability that a batch (``"batch"``) or an image (``"sample"``) is mixed.
        generator: random generator of the draws (a CPU one for ``mode="batch"``).
        mode: ``"batch"`` or ``"sample"`` (timm's ``"elem"``; timm's ``"pair"`` is not offered).

    ``sample`` draws a [`CutMixParams`][camkit.CutMixParams] (on the host by default, where a
    batch-wide box is also kept as host ints, so the paste is a slice copy); it reads no CAMs.

    Volumes ``(B, C, D, H, W)`` get cuboids ``(z0, y0, x0, z1, y1, x1)``: side ratio
    ``(1 − λ)^(1/3)``, the same centre and far-edge rule per axis, the target weighed by the
    cuboid's share of the volume (one code path: the box has one more axis).

    Shape:
        - images: ``(B, C, H, W)`` float (not modified), or ``(B, C, D, H, W)`` volumes; labels
          ``(B,)`` integer in ``[0, K)``.
        - output: ``mixed`` of the images' shape, ``soft`` ``(B, K)`` float32 or wider.

    Examples:
        >>> import torch
        >>> from camkit import CutMix
        >>> mix = CutMix(num_classes=2, generator=torch.Generator().manual_seed(0))
        >>> mixed, soft = mix(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0]))
        >>> soft.sum(1)
        tensor([1., 1., 1., 1.])
    """

    volumes = True

    def _draw(self, batch_size, height, width, cams, device, generator, depth=None) -> CutMixParams:
        size = (height, width) if depth is None else (depth, height, width)
        return _sample_cutmix(self.config, batch_size, size, generator, device)

    def _apply(self, images: torch.Tensor, params: CutMixParams) -> torch.Tensor:
        return paste(images, _as_snapmix(params))  # boxes or cuboids: one paste

    def _weigh(self, labels, cams, params, size, dtype) -> torch.Tensor:
        box = params.box.to(labels.device, non_blocking=True)
        rank = len(size)  # the box's share of the image (volume), exact in int64 then float64
        share = (box[:, rank:] - box[:, :rank]).prod(1).double() / math.prod(size)
        apply = params.apply.to(labels.device, non_blocking=True)
        lam = torch.where(apply, 1.0 - share, 1.0)
        return _pair_targets(self, labels, params.perm, lam, dtype)

    def check_params(self, params: object, batch_size: int, size: tuple[int, int]) -> None:
        _check_box_params(params, batch_size, CutMixParams, size)


@torch.compiler.disable  # host-side draws: one opaque call under torch.compile
def _sample_cutmix(config: _MixConfig, b, size, generator, device) -> CutMixParams:
    draws = 1 if config.mode == "batch" else b
    perm = torch.randperm(b, generator=generator, device=device)
    lam = _beta(config, draws, generator, device)
    if len(size) == 2:
        box = _sample_boxes(lam, *size, generator, far_edge_up=True)
    else:
        box = _sample_cuboids(lam, size, generator)
    coin = torch.rand(draws, generator=generator, device=device) < config.prob
    rank = len(size)
    apply = coin & (box[:, rank:] > box[:, :rank]).all(1)  # a non-empty box
    shared = None
    if device.type == "cpu" and config.mode == "batch":
        shared = (tuple(box[0].tolist()), bool(apply[0]))
    return CutMixParams(
        perm=perm,
        box=box.expand(b, 2 * rank).contiguous(),
        apply=apply.expand(b).contiguous(),
        shared_box=shared,
    )


def _pair_targets(mix: _TimmLikeMix, labels, perm, lam: torch.Tensor, dtype) -> torch.Tensor:
    """``λ·onehot(y) + (1 − λ)·onehot(y[perm])`` in timm's arithmetic: ``1 − λ`` in float64 for
    ``mode="batch"`` (timm's Python float), in ``dtype`` after rounding ``λ`` for ``"sample"``
    (timm's float32 per-image λ)."""
    if mix.config.mode == "sample":
        lam = lam.to(dtype)
    return soft_targets(labels, perm, lam, 1.0 - lam, mix.num_classes, dtype=dtype)


def _as_snapmix(params: CutMixParams) -> SnapMixParams:
    """The same draws as SnapMix's (box B = box A): the paste is then a slice copy."""
    shared = None
    if params.shared_box is not None:
        box, mixed = params.shared_box
        shared = (box, box, mixed)
    return SnapMixParams(params.perm, params.box, params.box, params.apply, shared)


class Mixup(_TimmLikeMix):
    """Mixup: each image blended with its partner, labels weighed by the blend.

    Convention:
        ``λ ~ Beta(α, α)``; ``mixed[i] = λ_i·images[i] + (1 − λ_i)·images[perm[i]]`` and the
        target ``λ_i·onehot(y_i) + (1 − λ_i)·onehot(y_perm[i])``; images the ``prob`` coin leaves
        un-mixed have ``λ_i = 1``. ``mode="batch"``: one ``λ`` and one coin for the batch (timm's
        default), ``"sample"``: one per image (timm's ``"elem"``; the targets then round ``λ_i``
        to their dtype before ``1 − λ_i``, as timm's float32 per-image λ).

    Args:
        num_classes: ``K``.
        alpha: Beta parameter α > 0 (timm's ``Mixup`` default: 1).
        prob: probability that a batch (``"batch"``) or an image (``"sample"``) is mixed.
        generator: random generator of the draws (a CPU one for ``mode="batch"``).
        mode: ``"batch"`` or ``"sample"`` (timm's ``"elem"``; timm's ``"pair"`` is not offered).

    ``sample`` draws a [`MixupParams`][camkit.MixupParams] (on the host by default, where a
    batch-wide ``λ`` is also kept as a host float); it reads neither the image size nor CAMs.

    Shape:
        - images: ``(B, C, H, W)`` float (not modified), or ``(B, C, D, H, W)`` volumes (the
          blend reads no spatial layout); labels ``(B,)`` integer in ``[0, K)``.
        - output: ``mixed`` of the images' shape, ``soft`` ``(B, K)`` float32 or wider.

    Examples:
        >>> import torch
        >>> from camkit import Mixup
        >>> mix = Mixup(num_classes=2, generator=torch.Generator().manual_seed(0))
        >>> mixed, soft = mix(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0]))
        >>> mixed.shape, soft.shape
        (torch.Size([4, 3, 32, 32]), torch.Size([4, 2]))
    """

    volumes = True

    def _draw(self, batch_size, height, width, cams, device, generator, depth=None) -> MixupParams:
        return _sample_mixup(self.config, batch_size, generator, device)

    def _apply(self, images: torch.Tensor, params: MixupParams) -> torch.Tensor:
        perm = params.perm.to(images.device, non_blocking=True)
        if params.shared_lam is not None:  # timm's arithmetic, so equal draws give equal bits
            lam = params.shared_lam
            if lam == 1.0:
                return images
            return images.mul(lam).add_(images.index_select(0, perm).mul_(1.0 - lam))
        lam = params.lam.to(images.device, non_blocking=True).to(images.dtype)
        lam = lam.view(-1, *(1,) * (images.ndim - 1))
        return images * lam + images.index_select(0, perm) * (1.0 - lam)

    def _weigh(self, labels, cams, params, size, dtype) -> torch.Tensor:
        lam = params.lam.to(labels.device, non_blocking=True)
        return _pair_targets(self, labels, params.perm, lam, dtype)

    def check_params(self, params: object, batch_size: int, size: tuple[int, int]) -> None:
        if not isinstance(params, MixupParams):
            raise TypeError(f"params: expected a MixupParams, got {type(params).__name__}")
        check_tensor(params.perm, "params.perm", shape=(batch_size,), floating=False)
        check_tensor(params.lam, "params.lam", shape=(batch_size,), floating=True)
        check_permutation(params.perm, "params.perm")
        check_in_range(params.lam, "params.lam", 0.0, 1.0)  # NaN is outside too
        shared = params.shared_lam
        if shared is not None:
            if isinstance(shared, bool) or not isinstance(shared, float):
                raise TypeError(
                    f"params.shared_lam: expected None or a float, got {type(shared).__name__}"
                )
            if not 0.0 <= shared <= 1.0:
                raise ValueError(f"params.shared_lam: expected a value in [0, 1], got {shared}")
            # the images would be blended with shared_lam and the targets weighed with lam
            check_in_range(params.lam, "params.lam (equal to params.shared_lam)", shared, shared)


@torch.compiler.disable  # host-side draws: one opaque call under torch.compile
def _sample_mixup(config: _MixConfig, b, generator, device) -> MixupParams:
    draws = 1 if config.mode == "batch" else b
    perm = torch.randperm(b, generator=generator, device=device)
    lam = _beta(config, draws, generator, device).to(torch.float64)
    coin = torch.rand(draws, generator=generator, device=device) < config.prob
    lam = torch.where(coin, lam, 1.0)
    shared = float(lam[0]) if device.type == "cpu" and config.mode == "batch" else None
    return MixupParams(perm=perm, lam=lam.expand(b).contiguous(), shared_lam=shared)
