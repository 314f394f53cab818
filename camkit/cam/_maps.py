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
    """Normalise each map of a batch independently (images ``(B, h, w)`` or volumes
    ``(B, d, h, w)``: every dimension after the first is the map's).

    Convention:
        - ``"raw"``: unchanged.
        - ``"minmax"``: ``(M - min) / (max - min)`` in [0, 1]; a constant map gives zeros.
        - ``"distribution"``: ``(M - min) / sum(M - min)``, a spatial distribution summing to 1
          (the SnapMix normalisation, no ReLU); a constant map gives the uniform distribution,
          so box shares fall back to area ratios.

    Args:
        cams: ``(B, h, w)`` or ``(B, d, h, w)`` float maps (a ``(B, T, h, w)`` batch of ``T``
            maps per image is read as volumes: reshape it to ``(B·T, h, w)`` first).
        mode: one of ``"raw"``, ``"minmax"``, ``"distribution"``.

    Returns:
        Maps of ``cams``' shape in ``cams.dtype``; never NaN for finite input.

    Raises:
        TypeError: ``cams`` is not a floating-point tensor.
        ValueError: ``cams`` is not 3-D or 4-D, or ``mode`` is not one of the three (the
            message lists them).

    Examples:
        >>> import torch
        >>> from camkit import normalize_cams
        >>> normalize_cams(torch.tensor([[[1.0, 3.0]]])).tolist()
        [[[0.0, 1.0]]]
    """
    check_tensor(cams, "cams", ndim=(3, 4), floating=True)
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


def upsample_cams(cams: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize ``(B, h, w)`` maps to ``size = (H, W)`` bilinearly, or ``(B, d, h, w)`` maps to
    ``size = (D, H, W)`` trilinearly (``align_corners=False``).

    Raises:
        TypeError: ``cams`` is not a floating-point tensor.
        ValueError: ``cams`` is not 3-D or 4-D, or ``size`` does not have one side per map
            dimension.

    Examples:
        >>> import torch
        >>> from camkit import upsample_cams
        >>> upsample_cams(torch.zeros(2, 7, 7), (224, 224)).shape
        torch.Size([2, 224, 224])
        >>> upsample_cams(torch.zeros(1, 2, 2, 2), (64, 64, 64)).shape
        torch.Size([1, 64, 64, 64])
    """
    check_tensor(cams, "cams", ndim=(3, 4), floating=True)
    size = tuple(size)
    if len(size) != cams.ndim - 1:
        raise ValueError(
            f"size: expected {cams.ndim - 1} sides for maps of shape {tuple(cams.shape)}, "
            f"got {size}"
        )
    if tuple(cams.shape[1:]) == size:
        return cams
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(cams[:, None], size=size, mode=mode, align_corners=False)[:, 0]


def cell_sums(maps: torch.Tensor, cell_size: int) -> torch.Tensor:
    """Sum ``(B, H, W)`` maps over non-overlapping ``cell_size × cell_size`` pixel cells
    (``(B, D, H, W)`` volumes over ``cell_size³`` cubes).

    Convention:
        Cell ``(i, j)`` covers rows ``i*s … i*s+s-1`` and columns ``j*s … j*s+s-1`` (``s`` =
        ``cell_size``); when ``H`` or ``W`` is not a multiple of ``s`` the last row/column of cells
        is partial. The grid is ``(ceil(H/s), ceil(W/s))``; pixel ``(y, x)`` lies in cell
        ``(y // s, x // s)``.

    Args:
        maps: ``(B, H, W)`` or ``(B, D, H, W)`` float maps.
        cell_size: side of a cell in pixels (voxels), ≥ 1.

    Returns:
        ``(B, ceil(H/s), ceil(W/s))`` sums (``(B, ceil(D/s), ceil(H/s), ceil(W/s))``).

    Raises:
        TypeError: ``maps`` is not a floating-point tensor, or ``cell_size`` is not an int.
        ValueError: ``maps`` is not 3-D or 4-D, or ``cell_size < 1``.

    Examples:
        >>> import torch
        >>> from camkit import cell_sums
        >>> cell_sums(torch.ones(1, 4, 4), 2).tolist()
        [[[4.0, 4.0], [4.0, 4.0]]]
    """
    check_tensor(maps, "maps", ndim=(3, 4), floating=True)
    check_int(cell_size, "cell_size", minimum=1)
    if cell_size == 1:
        return maps
    pool = F.avg_pool2d if maps.ndim == 3 else F.avg_pool3d
    return pool(maps[:, None], cell_size, stride=cell_size, ceil_mode=True, divisor_override=1)[
        :, 0
    ]
