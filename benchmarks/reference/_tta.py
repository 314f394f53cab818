"""The TTA and its vote, one image at a time, as the released code ran it (see the package)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.reference._cam import reference_cams


def reference_vote(
    step_probs: torch.Tensor,
    original_probs: torch.Tensor,
    *,
    theta: float = 0.2,
    rule: str = "threshold",
    count_original: bool = False,
    step_class_probs: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Which images flip, one image at a time: ``(B,)`` bool.

    ``step_probs`` ``(B, k)`` is the probability of the unmasked prediction ``c`` on each masked
    copy; ``original_probs`` ``(B, K)`` the unmasked softmax. A vote supports ``c`` when
    ``p > θ`` (``"threshold"``), ``p > θ · p_0`` (``"relative"``) or when ``c`` is the copy's
    arg-max (``"argmax"``, which needs the copies' ``(B, K)`` probabilities, one tensor per step,
    in ``step_class_probs``). The unmasked image votes too when ``count_original``. An image flips
    when more than half of its votes do not support ``c``.
    """
    flips = []
    for b in range(original_probs.shape[0]):
        c = int(original_probs[b].argmax())
        p0 = float(original_probs[b, c])

        def supports(p: float, probs_row: torch.Tensor | None, c: int = c, p0: float = p0) -> bool:
            if rule == "argmax":
                return int(probs_row.argmax()) == c
            return p > (theta * p0 if rule == "relative" else theta)

        against = 0
        for j, p in enumerate(step_probs[b].tolist()):
            row = None if step_class_probs is None else step_class_probs[j][b]
            against += 0 if supports(p, row) else 1
        votes = step_probs.shape[1]
        if count_original:
            against += 0 if supports(p0, original_probs[b]) else 1
            votes += 1
        flips.append(against > votes / 2)
    return torch.tensor(flips, dtype=torch.bool)


def reference_cell_order(
    cam: torch.Tensor, image_size: tuple[int, int], patch_size: int
) -> list[tuple[int, int]]:
    """The ``(row, col)`` cells of one CAM ``(h, w)`` by decreasing CAM mass on the image.

    The CAM is upsampled bilinearly (``align_corners=False``, in float64) to ``image_size`` and
    summed over each ``patch_size`` square (the last row and column of cells may be partial);
    ties go to the lower row-major cell index.
    """
    height, width = image_size
    cam = cam.double()  # a bf16 sum over a cell would tie cells that differ
    up = F.interpolate(cam[None, None], size=image_size, mode="bilinear", align_corners=False)
    up = up[0, 0]
    rows, cols = -(-height // patch_size), -(-width // patch_size)
    mass = {}
    for r in range(rows):
        for c in range(cols):
            cell = up[r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size]
            mass[(r, c)] = float(cell.sum())
    return sorted(mass, key=lambda rc: (-mass[rc], rc[0] * cols + rc[1]))


def reference_mask(
    image: torch.Tensor, cells: list[tuple[int, int]], patch_size: int, mask_value: float = 0.0
) -> torch.Tensor:
    """A copy of ``image`` (..., H, W) with the ``patch_size`` squares of ``cells`` set to
    ``mask_value`` (a number, or one value per channel for a ``(C, H, W)`` image)."""
    masked = image.clone()
    for r, c in cells:
        box = masked[
            ..., r * patch_size : (r + 1) * patch_size, c * patch_size : (c + 1) * patch_size
        ]
        if isinstance(mask_value, (int, float)):
            box[...] = mask_value
        else:
            box[...] = torch.as_tensor(mask_value, dtype=image.dtype).view(-1, 1, 1)
    return masked


class ReferenceTTA(NamedTuple):
    """What `reference_tta` computes (on the CPU, in the model's dtype)."""

    labels: torch.Tensor  # (B,) int64 labels after voting
    original_probs: torch.Tensor  # (B, K) unmasked softmax
    step_probs: torch.Tensor  # (B, k) probability of the unmasked prediction per mask step
    cams: torch.Tensor  # (B, h, w) CAM of the prediction


def reference_tta(
    model: nn.Module,
    images: torch.Tensor,
    *,
    k: int = 31,
    theta: float = 0.2,
    patch_size: int = 8,
    mask_value: float = 0.0,
    count_original: bool = False,
) -> ReferenceTTA:
    """CAM-masking TTA the way the released code ran it: one image at a time, autograd on.

    Per image: forward 1 gives the prediction ``c`` (softmax argmax); forward 2 gives the feature
    map, whose CAM ``alpha_c · F`` (`reference_cams`) is upsampled bilinearly to the image, summed
    over ``patch_size``-pixel cells and ranked (decreasing, ties by row-major index); then for
    ``j = 1 … k`` the copy with the top ``j`` cells set to ``mask_value`` is forwarded alone, and
    its vote does not support ``c`` when ``softmax[c] <= θ``. When more than half of the votes
    (``k``, or ``k + 1`` with ``count_original``) do not support ``c`` the label flips to the
    runner-up class. That is ``k + 2`` image-forwards.

    Args:
        model: a timm classifier, in eval mode.
        images: ``(N, C, H, W)`` (cells at the right and bottom edges may be partial).

    Returns:
        `ReferenceTTA` with every step evaluated.
    """
    labels, originals, steps, maps = [], [], [], []
    with torch.enable_grad():
        for i in range(images.shape[0]):
            image = images[i : i + 1]
            probs = model(image).softmax(1)[0].detach()
            top2 = probs.topk(min(2, probs.numel())).indices.tolist()
            pred, runner_up = top2[0], top2[-1]
            cam = reference_cams(model, image, torch.tensor([pred]))[1][0]
            order = reference_cell_order(cam.detach(), tuple(images.shape[-2:]), patch_size)
            masked = image
            step = []
            for j in range(k):
                masked = reference_mask(masked, [order[j]], patch_size, mask_value)
                step.append(model(masked).softmax(1)[0, pred].detach())
            against = sum(1 for p in step if float(p) <= theta)
            votes = k
            if count_original:
                against += 0 if float(probs[pred]) > theta else 1
                votes += 1
            labels.append(runner_up if against > votes / 2 else pred)
            originals.append(probs)
            steps.append(torch.stack(step))
            maps.append(cam.detach())
    return ReferenceTTA(
        labels=torch.tensor(labels, dtype=torch.long),
        original_probs=torch.stack(originals).cpu(),
        step_probs=torch.stack(steps).cpu(),
        cams=torch.stack(maps).cpu(),
    )


def released_tta(model: nn.Module, images: torch.Tensor, **settings: Any) -> torch.Tensor:
    """The ``(N,)`` int64 labels of `reference_tta` (the released protocol, timed by perf.py).

    ``settings`` are `reference_tta`'s keywords, with its defaults (the paper's).
    """
    return reference_tta(model, images, **settings).labels
