"""Contrastive patch embedding (CPE) loss, Eq. 1 of Ali, Shaharabany & Wolf (MIDL 2022).

For each image the feature-map cells are ranked by a class activation map; the ``n`` most relevant
cells ``u_1 … u_n`` and the ``n`` least relevant ``v_1 … v_n`` are taken (``n = 2`` in the paper).
Each group is pulled together and pushed away from the other::

    L = −ln e^{u1·u2} / (e^{u1·u2} + Σ_{i,j} e^{u_i·v_j})
        −ln e^{v1·v2} / (e^{v1·v2} + Σ_{i,j} e^{u_i·v_j})

with all ``n²`` cross pairs in both denominators, raw dot products and no temperature. It is
computed as ``logsumexp([pos, cross…]) − pos``, so dot products of order 10³ (2048-d post-ReLU
ResNet-50 features) give finite values and gradients.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from camkit._checks import check_positive, check_tensor

__all__ = ["ContrastivePatchLoss", "contrastive_patch_loss", "select_patches"]

Reduction = Literal["mean", "sum", "none"]


def select_patches(
    features: torch.Tensor, cams: torch.Tensor, num_patches: int = 2
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

    Args:
        features: ``(B, C, h, w)`` feature map.
        cams: ``(B, h', w')`` maps ranking the cells (only their order matters; no gradient).
        num_patches: ``n`` ≥ 1 cells per group; ``2n ≤ h·w``.

    Returns:
        ``(top (B, n, C), bottom (B, n, C))``, top in decreasing and bottom in increasing CAM order,
        differentiable with respect to ``features``.
    """
    check_tensor(features, "features", ndim=4, floating=True)
    b, c, h, w = features.shape
    check_tensor(cams, "cams", ndim=3, floating=True)
    if cams.shape[0] != b:
        raise ValueError(
            f"cams: expected {b} maps to match features {tuple(features.shape)}, "
            f"got shape {tuple(cams.shape)}"
        )
    if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 1:
        raise ValueError(f"num_patches: expected an int >= 1, got {num_patches!r}")
    if 2 * num_patches > h * w:
        raise ValueError(
            f"num_patches: 2 × {num_patches} cells do not fit in the {h}×{w} feature map"
        )
    ranking = cams.detach()
    if ranking.shape[-2:] != (h, w):
        ranking = F.interpolate(ranking[:, None].float(), size=(h, w), mode="area")[:, 0]
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


def contrastive_patch_loss(
    features: torch.Tensor,
    cams: torch.Tensor,
    num_patches: int = 2,
    *,
    normalize: bool = False,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Contrastive patch embedding loss (paper Eq. 1), functional form.

    Convention:
        With ``u`` the top and ``v`` the bottom cells of :func:`select_patches` and
        ``s(a, b) = a·b / τ`` (``a, b`` L2-normalised first when ``normalize``), the loss of an
        image is ``T(u) + T(v)`` where ``T(g)`` averages, over the pairs ``i < j`` of group ``g``,
        ``logsumexp([s(g_i, g_j), s(u_k, v_l) for all k, l]) − s(g_i, g_j)``. For ``n = 2``,
        ``normalize=False``, ``τ = 1`` this is Eq. 1 exactly. Computed in float32 at least.

    Args:
        features: ``(B, C, h, w)`` feature map (e.g. :attr:`CAMOutput.features`).
        cams: ``(B, h', w')`` CAMs of the class the cells should support (ground truth in
            training; for a SnapMix image, the CAM of its dominant label from the same forward).
        num_patches: ``n`` cells per group (paper: 2; no gain beyond it).
        normalize: L2-normalise the cell vectors (cosine similarities).
        temperature: ``τ > 0`` dividing the similarities.
        reduction: ``"mean"`` over the batch, ``"sum"``, or ``"none"`` for ``(B,)``.

    Returns:
        the loss (scalar, or ``(B,)`` for ``reduction="none"``). An empty batch (``B = 0``, e.g.
        after filtering the samples the loss applies to) gives ``0`` for ``"mean"`` and
        ``"sum"`` (not NaN), still attached to the autograd graph of ``features`` so that
        ``backward()`` and DDP's gradient hooks run as for any batch, and an empty ``(0,)``
        tensor for ``"none"``.

    Examples:
        >>> features = torch.randn(2, 8, 4, 4, requires_grad=True)
        >>> loss = contrastive_patch_loss(features, torch.rand(2, 4, 4))
        >>> loss.backward()
        >>> bool(features.grad.abs().sum() > 0)
        True
    """
    check_positive(temperature, "temperature")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    if isinstance(num_patches, int) and not isinstance(num_patches, bool) and num_patches < 2:
        raise ValueError(
            f"num_patches: the loss needs a pair per group, expected >= 2, got {num_patches}"
        )
    top, bottom = select_patches(features, cams, num_patches)
    compute_dtype = torch.promote_types(features.dtype, torch.float32)
    # autocast would run the dot products in bf16/fp16: raw 2048-d products of order 10^3 need fp32
    with torch.autocast(features.device.type, enabled=False):
        u, v = top.to(compute_dtype), bottom.to(compute_dtype)
        if normalize:
            u, v = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
        scale = 1.0 / temperature
        cross = (u @ v.transpose(1, 2)).flatten(1) * scale
        loss = _group_term(u @ u.transpose(1, 2) * scale, cross) + _group_term(
            v @ v.transpose(1, 2) * scale, cross
        )
    if reduction == "mean":
        # an empty batch: 0, not mean()'s 0/0 = NaN; the (empty) sum keeps the autograd graph
        return loss.mean() if loss.shape[0] > 0 else loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


class ContrastivePatchLoss(nn.Module):
    """Contrastive patch embedding loss (paper Eq. 1) as a module holding its configuration.

    The defaults are the paper's exactly: two most and two least CAM-relevant cells, all four
    cross pairs in both denominators, raw dot products, no temperature. ``normalize=True`` with a
    ``temperature`` (e.g. 0.1) is the usual cosine/InfoNCE form, which does not saturate on large
    raw dot products. The official code's version (grid-sampling at pixel coordinates, weight 0.1)
    is a bug and is not reproduced.

    Convention:
        See :func:`contrastive_patch_loss`.

    Args:
        num_patches: ``n`` ≥ 2 cells per group.
        normalize: L2-normalise the cell vectors.
        temperature: ``τ > 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``; an empty batch gives a zero loss that
            keeps the graph (an empty ``(0,)`` tensor for ``"none"``), never NaN.

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

    def __init__(
        self,
        num_patches: int = 2,
        *,
        normalize: bool = False,
        temperature: float = 1.0,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 2:
            raise ValueError(f"num_patches: expected an int >= 2, got {num_patches!r}")
        check_positive(temperature, "temperature")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
        self.num_patches = num_patches
        self.normalize = bool(normalize)
        self.temperature = float(temperature)
        self.reduction: Reduction = reduction

    def forward(self, features: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
        """Loss of ``features`` (B, C, h, w) with cells ranked by ``cams`` (B, h', w')."""
        return contrastive_patch_loss(
            features,
            cams,
            self.num_patches,
            normalize=self.normalize,
            temperature=self.temperature,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"num_patches={self.num_patches}, normalize={self.normalize}, "
            f"temperature={self.temperature}, reduction={self.reduction!r}"
        )
