"""SnapMix and Attentive CutMix, one image (volume) at a time. (see the package)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# SnapMix, per-sample loop
# --------------------------------------------------------------------------------------------

Box = tuple[int, ...]  # (y0, x0, y1, x1), half-open; volumes (z0, y0, x0, z1, y1, x1)


def _cutmix_box(lam: float, height: int, width: int, rng: np.random.Generator) -> Box:
    """CutMix box with side ratio sqrt(1 - lam), uniform centre, ``cut // 2`` on each side,
    clipped (the SnapMix authors' ``rand_bbox``, SnapMix's boxes in camkit)."""
    ratio = math.sqrt(min(max(1.0 - lam, 0.0), 1.0))
    cut_h, cut_w = math.floor(height * ratio), math.floor(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    x0, x1 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    return y0, x0, y1, x1


def loop_sample_params(
    batch: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    alpha: float = 1.0,
    prob: float = 1.0,
    box_mode: str = "batch",
) -> tuple[list[int], list[Box], list[Box], list[bool]]:
    """Host-side draws: partner permutation, box A and box B per image, and whether it is mixed."""
    perm = [int(v) for v in rng.permutation(batch)]
    if box_mode == "batch":
        lam_a, lam_b = rng.beta(alpha, alpha), rng.beta(alpha, alpha)
        box_a = [_cutmix_box(lam_a, height, width, rng)] * batch
        box_b = [_cutmix_box(lam_b, height, width, rng)] * batch
        coins = [bool(rng.random() < prob)] * batch
    else:
        box_a, box_b, coins = [], [], []
        for _ in range(batch):
            box_a.append(_cutmix_box(rng.beta(alpha, alpha), height, width, rng))
            box_b.append(_cutmix_box(rng.beta(alpha, alpha), height, width, rng))
            coins.append(bool(rng.random() < prob))
    apply = [
        c and a[2] > a[0] and a[3] > a[1] and b[2] > b[0] and b[3] > b[1]
        for c, a, b in zip(coins, box_a, box_b, strict=True)
    ]
    return perm, box_a, box_b, apply


def loop_snapmix_apply(
    images: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor,
    perm: list[int],
    box_a: list[Box],
    box_b: list[Box],
    apply: list[bool],
    num_classes: int,
    *,
    align_corners: bool = True,
    constant_cam: str = "uniform",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch one sample at a time with given draws (host integers).

    ``mixed[i]`` is ``images[i]`` with ``box_a[i]`` replaced by the bilinear resize
    (``align_corners=True`` as the SnapMix authors' code, or ``False``) of ``images[perm[i]]``'s
    ``box_b[i]``; the CAM of every image is shifted by its minimum, upsampled to the image size,
    shifted by its minimum again and divided by its sum; ``ρ_a = 1 − ΣS_i(box_a)``,
    ``ρ_b = ΣS_perm[i](box_b)``; un-mixed images keep their one-hot label. A constant CAM (no
    mass after the shift) is the uniform distribution (``constant_cam="uniform"``, camkit's
    convention: ``ρ`` is then the box's area share) or, as the authors' code (its ``0/0`` is NaN,
    replaced afterwards), gives ``ρ_a = 1 − |A|/(H·W)`` and ``ρ_b = |A|/(H·W)``, box A's area
    share for the partner too (``constant_cam="released"``). Volumes ``(B, C, D, H, W)`` with
    ``(B, d, h, w)`` CAMs and cuboids ``(z0, y0, x0, z1, y1, x1)``: the same with trilinear
    resizing and ``|A|/(D·H·W)``.
    """
    b = images.shape[0]
    size = tuple(images.shape[2:])
    rank = len(size)
    mode = "bilinear" if rank == 2 else "trilinear"
    dists = []
    for i in range(b):
        # shifted by its minimum first: a resized constant map is not exactly constant in floating
        # point, and its rounding noise would otherwise be normalised into a distribution
        cam = cams[i].float() - cams[i].float().min()
        up = F.interpolate(cam[None, None], size=size, mode=mode, align_corners=False)[0, 0]
        shifted = up - up.min()
        total = shifted.sum()
        dists.append(shifted / total if total > 0 else None)
    mixed = images.clone()
    soft = torch.zeros(b, num_classes, device=images.device)
    label_list = labels.tolist()
    voxels = math.prod(size)
    for i in range(b):
        j = perm[i]
        sides_a = [box_a[i][k + rank] - box_a[i][k] for k in range(rank)]
        sides_b = [box_b[i][k + rank] - box_b[i][k] for k in range(rank)]
        in_a = tuple(slice(box_a[i][k], box_a[i][k + rank]) for k in range(rank))
        in_b = tuple(slice(box_b[i][k], box_b[i][k + rank]) for k in range(rank))
        if apply[i]:
            crop = images[(slice(j, j + 1), slice(None), *in_b)]
            mixed[(i, slice(None), *in_a)] = F.interpolate(
                crop, size=tuple(sides_a), mode=mode, align_corners=align_corners
            )[0]
            share_a = math.prod(sides_a) / voxels
            share_b = math.prod(sides_b) / voxels
            if constant_cam == "released":
                share_b = share_a  # the partner's NaN weight replaced by box A's share
            rho_a = 1.0 - (share_a if dists[i] is None else dists[i][in_a].sum())
            rho_b = share_b if dists[j] is None else dists[j][in_b].sum()
        else:
            rho_a, rho_b = 1.0, 0.0
        soft[i, label_list[i]] += rho_a
        soft[i, label_list[j]] += rho_b
    return mixed, soft


