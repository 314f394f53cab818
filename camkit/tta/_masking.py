"""The masked copies of the CAM-masking TTA: cells ranked by CAM mass, then masked cumulatively.

Private helpers shared by [`CAMMaskingTTA`][camkit.CAMMaskingTTA] and `camkit.viz.tta_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from camkit._checks import check_tensor
from camkit.cam import cell_sums, upsample_cams


def cell_ranks(cams: torch.Tensor, image_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Rank of each pixel's cell by CAM mass: 0 for the most relevant cell.

    Convention:
        ``cams`` are upsampled bilinearly (``align_corners=False``) to ``image_size``, summed over
        ``patch_size`` cells (`camkit.cell_sums`), and the cells sorted by decreasing sum
        (ties by row-major cell index). Masking the top ``j`` cells means masking pixels whose rank
        is ``< j``.

    Args:
        cams: ``(B, h, w)`` CAMs of the predicted class.
        image_size: ``(H, W)``.
        patch_size: cell side in pixels.

    Returns:
        ``(B, H, W)`` int64 ranks.

    Examples:
        >>> cell_ranks(torch.tensor([[[0.0, 1.0]]]), (2, 4), 2).tolist()
        [[[1, 1, 0, 0], [1, 1, 0, 0]]]
    """
    check_tensor(cams, "cams", ndim=3, floating=True)
    height, width = image_size
    sums = cell_sums(upsample_cams(cams.float(), (height, width)), patch_size)
    b, gh, gw = sums.shape
    order = torch.argsort(sums.flatten(1), dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(gh * gw, device=cams.device).expand(b, -1))
    rows = torch.arange(height, device=cams.device) // patch_size
    cols = torch.arange(width, device=cams.device) // patch_size
    pixel_cell = (rows[:, None] * gw + cols[None, :]).flatten()
    return ranks[:, pixel_cell].view(b, height, width)


def fill_value(
    mask_value: float | Sequence[float] | torch.Tensor, images: torch.Tensor
) -> torch.Tensor:
    """``mask_value`` as a tensor that broadcasts against ``images``: ``()`` or ``(1, C, 1, 1)``."""
    fill = torch.as_tensor(mask_value, dtype=images.dtype, device=images.device)
    return fill.view(1, -1, 1, 1) if fill.ndim == 1 else fill


def masked_copies(
    images: torch.Tensor,
    ranks: torch.Tensor,
    steps: torch.Tensor,
    mask_value: float | Sequence[float] | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Images with their ``steps[i]`` most relevant cells set to ``mask_value``.

    Args:
        images: ``(N, C, H, W)``.
        ranks: ``(N, H, W)`` pixel cell ranks from `cell_ranks`.
        steps: ``(N,)`` number of cells to mask per image.
        mask_value: a number, or ``C`` per-channel values (default 0: the dataset mean of
            normalised images, as in the released code).

    Returns:
        ``(N, C, H, W)`` masked images.
    """
    hidden = (ranks < steps.view(-1, 1, 1))[:, None]
    return torch.where(hidden, fill_value(mask_value, images), images)
