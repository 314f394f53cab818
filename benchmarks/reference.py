"""The straightforward implementations camkit is compared against (written here, from the spec).

- :func:`loop_snapmix` / :func:`loop_snapmix_apply`: SnapMix as one would first write it, one
  sample at a time on host integers: for each image, crop the partner's box, ``F.interpolate`` it
  to the receiving box, paste it, and sum the CAM distributions inside the boxes.
- :func:`released_tta`: the CAM-masking test-time augmentation as the paper's released code ran
  it: one image at a time with autograd on, a forward for the prediction, a second forward for
  the CAM, then the ``k`` cumulatively masked copies forwarded one by one.

Both follow the conventions of camkit's docs (box geometry, CAM normalisation, vote rule) so that
the outputs can be compared exactly; ``tests/test_benchmarks.py`` checks that they agree with
camkit on small inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# SnapMix, per-sample loop
# --------------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), half-open


def _cutmix_box(lam: float, height: int, width: int, rng: np.random.Generator) -> Box:
    """CutMix box with side ratio sqrt(1 - lam), uniform centre, clipped (camkit's convention)."""
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch one sample at a time with given draws (host integers).

    ``mixed[i]`` is ``images[i]`` with ``box_a[i]`` replaced by the bilinear resize
    (``align_corners=False``) of ``images[perm[i]]``'s ``box_b[i]``; the CAM of every image is
    shifted by its minimum, upsampled to the image size, shifted by its minimum again and divided by
    its sum (uniform when constant); ``ρ_a = 1 − ΣS_i(box_a)``, ``ρ_b = ΣS_perm[i](box_b)``;
    un-mixed images keep their one-hot label.
    """
    b, _, h, w = images.shape
    dists = []
    for i in range(b):
        # shifted by its minimum first: a resized constant map is not exactly constant in floating
        # point, and its rounding noise would otherwise be normalised into a distribution
        cam = cams[i].float() - cams[i].float().min()
        up = F.interpolate(cam[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        shifted = up - up.min()
        total = shifted.sum()
        dists.append(shifted / total if total > 0 else torch.full_like(up, 1.0 / (h * w)))
    mixed = images.clone()
    soft = torch.zeros(b, num_classes, device=images.device)
    label_list = labels.tolist()
    for i in range(b):
        j = perm[i]
        ya0, xa0, ya1, xa1 = box_a[i]
        yb0, xb0, yb1, xb1 = box_b[i]
        if apply[i]:
            crop = images[j : j + 1, :, yb0:yb1, xb0:xb1]
            mixed[i, :, ya0:ya1, xa0:xa1] = F.interpolate(
                crop, size=(ya1 - ya0, xa1 - xa0), mode="bilinear", align_corners=False
            )[0]
            rho_a = 1.0 - dists[i][ya0:ya1, xa0:xa1].sum()
            rho_b = dists[j][yb0:yb1, xb0:xb1].sum()
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
    """camkit's :class:`~camkit.snapmix.SnapMixParams` as the loop's host lists."""
    return (
        [int(v) for v in params.perm.tolist()],
        [tuple(int(v) for v in box) for box in params.box_a.tolist()],
        [tuple(int(v) for v in box) for box in params.box_b.tolist()],
        [bool(v) for v in params.apply.tolist()],
    )


# --------------------------------------------------------------------------------------------
# CAM-masking TTA, the released protocol
# --------------------------------------------------------------------------------------------


def released_tta(
    model: nn.Module,
    images: torch.Tensor,
    *,
    k: int = 31,
    theta: float = 0.2,
    patch_size: int = 8,
    mask_value: float = 0.0,
) -> torch.Tensor:
    """CAM-masking TTA the way the released code ran it: one image at a time, autograd on.

    Per image: forward 1 gives the prediction ``c`` (softmax argmax); forward 2 gives the feature
    map, whose CAM ``w_c · F`` is upsampled bilinearly to the image, summed over
    ``patch_size``-pixel cells and ranked (decreasing, ties by row-major index); then for
    ``j = 1 … k`` the copy with the top ``j`` cells set to ``mask_value`` is forwarded alone, and
    its vote does not support ``c`` when ``softmax[c] <= θ``. When more than ``k / 2`` votes do
    not support ``c`` the label flips to the runner-up class. That is ``k + 2`` image-forwards.

    Args:
        model: a timm classifier with a linear head (``get_classifier()``), in eval mode.
        images: ``(N, 3, H, W)``, ``H`` and ``W`` multiples of ``patch_size``.

    Returns:
        ``(N,)`` int64 labels after voting.
    """
    n, _, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}×{width} is not a multiple of {patch_size}")
    grid_w = width // patch_size
    weight = model.get_classifier().weight
    labels = []
    with torch.enable_grad():
        for i in range(n):
            image = images[i : i + 1]
            probs = model(image).softmax(1)[0]
            top2 = probs.topk(min(2, probs.numel())).indices.tolist()
            pred, runner_up = top2[0], top2[-1]
            feats = model.forward_features(image)[0]
            cam = torch.einsum("c,chw->hw", weight[pred], feats)
            up = F.interpolate(
                cam[None, None], size=(height, width), mode="bilinear", align_corners=False
            )[0, 0]
            cells = up.reshape(height // patch_size, patch_size, grid_w, patch_size).sum((1, 3))
            order = torch.argsort(cells.flatten(), descending=True, stable=True).tolist()
            masked = image.clone()
            against = 0
            for j in range(k):
                row, col = divmod(order[j], grid_w)
                masked = masked.clone()
                masked[
                    ...,
                    row * patch_size : (row + 1) * patch_size,
                    col * patch_size : (col + 1) * patch_size,
                ] = mask_value
                p = float(model(masked).softmax(1)[0, pred].detach())
                against += p <= theta
            labels.append(runner_up if against > k / 2 else pred)
    return torch.tensor(labels, dtype=torch.long)