def loop_snapmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor,
    num_classes: int,
    rng: np.random.Generator,
    *,
    alpha: float = 1.0,
    prob: float = 1.0,
    box_mode: str = "batch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SnapMix by a per-sample loop: host draws (:func:`loop_sample_params`) then the loop."""
    b, _, h, w = images.shape
    perm, box_a, box_b, apply = loop_sample_params(
        b, h, w, rng, alpha=alpha, prob=prob, box_mode=box_mode
    )
    return loop_snapmix_apply(images, labels, cams, perm, box_a, box_b, apply, num_classes)


def params_to_lists(params) -> tuple[list[int], list[Box], list[Box], list[bool]]:
    """camkit's `SnapMixParams` (its four tensors) as the loop's host lists."""
    return (
        [int(v) for v in params.perm.tolist()],
        [tuple(int(v) for v in box) for box in params.box_a.tolist()],
        [tuple(int(v) for v in box) for box in params.box_b.tolist()],
        [bool(v) for v in params.apply.tolist()],
    )


def loop_attentive_cutmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor,
    perm: list[int],
    mixed: bool,
    top_k: int,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Attentive CutMix one image (volume) at a time, with a given partner and coin.

    The partner's CAM ``cams[perm[i]]`` (``(h, w)`` or ``(d, h, w)``) ranks its cells (ties to
    the lower row-major index); each of its ``top_k`` cells ``(r, …)`` covers the pixels
    (voxels) ``⌈r·S/g⌉ … ⌈(r+1)·S/g⌉ − 1`` along each axis (side ``S``, ``g`` cells), copied
    from the partner. The target is ``(1 − a)·onehot(y_i) + a·onehot(y_perm[i])``, ``a`` the
    pasted share. Returns the mixed batch, the targets and each image's pasted cells
    (row-major indices, empty where ``mixed`` is False).
    """
    size, grid = tuple(images.shape[2:]), tuple(cams.shape[1:])
    out = images.clone()
    soft = torch.zeros(images.shape[0], num_classes, dtype=torch.float64)
    chosen = []
    for i, j in enumerate(perm):
        values = cams[j].flatten().tolist()
        order = sorted(range(len(values)), key=lambda c: (-values[c], c))
        cells = sorted(order[:top_k]) if mixed else []
        pasted = 0
        for cell in cells:
            index = np.unravel_index(cell, grid)
            region = tuple(
                slice(-(-r * s // g), -(-(r + 1) * s // g))
                for r, s, g in zip(index, size, grid, strict=True)
            )
            out[(i, slice(None), *region)] = images[(j, slice(None), *region)]
            pasted += math.prod(sl.stop - sl.start for sl in region)
        share = pasted / math.prod(size)
        soft[i, int(labels[i])] += 1.0 - share
        soft[i, int(labels[j])] += share
        chosen.append(cells)
    return out, soft.float(), chosen
