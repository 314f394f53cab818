"""SnapMix's box shares of a CAM, computed at the CAM's resolution (images and volumes alike).

A share is ``ΣS(box)`` with ``S`` the map upsampled to the image (volume) size — bilinearly,
trilinearly: linear along each axis — and normalised to a distribution. Upsampling is separable,
so every sum is a product of 1-D tables, one per axis; a volume is the same code with one more
axis.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from camkit.mix._boxes import _box_sizes

_SAFE_PEAK = 1e18  # a map's range above which its box sums are computed on the rescaled map


class _ResizeTables(NamedTuple):
    """1-D linear resizing ``src → dst`` (``R``, ``(dst, src)``) in the forms the box sums need."""

    cumulative: torch.Tensor  # (dst + 1, src): row i is the sum of R's first i rows
    extremes: torch.Tensor  # the rows of R where a resized signal can reach its extrema
    column_sums: torch.Tensor  # (src,): the sum of all rows of R


@torch.compiler.disable  # host-side, cached: one opaque call under torch.compile
@functools.lru_cache(maxsize=64)
def _resize_tables(
    size: tuple[int, ...], image_size: tuple[int, ...], device: torch.device
) -> tuple[_ResizeTables, ...]:
    """`_axis_tables` of every axis, resizing a ``size`` map to ``image_size``, on ``device``."""
    return tuple(_axis_tables(s, d, device) for s, d in zip(size, image_size, strict=True))


def _axis_tables(src: int, dst: int, device: torch.device) -> _ResizeTables:
    """Tables of ``R``, with ``R @ v == F.interpolate(v, dst, mode="linear", align_corners=False)``.

    Bilinear (trilinear) resizing is this along each axis. Between two knots a resized signal is
    linear in the output position, so over each run of rows sharing a lower knot its extrema lie
    on the run's first or last row: those rows are enough to find the exact minimum of a resized
    map without resizing it. Built once per size pair in float64 on the host, stored as float32.
    """
    eye = torch.eye(src, dtype=torch.float64)[None]
    matrix = F.interpolate(eye, size=dst, mode="linear", align_corners=False)[0].T
    lower = (matrix > 0).to(torch.int8).argmax(1)
    change = torch.ones(dst + 1, dtype=torch.bool)
    change[1:-1] = lower[1:] != lower[:-1]
    rows = torch.unique(torch.cat([change[:-1].nonzero(), change[1:].nonzero()])[:, 0])
    cumulative = torch.cat([matrix.new_zeros(1, src), matrix.cumsum(0)])
    tables = (cumulative, matrix[rows], matrix.sum(0))
    # non_blocking: a host-to-device copy from pageable memory is otherwise a stream sync
    return _ResizeTables(
        *(t.to(device=device, dtype=torch.float32, non_blocking=True) for t in tables)
    )


def _resized_extremes(maps: torch.Tensor, tables: tuple[_ResizeTables, ...]) -> torch.Tensor:
    """The upsampled maps at the rows (columns, slices) where their extrema can lie: ``Ry·M·Rxᵀ``
    restricted to those rows, then along depth for volumes."""
    out = tables[-2].extremes @ maps @ tables[-1].extremes.T  # every slice of a volume at once
    if len(tables) == 3:
        b, d, h, w = out.shape
        out = (tables[0].extremes @ out.reshape(b, d, h * w)).view(b, -1, h, w)
    return out


def _outer(vectors: list[torch.Tensor], rank: int) -> torch.Tensor:
    """``(N, n_1, …, n_k, 1, …)`` products of per-axis weights ``(N, n_j)`` over the first ``k``
    of ``rank`` axes (ones after them): ``[ay]`` gives ``ay[:, :, None]`` for images."""
    out = None
    for axis, v in enumerate(vectors):
        v = v.view(v.shape[0], *(v.shape[1] if a == axis else 1 for a in range(rank)))
        out = v if out is None else out * v
    return out


def _box_cam_shares(
    cams: torch.Tensor,
    box: torch.Tensor,
    *size: int,
    tables: tuple[_ResizeTables, ...] | None = None,
    fallback: torch.Tensor | None = None,
) -> torch.Tensor:
    """``ΣS(box)`` per map, ``S = normalize_cams(upsample_cams(cams, size), "distribution")``.

    ``cams`` ``(N, h, w)`` with boxes ``(N, 4)`` and ``size = (H, W)``, or volumes: ``(N, d, h,
    w)`` maps, ``(N, 6)`` cuboids, ``size = (D, H, W)``. A constant map (no mass after the shift)
    gives ``fallback`` (default: the box's share of the image, what the uniform distribution
    gives).

    Computed at the CAM's resolution: with ``U = Ry·M·Rxᵀ`` the upsampled map (and ``Rz`` along
    depth), a box sum is ``ay·M·ax − min(U)·area`` (``ay``, ``ax`` the summed rows of ``Ry``,
    ``Rx`` over the box) and ``min(U)`` is taken over the rows and columns where it can lie.
    Mathematically identical to upsampling and summing, at ``O(h·w)`` rather than ``O(H·W)``
    per map; ``M`` is first shifted by its own minimum so that the subtraction does not cancel
    (a constant map becomes exactly 0, hence uniform).
    """
    rank = cams.ndim - 1
    dims = tuple(range(1, rank + 1))
    if tables is None:
        tables = _resize_tables(tuple(cams.shape[1:]), size, cams.device)
    flat = cams.float().flatten(1)
    shifted = flat - flat.amin(1, keepdim=True)
    # the shares do not depend on the map's scale: a map so large that its weighted sums would
    # overflow float32 (1e36 gives inf, then NaN) is brought to [0, 1] first; every other map is
    # divided by 1, exactly
    peak = shifted.amax(1, keepdim=True)
    shifted = (shifted / torch.where(peak > _SAFE_PEAK, peak, 1.0)).view_as(cams)
    low = _resized_extremes(shifted, tables).flatten(1).amin(1)
    weights = tables[-2].column_sums[:, None] * tables[-1].column_sums
    if rank == 3:
        weights = tables[0].column_sums[:, None, None] * weights
    total = (shifted * weights).sum(dims)
    total = total - low * math.prod(size)
    sums = [t.cumulative[box[:, k + rank]] - t.cumulative[box[:, k]] for k, t in enumerate(tables)]
    area = _box_sizes(box).float()
    lead = _outer(sums[:-1], rank)  # (N, h, 1) for images, (N, d, h, 1) for volumes
    last = sums[-1].view(-1, *(1,) * (rank - 1), sums[-1].shape[1])  # (N, 1, w), (N, 1, 1, w)
    inside = (lead * shifted * last).sum(dims) - low * area
    if fallback is None:
        fallback = area / math.prod(size)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), fallback)
