"""The straightforward implementations camkit is compared against (written here, from the spec).

This is the one reference module: the tests (``tests/harness.py``, ``tests/test_losses.py``,
``tests/test_tta.py``, ``tests/test_benchmarks.py``) and the benchmarks (``benchmarks/perf.py``)
all compare camkit with these functions. They are plain loops over images, cells and pairs, use
only torch/timm calls (never camkit's code paths) and compute in float64 where it helps; they
follow the conventions of camkit's docs (box geometry, CAM normalisation, cell ranking, vote rule)
so that outputs can be compared to rounding.

- `loop_snapmix` / `loop_snapmix_apply`: SnapMix as one would first write it, one sample at a
  time on host integers: for each image, crop the partner's box, ``F.interpolate`` it to the
  receiving box (``align_corners=True``, as the SnapMix authors' code), paste it, and sum the CAM
  distributions inside the boxes; a constant CAM is uniform (camkit) or takes the authors'
  fallback (``constant_cam="released"``). `loop_snapmix_apply` takes volumes too (cuboids,
  trilinear), one volume at a time.
- `loop_attentive_cutmix`: Attentive CutMix one image (volume) at a time: the partner's ``k``
  highest CAM cells, each cell's pixels (voxels) copied in, the target by the pasted share.
- `reference_cpe`: the contrastive patch embedding loss (Eq. 1, generalised to ``n`` cells, a
  temperature and L2 normalisation), one image and one pair at a time in float64, differentiable.
- `reference_cams`: CAMs of a timm classifier from ``forward_features``/``forward_head`` and
  autograd (the head-gradient class weights), one image at a time.
- `reference_tta` / `released_tta`: the CAM-masking test-time augmentation as the paper's
  released code ran it: one image at a time with autograd on, a forward for the prediction, a
  second forward for the CAM, then the ``k`` cumulatively masked copies forwarded one by one.
- `reference_vote`: the vote alone, on given step probabilities, one image at a time.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


# --------------------------------------------------------------------------------------------
# Contrastive patch embedding loss, one image and one pair at a time
# --------------------------------------------------------------------------------------------


def _area_average(cam: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``cam`` (h', w') averaged onto a ``height × width`` grid: cell ``(i, j)`` is the mean of rows
    ``floor(i·h'/height) … ceil((i+1)·h'/height) − 1`` and the columns alike (area resampling)."""
    src_h, src_w = cam.shape
    out = torch.empty(height, width, dtype=cam.dtype)
    for i in range(height):
        r0, r1 = (i * src_h) // height, -((-(i + 1) * src_h) // height)
        for j in range(width):
            c0, c1 = (j * src_w) // width, -((-(j + 1) * src_w) // width)
            out[i, j] = cam[r0:r1, c0:c1].mean()
    return out


def reference_cpe(
    features: torch.Tensor,
    cams: torch.Tensor,
    num_patches: int = 2,
    *,
    normalize: bool = False,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The CPE loss of each image in float64, ``(B,)``, differentiable with respect to ``features``.

    Per image: the cells are ranked by the CAM (averaged onto the feature grid first when it has
    another size); ``u`` are the ``n`` highest (ties: lower row-major index first) and ``v`` the
    ``n`` lowest (ties: higher index first). With ``s(a, b) = a·b / τ`` (unit vectors when
    ``normalize``), each group ``g`` contributes the mean over its pairs ``i < j`` of
    ``−ln e^{s(g_i, g_j)} / (e^{s(g_i, g_j)} + Σ_{k,l} e^{s(u_k, v_l)})``, evaluated with the
    largest exponent factored out (raw dot products of order 10³ would overflow ``exp``).
    """
    feats64, cams64 = features.double(), cams.detach().double().cpu()
    _, _, height, width = features.shape
    losses = []
    for b in range(features.shape[0]):
        cells = feats64[b].flatten(1).T  # (h·w, C)
        cam = cams64[b]
        if cam.shape != (height, width):
            cam = _area_average(cam, height, width)
        scores = cam.flatten().tolist()
        cell_ids = range(len(scores))
        top = sorted(cell_ids, key=lambda i: (-scores[i], i))[:num_patches]
        bottom = sorted(cell_ids, key=lambda i: (scores[i], -i))[:num_patches]
        u = [cells[i] / cells[i].norm() if normalize else cells[i] for i in top]
        v = [cells[i] / cells[i].norm() if normalize else cells[i] for i in bottom]

        def s(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return (a * c).sum() / temperature

        cross = [s(a, c) for a in u for c in v]
        total = feats64.new_zeros(())
        for group in (u, v):
            pairs = list(itertools.combinations(range(num_patches), 2))
            for i, j in pairs:
                positive = s(group[i], group[j])
                shift = torch.stack([positive, *cross]).max().detach()
                numerator = torch.exp(positive - shift)
                denominator = numerator + sum(torch.exp(x - shift) for x in cross)
                total = total - torch.log(numerator / denominator) / len(pairs)
        losses.append(total)
    return torch.stack(losses) if losses else feats64.new_zeros(0)


# --------------------------------------------------------------------------------------------
# CAMs and the CAM-masking TTA, one image at a time
# --------------------------------------------------------------------------------------------


def _feature_grid(model: nn.Module, feats: torch.Tensor, image_size: tuple[int, int]):
    """``forward_features`` output of one image as a ``(C, h, w)`` map (prefix tokens dropped)."""
    if feats.ndim == 3:  # (1, N, C) tokens: the patch tokens fold onto the patch grid
        patch = model.patch_embed.patch_size
        grid_h, grid_w = image_size[0] // patch[0], image_size[1] // patch[1]
        tokens = feats[0, int(getattr(model, "num_prefix_tokens", 0)) :]
        return tokens.T.reshape(-1, grid_h, grid_w)
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        return feats[0].permute(2, 0, 1)
    return feats[0]


def reference_cams(
    model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits (B, K), cams (B, h, w), target (B,))`` of a timm classifier, one image at a time.

    ``alpha_c`` is the gradient of the class logit with respect to ``forward_features``' output,
    through ``forward_head`` only, summed over the positions (for an average-pooled linear head
    this is the class row of the classifier; for a class-token head, the gradient at that token);
    the CAM is ``alpha_c · F`` at every cell. ``target`` defaults to the predicted class.
    """
    logits, cams, targets = [], [], []
    with torch.enable_grad():
        for i in range(images.shape[0]):
            feats = model.forward_features(images[i : i + 1]).detach().requires_grad_(True)
            out = model.forward_head(feats)[0]
            c = int(out.argmax()) if target is None else int(target[i])
            (grad,) = torch.autograd.grad(out[c], feats)
            size = tuple(images.shape[-2:])
            # summed over every position (a class token sits outside the grid)
            alpha = (
                grad[0].sum(0) if feats.ndim == 3 else _feature_grid(model, grad, size).sum((1, 2))
            )
            grid_feats = _feature_grid(model, feats.detach(), size)
            cams.append(torch.einsum("c,chw->hw", alpha, grid_feats))
            logits.append(out.detach())
            targets.append(c)
    return torch.stack(logits), torch.stack(cams), torch.tensor(targets, dtype=torch.long)


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
