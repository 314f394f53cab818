"""The CPE loss and CAMs, one image and one pair at a time. (see the package)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

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
