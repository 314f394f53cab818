"""Contrastive patch embedding (CPE) loss, Eq. 1 of Ali, Shaharabany & Wolf (MIDL 2022).

For each image the feature-map cells are ranked by a class activation map; the ``n`` most relevant
cells ``u_1 … u_n`` and the ``n`` least relevant ``v_1 … v_n`` are taken (``n = 2`` in the paper).
Each group is pulled together and pushed away from the other:

    L = −ln e^{u1·u2} / (e^{u1·u2} + Σ_{i,j} e^{u_i·v_j})
        −ln e^{v1·v2} / (e^{v1·v2} + Σ_{i,j} e^{u_i·v_j})

with all ``n²`` cross pairs in both denominators, raw dot products and no temperature. It is
computed as ``logsumexp([pos, cross…]) − pos``, so dot products of order 10³ (2048-d post-ReLU
ResNet-50 features) give finite values and gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from camkit._checks import check_choice, check_finite, check_int, check_positive, check_tensor
from camkit._config import config_setting

__all__ = ["ContrastivePatchLoss", "contrastive_patch_loss", "soft_cross_entropy"]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class _CPEConfig:
    """The loss's settings, validated once: held by the Module, built per call by the function."""

    num_patches: int = 2
    normalize: bool = True
    temperature: float = 0.1
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        check_int(self.num_patches, "num_patches", minimum=2)  # a pair per group
        object.__setattr__(self, "normalize", bool(self.normalize))
        object.__setattr__(self, "temperature", check_positive(self.temperature, "temperature"))
        check_choice(self.reduction, "reduction", _REDUCTIONS)


def _check_patch_inputs(features: object, cams: object) -> None:
    check_tensor(features, "features", ndim=(4, 5), floating=True)
    check_tensor(cams, "cams", ndim=features.ndim - 1, floating=True)
    if cams.shape[0] != features.shape[0]:
        raise ValueError(
            f"cams: expected {features.shape[0]} maps to match features "
            f"{tuple(features.shape)}, got shape {tuple(cams.shape)}"
        )
    check_finite(cams, "cams")  # NaN maps would rank the cells like constant ones
    check_finite(features, "features")  # a NaN cell would make the loss NaN


