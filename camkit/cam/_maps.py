"""Reductions of CAM batches that SnapMix, the CPE loss, the TTA and the figures share.

Private module: the public names are re-exported by `camkit.cam` and `camkit`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from camkit._checks import check_choice, check_int, check_tensor

__all__ = ["CAMNormalization", "cell_sums", "normalize_cams", "upsample_cams"]

CAMNormalization = Literal["raw", "minmax", "distribution"]


def normalize_cams(cams: torch.Tensor, mode: CAMNormalization = "distribution") -> torch.Tensor:
    """Normalise each map of a batch independently.

    Convention:
        - ``"raw"``: unchanged.
        - ``"minmax"``: ``(M - min) / (max - min)`` in [0, 1]; a constant map gives zeros.
        - ``"distribution"``: ``(M - min) / sum(M - min)``, a spatial distribution summing to 1
          (the SnapMix normalisation, no ReLU); a constant map gives the uniform distribution,
          so box shares fall back to area ratios.

    Args:
        cams: ``(B, h, w)`` float maps.
        mode: one of ``"raw"``, ``"minmax"``, ``"distribution"``.

    Returns:
        ``(B, h, w)`` maps in ``cams.dtype``; never NaN for finite input.

    Raises:
        TypeError: ``cams`` is not a floating-point tensor.
        ValueError: ``cams`` is not 3-D, or ``mode`` is not one of the three (the message lists
            them).

    Examples:
        >>> import torch
        >>> from camkit import normalize_cams
        >>> normalize_cams(torch.tensor([[[1.0, 3.0]]])).tolist()
        [[[0.0, 1.0]]]
    """
    check_tensor(cams, "cams", ndim=3, floating=True)
    check_choice(mode, "mode", ("raw", "minmax", "distribution"))
    if mode == "raw":
        return cams
    flat = cams.flatten(1)
    shifted = flat - flat.amin(1, keepdim=True)
    denom = shifted.amax(1, keepdim=True) if mode == "minmax" else shifted.sum(1, keepdim=True)
    if mode == "minmax":
        out = torch.where(denom > 0, shifted / denom.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    else:
        uniform = torch.full_like(shifted, 1.0 / shifted.shape[1])
        out = torch.where(
            denom > 0, shifted / denom.clamp_min(torch.finfo(flat.dtype).tiny), uniform
        )
    return out.view_as(cams)


def upsample_cams(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(B, h, w)`` maps to ``size = (H, W)`` bilinearly (``align_corners=False``).

    Examples:
        >>> import torch
        >>> from camkit import upsample_cams
        >>> upsample_cams(torch.zeros(2, 7, 7), (224, 224)).shape
        torch.Size([2, 224, 224])
    """
    check_tensor(cams, "cams", ndim=3, floating=True)
    if tuple(cams.shape[-2:]) == tuple(size):
        return cams
    return F.interpolate(cams[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def cell_sums(maps: torch.Tensor, cell_size: int) -> torch.Tensor:
    """Sum ``(B, H, W)`` maps over non-overlapping ``cell_size × cell_size`` pixel cells.

    Convention:
        Cell ``(i, j)`` covers rows ``i*s … i*s+s-1`` and columns ``j*s … j*s+s-1`` (``s`` =
        ``cell_size``); when ``H`` or ``W`` is not a multiple of ``s`` the last row/column of cells
        is partial. The grid is ``(ceil(H/s), ceil(W/s))``; pixel ``(y, x)`` lies in cell
        ``(y // s, x // s)``.

    Args:
        maps: ``(B, H, W)`` float maps.
        cell_size: side of a cell in pixels, ≥ 1.

    Returns:
        ``(B, ceil(H/s), ceil(W/s))`` sums.

    Raises:
        TypeError: ``maps`` is not a floating-point tensor, or ``cell_size`` is not an int.
        ValueError: ``maps`` is not 3-D, or ``cell_size < 1``.

    Examples:
        >>> import torch
        >>> from camkit import cell_sums
        >>> cell_sums(torch.ones(1, 4, 4), 2).tolist()
        [[[4.0, 4.0], [4.0, 4.0]]]
    """
    check_tensor(maps, "maps", ndim=3, floating=True)
    check_int(cell_size, "cell_size", minimum=1)
    if cell_size == 1:
        return maps
    return F.avg_pool2d(
        maps[:, None], cell_size, stride=cell_size, ceil_mode=True, divisor_override=1
    )[:, 0]
