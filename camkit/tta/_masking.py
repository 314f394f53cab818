"""The masked copies of the CAM-masking TTA: cells ranked by CAM mass, then masked cumulatively.

Private helpers shared by [`CAMMaskingTTA`][camkit.CAMMaskingTTA] and `camkit.viz.tta_figure`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from camkit._checks import check_tensor

_TIE = 2.0**-30  # sums within this fraction of a map's largest |sum| are ties


@functools.lru_cache(maxsize=64)
def _cell_weights(src: int, dst: int, cell: int, device: torch.device) -> torch.Tensor:
    """``(ceil(dst/cell), src)``: how much of each source row lands in each cell of the image.

    The rows of the 1-D bilinear resize ``src → dst`` (``align_corners=False``, built in float64
    by resizing the identity) summed over the ``cell`` output rows of each cell.
    """
    eye = torch.eye(src, dtype=torch.float64)[None]
    resize = F.interpolate(eye, size=dst, mode="linear", align_corners=False)[0].T  # (dst, src)
    cells = -(-dst // cell)
    pad = cells * cell - dst
    resize = F.pad(resize, (0, 0, 0, pad)).view(cells, cell, src).sum(1)
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    return resize.to(device=device, dtype=dtype)


def cell_ranks(
    cams: torch.Tensor, image_size: tuple[int, ...], patch_size: int | tuple[int, ...]
) -> torch.Tensor:
    """Rank of each pixel's cell by CAM mass: 0 for the most relevant cell.

    Convention:
        A cell's mass is the sum, over its ``patch_size`` square of pixels (the last row and
        column of cells may be partial), of the CAM upsampled bilinearly
        (``align_corners=False``) to ``image_size``; cells are sorted by decreasing mass. The mass
        is computed exactly as that (a separable product of the resize weights summed per cell,
        in float64), and masses that agree to within ``2⁻³⁰`` of the map's largest ``|mass|`` are
        ties, which go to the lower row-major cell index: cells tied in exact arithmetic (a
        constant region, a saturated map) keep row-major order instead of the order float32
        rounding would give them. Masking the top ``j`` cells means masking pixels whose rank is
        ``< j``. Volumes are the same code with one more axis: ``(d, h, w)`` maps, the trilinear
        upsampling to ``(D, H, W)``, cuboid cells ranked in row-major ``(depth, row, column)``
        order; a depth-1 volume ranks as the image it holds.

    Args:
        cams: ``(B, h, w)`` CAMs of the predicted class (volumes: ``(B, d, h, w)``).
        image_size: ``(H, W)`` (volumes: ``(D, H, W)``).
        patch_size: cell side in pixels (a cube for volumes), or one side per axis.

    Returns:
        ``(B, H, W)`` (``(B, D, H, W)``) int64 ranks.

    Examples:
        >>> cell_ranks(torch.tensor([[[0.0, 1.0]]]), (2, 4), 2).tolist()
        [[[1, 1, 0, 0], [1, 1, 0, 0]]]
        >>> cell_ranks(torch.ones(1, 3, 3), (4, 4), 2).tolist()  # all tied: row-major
        [[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]]
    """
    check_tensor(cams, "cams", ndim=(3, 4), floating=True)
    b, *maps = cams.shape
    sides = cell_sides(patch_size, len(maps))
    # the resize-and-sum weights of each axis: (cells, map side)
    weights = [
        _cell_weights(m, s, p, cams.device) for m, s, p in zip(maps, image_size, sides, strict=True)
    ]
    sums = cams.to(weights[0].dtype)
    for axis, weight in enumerate(weights[:-1]):  # the leading axes from the left
        sums = (weight @ sums.movedim(axis + 1, -2)).movedim(-2, axis + 1)
    sums = sums @ weights[-1].T  # (B, *grid); for images ``ay @ cams @ ax.T``
    grid = sums.shape[1:]
    flat = sums.flatten(1)
    scale = flat.abs().amax(1, keepdim=True)
    key = torch.round(flat / torch.where(scale > 0, scale * _TIE, 1.0))
    order = torch.argsort(key, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=cams.device).expand(b, -1))
    pixel_cell = torch.zeros((), dtype=torch.long, device=cams.device)
    for size, side, count in zip(image_size, sides, grid, strict=True):
        index = torch.arange(size, device=cams.device) // side
        pixel_cell = pixel_cell[..., None] * count + index  # the row-major cell of each pixel
    return ranks[:, pixel_cell.flatten()].view(b, *image_size)


def cell_sides(patch_size: int | tuple[int, ...], rank: int) -> tuple[int, ...]:
    """``patch_size`` as one cell side per spatial axis (an int is a square or a cube)."""
    if isinstance(patch_size, int):
        return (patch_size,) * rank
    if len(patch_size) != rank:
        raise ValueError(
            f"patch_size: expected one side or {rank} (one per axis of the maps), got "
            f"{tuple(patch_size)}"
        )
    return tuple(patch_size)


def fill_value(
    mask_value: float | Sequence[float] | torch.Tensor, images: torch.Tensor
) -> torch.Tensor:
    """``mask_value`` as a tensor that broadcasts against ``images``: ``()`` or ``(1, C, 1, 1)``
    (``(1, C, 1, 1, 1)`` for volumes)."""
    fill = torch.as_tensor(mask_value, dtype=images.dtype, device=images.device)
    return fill.view(1, -1, *(1,) * (images.ndim - 2)) if fill.ndim == 1 else fill


def masked_copies(
    images: torch.Tensor,
    ranks: torch.Tensor,
    steps: torch.Tensor,
    mask_value: float | Sequence[float] | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Images with their ``steps[i]`` most relevant cells set to ``mask_value``.

    Args:
        images: ``(N, C, H, W)`` (volumes: ``(N, C, D, H, W)``).
        ranks: ``(N, H, W)`` (``(N, D, H, W)``) pixel cell ranks from `cell_ranks`.
        steps: ``(N,)`` number of cells to mask per image.
        mask_value: a number, or ``C`` per-channel values (default 0: the dataset mean of
            normalised images, as in the released code).

    Returns:
        masked images of ``images``' shape.
    """
    hidden = (ranks < steps.view(-1, *(1,) * (ranks.ndim - 1)))[:, None]
    return torch.where(hidden, fill_value(mask_value, images), images)