def _select_patches(
    features: torch.Tensor, cams: torch.Tensor, num_patches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the feature vectors of the ``n`` highest- and ``n`` lowest-CAM cells.

    Convention:
        Cells are ranked at the feature map's own resolution. ``cams`` at another resolution are
        first averaged onto the feature grid (``F.interpolate(mode="area")``). Passing the CAM
        at feature resolution ranks by the raw cell values; passing it bilinearly upsampled to
        the image (224² for a 7×7 map) reproduces the paper's ranking by the CAM sum over each
        cell's 32×32 patch — the two can differ, since upsampling mixes neighbouring cells.
        Ties are broken by the row-major cell index (stable sort), so the groups never share a
        cell.

        Volumes are the same code: the cells of a ``(B, C, d, h, w)`` map are ranked in their
        row-major ``(d, h, w)`` order, so a depth-1 volume ranks as the image it holds.

    Args:
        features: ``(B, C, h, w)`` feature map, or ``(B, C, d, h, w)`` for volumes.
        cams: ``(B, h', w')`` (``(B, d', h', w')``) maps ranking the cells (only their order
            matters; no gradient).
        num_patches: ``n`` ≥ 1 cells per group (validated by the caller, as the tensors' types
            and shapes); ``2n ≤`` the number of cells.

    Returns:
        ``(top (B, n, C), bottom (B, n, C))``, top in decreasing and bottom in increasing CAM order,
        differentiable with respect to ``features``.
    """
    c, grid = features.shape[1], tuple(features.shape[2:])
    if 2 * num_patches > math.prod(grid):  # shapes only: checked on every call
        sides = "×".join(str(s) for s in grid)
        raise ValueError(
            f"num_patches: 2 × {num_patches} cells do not fit in the {sides} feature map"
        )
    ranking = cams.detach()
    if tuple(ranking.shape[1:]) != grid:
        ranking = F.interpolate(ranking[:, None].float(), size=grid, mode="area")[:, 0]
    order = torch.argsort(ranking.flatten(1), dim=1, descending=True, stable=True)
    top_idx = order[:, :num_patches]
    bottom_idx = order.flip(1)[:, :num_patches]
    cells = features.flatten(2).transpose(1, 2)
    top = cells.gather(1, top_idx[..., None].expand(-1, -1, c))
    bottom = cells.gather(1, bottom_idx[..., None].expand(-1, -1, c))
    return top, bottom


def _group_term(within: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """Mean over the group's pairs ``i < j`` of ``−ln e^{s_ij} / (e^{s_ij} + Σ e^{cross})``."""
    n = within.shape[-1]
    i, j = torch.triu_indices(n, n, offset=1, device=within.device)
    positive = within[:, i, j]
    logits = torch.cat(
        [positive[..., None], cross[:, None, :].expand(-1, positive.shape[1], -1)], -1
    )
    return (torch.logsumexp(logits, dim=-1) - positive).mean(1)


def _contrastive_patch_loss(
    features: torch.Tensor, cams: torch.Tensor, config: _CPEConfig, validate_args: bool = True
) -> torch.Tensor:
    """The loss under a validated ``config``: checks the tensors, never the settings again."""
    if validate_args:
        _check_patch_inputs(features, cams)
    top, bottom = _select_patches(features, cams, config.num_patches)
    compute_dtype = torch.promote_types(features.dtype, torch.float32)
    # autocast would run the dot products in bf16/fp16: raw 2048-d products of order 10^3 need fp32
    with torch.autocast(features.device.type, enabled=False):
        u, v = top.to(compute_dtype), bottom.to(compute_dtype)
        if config.normalize:
            u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
        scale = 1.0 / config.temperature
        cross = (u @ v.transpose(1, 2)).flatten(1) * scale
        loss = _group_term(u @ u.transpose(1, 2) * scale, cross) + _group_term(
            v @ v.transpose(1, 2) * scale, cross
        )
    if config.reduction == "mean":
        # an empty batch: 0, not mean()'s 0/0 = NaN; the (empty) sum keeps the autograd graph
        return loss.mean() if loss.shape[0] > 0 else loss.sum()
    if config.reduction == "sum":
        return loss.sum()
    return loss


def contrastive_patch_loss(
    features: torch.Tensor,
    cams: torch.Tensor,
    num_patches: int = 2,
    *,
    normalize: bool = True,
    temperature: float = 0.1,
    reduction: Reduction = "mean",
    validate_args: bool = True,
) -> torch.Tensor:
    """Contrastive patch embedding loss (paper Eq. 1), functional form.

    Convention:
        Cells are ranked at the feature map's resolution (``cams`` at another resolution are
        first area-averaged onto the feature grid; ties go to the lower row-major index), and
        ``u`` are the ``n`` highest and ``v`` the ``n`` lowest cells. With
        ``s(a, b) = a·b / τ`` (``a, b`` L2-normalised first when ``normalize``), the loss of an
        image is ``T(u) + T(v)`` where ``T(g)`` averages, over the pairs ``i < j`` of group ``g``,
        ``logsumexp([s(g_i, g_j), s(u_k, v_l) for all k, l]) − s(g_i, g_j)``. For ``n = 2``,
        ``normalize=False``, ``τ = 1`` this is Eq. 1 exactly. Computed in float32 at least.

    Args:
        features: ``(B, C, h, w)`` feature map (e.g. `CAMOutput.features`), or
            ``(B, C, d, h, w)`` for volumes (the cells are then 3-D, ranked the same way).
        cams: ``(B, h', w')`` (volumes: ``(B, d', h', w')``) CAMs of the class the cells should
            support (ground truth in training; for a SnapMix image, the CAM of its dominant
            label from the same forward). Only their order matters: no gradient flows into them.
        num_patches: ``n ≥ 2`` cells per group (paper: 2; no gain beyond it), ``2n ≤ h·w``.
        normalize: L2-normalise the cell vectors (cosine similarities; the default). ``False``
            with ``temperature=1.0`` is the paper's Eq. 1.
        temperature: ``τ > 0`` dividing the similarities (default 0.1; the paper's: 1).
        reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` for ``(B,)``.
        validate_args: check the tensors' types and shapes (torchmetrics' convention; a caller
            that checked them passes False).

    Returns:
        the loss (scalar, or ``(B,)`` for ``reduction="none"``). An empty batch (``B = 0``, e.g.
        after filtering the samples the loss applies to) gives ``0`` for ``"mean"`` and
        ``"sum"`` (not NaN), still attached to the autograd graph of ``features`` so that
        ``backward()`` and DDP's gradient hooks run as for any batch, and an empty ``(0,)``
        tensor for ``"none"``.

    Raises:
        TypeError: a setting or a tensor of the wrong type or dtype.
        ValueError: a setting out of range, tensors of the wrong rank (``cams`` one less than
            ``features``) or batch size, or ``2n`` cells more than the feature map has.

    Examples:
        >>> features = torch.randn(2, 8, 4, 4, requires_grad=True)
        >>> loss = contrastive_patch_loss(features, torch.rand(2, 4, 4))
        >>> loss.backward()
        >>> bool(features.grad.abs().sum() > 0)
        True
    """
    config = _CPEConfig(num_patches, normalize, temperature, reduction)
    return _contrastive_patch_loss(features, cams, config, validate_args)


class ContrastivePatchLoss(nn.Module):
    """Contrastive patch embedding loss (paper Eq. 1) as a module holding its configuration.

    The defaults are camkit's recommended form: the paper's two most and two least CAM-relevant
    cells and all four cross pairs in both denominators, with the cell vectors L2-normalised and a
    temperature of 0.1 (cosine/InfoNCE similarities). It was chosen on validation data (site B
    and MNIST, 3 seeds; the docs' results page): the paper's raw dot products start at 20–380
    against a cross-entropy near 1 and, trained from scratch, cost 2.8 points on site B and 9 on
    MNIST → USPS. The paper's Eq. 1 exactly: ``normalize=False, temperature=1.0``. The official
    code's version (grid-sampling at pixel coordinates, weight 0.1) is a bug and is not
    reproduced. The settings are validated once, here, and kept in a frozen
    `config` (read back as ``num_patches``, ``normalize``, ``temperature``, ``reduction``).

    Convention:
        See [`contrastive_patch_loss`][camkit.contrastive_patch_loss], which computes the same
        loss from the same settings.

    Args:
        num_patches: ``n ≥ 2`` cells per group.
        normalize: L2-normalise the cell vectors (default; ``False``: the paper's raw cells).
        temperature: ``τ > 0`` (default 0.1; the paper's: 1).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``; an empty batch gives a zero loss that
            keeps the graph (an empty ``(0,)`` tensor for ``"none"``), never NaN.

    Shape:
        - features: ``(B, C, h, w)`` float feature map, ``h·w ≥ 2n``; or ``(B, C, d, h, w)``
          for volumes, ``d·h·w ≥ 2n``.
        - cams: ``(B, h', w')`` (``(B, d', h', w')``) float maps ranking the cells (any
          resolution).
        - output: ``()`` for ``"mean"`` and ``"sum"``, ``(B,)`` for ``"none"``; float32, or
          float64 for float64 features.

    Raises:
        TypeError: a setting of the wrong type.
        ValueError: a setting out of range.

    Examples:
        >>> import timm, torch
        >>> from camkit import CAMExtractor, ContrastivePatchLoss
        >>> ext = CAMExtractor(timm.create_model("resnet18", pretrained=False, num_classes=2))
        >>> labels = torch.tensor([0, 1])
        >>> out = ext(torch.randn(2, 3, 64, 64), labels)
        >>> loss = ContrastivePatchLoss()(out.features, out.cams)
        >>> loss.shape
        torch.Size([])
    """

    num_patches = config_setting("num_patches")
    normalize = config_setting("normalize")
    temperature = config_setting("temperature")
    reduction = config_setting("reduction")

    def __init__(
        self,
        num_patches: int = 2,
        *,
        normalize: bool = True,
        temperature: float = 0.1,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        self.config = _CPEConfig(num_patches, normalize, temperature, reduction)

    @classmethod
    def paper(cls, num_patches: int = 2, *, reduction: Reduction = "mean") -> ContrastivePatchLoss:
        """The paper's Eq. 1 exactly: raw dot products, no temperature.

        ``ContrastivePatchLoss.paper()`` is ``ContrastivePatchLoss(normalize=False,
        temperature=1.0)``, the one-argument switch to the paper's form wherever a CPE is passed
        (``TrainStep(model, cpe=ContrastivePatchLoss.paper())``, the timm task, the benchmarks'
        ``cpe_paper`` method).
        """
        return cls(num_patches, normalize=False, temperature=1.0, reduction=reduction)

    def forward(
        self, features: torch.Tensor, cams: torch.Tensor, *, validate_args: bool = True
    ) -> torch.Tensor:
        """Rank the cells of ``features`` by ``cams`` and return the loss of the two groups.

        Args:
            features: ``(B, C, h, w)`` (or ``(B, C, d, h, w)``) feature map; the gradient flows
                into its selected cells.
            cams: ``(B, h', w')`` (``(B, d', h', w')``) maps ranking the cells (detached).
            validate_args: check the tensors' types and shapes (the training step checks its
                inputs once and passes False).

        Returns:
            the loss, reduced as ``reduction`` says.
        """
        return _contrastive_patch_loss(features, cams, self.config, validate_args)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"num_patches={c.num_patches}, normalize={c.normalize}, "
            f"temperature={c.temperature}, reduction={c.reduction!r}"
        )


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``−Σ_k targets_k · log softmax(logits)_k``, in float32 at least.

    The same value as timm's ``SoftTargetCrossEntropy``; SnapMix targets need not sum to 1
    (``ρ_a + ρ_b ≠ 1``) and are used as they are. ``targets`` must have the logits' shape
    ``(B, K)`` (a ``ValueError`` says so otherwise, instead of a broadcast or a shape error
    deep inside), and ``B ≥ 1``: an empty batch is refused rather than averaged into NaN.

    Examples:
        >>> soft_cross_entropy(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item()  # ln 2
        0.6931...
    """
    if logits.ndim == 2 and logits.shape[0] == 0:
        raise ValueError(
            "logits: expected at least one row (B >= 1), got shape "
            f"{tuple(logits.shape)}: the mean over an empty batch is NaN"
        )
    if logits.shape != targets.shape:
        raise ValueError(
            f"targets: expected the logits' shape {tuple(logits.shape)} (B, K), got "
            f"{tuple(targets.shape)}; a mix or one-hot built for another class count than the "
            f"model's {logits.shape[-1]}? (e.g. SnapMix(num_classes={logits.shape[-1]}))"
        )
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_p = F.log_softmax(logits.to(dtype), dim=-1)
    return -(targets.to(dtype) * log_p).sum(-1).mean()
