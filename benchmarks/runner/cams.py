"""Where a model's CAMs sit on CT slices: the share of CAM mass inside the body.

The body mask is everything but the dark background connected to the image border (intensity
< ``DARK`` after a grey conversion, grown from the border through dark pixels), so the dark
lungs, enclosed by the chest wall, count as body. The share is the CAM of the predicted class,
upsampled to the image and clipped at zero, summed inside the mask over its total. The runner
records it with every row of a CT site (``cam_body_share``); ``benchmarks/figures.py`` tables it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import camkit

DARK = 0.15


def body_mask(images: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` bool: not the dark background connected to the border of ``images``
    (``(B, 3, H, W)`` uint8)."""
    gray = images.float().mean(1) / 255
    dark = gray < DARK
    outside = torch.zeros_like(dark)
    outside[:, 0, :], outside[:, -1, :], outside[:, :, 0], outside[:, :, -1] = (
        dark[:, 0, :], dark[:, -1, :], dark[:, :, 0], dark[:, :, -1],
    )  # fmt: skip
    while True:  # grow the border's dark pixels through dark pixels (8-neighbourhood)
        grown = F.max_pool2d(outside[:, None].float(), 3, 1, 1)[:, 0].bool() & dark
        if torch.equal(grown, outside):
            return ~outside
        outside = grown


@torch.no_grad()
def body_share(model, data, images: torch.Tensor) -> torch.Tensor:
    """``(B,)`` share of each image's positive CAM mass (predicted class) inside its body."""
    extractor = camkit.CAMExtractor(model)
    shares = []
    for i in range(0, len(images), 64):
        batch = images[i : i + 64]
        cams = extractor.forward_frozen(data.to_input(batch)).cams
        mass = camkit.upsample_cams(cams.float(), tuple(batch.shape[-2:])).clamp_min(0)
        inside = (mass * body_mask(batch).to(mass.device)).flatten(1).sum(1)
        shares.append(inside / mass.flatten(1).sum(1).clamp_min(1e-12))
    return torch.cat(shares)
