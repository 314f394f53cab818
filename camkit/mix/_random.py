"""Random draws of the mix augmentations: Beta box sizes and CutMix boxes.

Draws on the host take their Beta variates from ``numpy.random.Generator.beta``, seeded from the
torch generator (or torch's global one), so ``torch.manual_seed`` or a ``torch.Generator`` makes
them reproducible. Draws on an accelerator keep camkit's own Gamma sampler
(`_sample_beta_device`): torch's public Beta and Gamma distributions cannot take a generator,
and numpy cannot draw on the device without a host round trip.
"""

from __future__ import annotations

import numpy as np
import torch

_GAMMA_PROPOSALS = 16


def _sample_gamma(
    shape: tuple[int, ...], alpha: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Gamma(alpha, 1) draws by Marsaglia–Tsang, vectorised with a fixed number of proposals.

    Each proposal is accepted with probability > 0.95 (for the boosted shape ≥ 1), so the chance
    that all ``_GAMMA_PROPOSALS`` fail is below 1e-20; such a draw would return the mode ``d``.
    """
    shape_boosted = alpha + 1.0 if alpha < 1.0 else alpha
    d = shape_boosted - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    x = torch.randn((*shape, _GAMMA_PROPOSALS), generator=generator, device=device)
    u = torch.rand((*shape, _GAMMA_PROPOSALS), generator=generator, device=device)
    v = (1.0 + c * x) ** 3
    safe_v = v.clamp_min(1e-30)
    accept = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * safe_v + d * torch.log(safe_v))
    first = accept.to(torch.uint8).argmax(-1, keepdim=True)
    value = torch.where(
        accept.any(-1), d * safe_v.gather(-1, first)[..., 0], torch.full(shape, d, device=device)
    )
    if alpha < 1.0:
        boost = torch.rand(shape, generator=generator, device=device).clamp_min(1e-30)
        value = value * boost ** (1.0 / alpha)
    return value


def _sample_beta_device(
    alpha: float,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """``Beta(α, α)`` draws made on ``device`` with ``generator``: ``g1 / (g1 + g2)``, ``g ~ Γ(α)``.

    camkit keeps this sampler for draws on an accelerator (``box_mode="sample"`` on the images'
    device): ``torch.distributions.Beta`` draws from the global generator only, and a host sampler
    would need the values copied to the device. Returns float32 values in [0, 1].
    """
    g1, g2 = _sample_gamma((2, *shape), alpha, generator, device)
    total = g1 + g2
    return torch.where(total > 0, g1 / total.clamp_min(1e-30), torch.full_like(total, 0.5))


def _sample_beta_host(
    alpha: float, shape: tuple[int, ...], generator: torch.Generator | None
) -> torch.Tensor:
    """``Beta(α, α)`` draws on the host: numpy's sampler, seeded from the torch ``generator``.

    ``generator`` is a CPU generator or ``None`` (torch's global one); it advances by one draw
    (the numpy seed) whatever ``shape`` is. Returns a float64 CPU tensor.
    """
    seed = torch.randint(0, 2**62, (2,), generator=generator, device="cpu")
    rng = np.random.default_rng(seed.tolist())
    return torch.from_numpy(rng.beta(alpha, alpha, size=shape))


def _sample_boxes(
    lam: torch.Tensor,
    height: int,
    width: int,
    generator: torch.Generator | None,
    *,
    far_edge_up: bool = False,
) -> torch.Tensor:
    """CutMix boxes: side ratio ``sqrt(1 − λ)``, uniform centre, clipped to the image.

    Convention:
        Boxes are ``(y0, x0, y1, x1)`` int64 pixel indices, half-open (rows ``y0 … y1−1``).
        ``cut_h = floor(H·sqrt(1−λ))``, centre ``cy ~ U{0 … H−1}``,
        ``y0 = clip(cy − cut_h // 2, 0, H)`` and ``y1 = clip(cy + cut_h // 2, 0, H)`` (the CutMix
        and SnapMix authors' ``rand_bbox``: an odd cut loses a pixel), or, with
        ``far_edge_up``, ``y1 = clip(cy + (cut_h + 1) // 2, 0, H)`` (timm's ``rand_bbox``: the
        unclipped box is ``cut_h`` long); the same for x. A box may be empty (``y0 == y1`` or
        ``x0 == x1``).

    Args:
        lam: ``(N,)`` values in [0, 1].
        height: image height ``H``.
        width: image width ``W``.
        generator: random generator on ``lam``'s device (``None``: the global one).
        far_edge_up: timm's far edge (see above).

    Returns:
        ``(N, 4)`` int64 boxes on ``lam``'s device.
    """
    centre = torch.rand((lam.shape[0], 2), generator=generator, device=lam.device)
    cy = torch.floor(centre[:, 0] * height).long().clamp(max=height - 1)
    cx = torch.floor(centre[:, 1] * width).long().clamp(max=width - 1)
    return _boxes_at(lam, cy, cx, height, width, far_edge_up=far_edge_up)


def _boxes_at(
    lam: torch.Tensor,
    cy: torch.Tensor,
    cx: torch.Tensor,
    height: int,
    width: int,
    *,
    far_edge_up: bool = False,
) -> torch.Tensor:
    """The boxes of `_sample_boxes` for given ``λ`` and centres ``(cy, cx)``, ``(N, 4)`` int64."""
    ratio = torch.sqrt((1.0 - lam).clamp(0.0, 1.0))
    cut_h = torch.floor(height * ratio).long()
    cut_w = torch.floor(width * ratio).long()
    up = 1 if far_edge_up else 0
    y0 = (cy - cut_h // 2).clamp(0, height)
    y1 = (cy + (cut_h + up) // 2).clamp(0, height)
    x0 = (cx - cut_w // 2).clamp(0, width)
    x1 = (cx + (cut_w + up) // 2).clamp(0, width)
    return torch.stack([y0, x0, y1, x1], dim=1)


def _sample_cuboids(
    lam: torch.Tensor,
    size: tuple[int, ...],
    generator: torch.Generator | None,
    *,
    far_edge_up: bool = True,
) -> torch.Tensor:
    """CutMix cuboids of a volume ``size = (D, H, W)``: `_sample_boxes` with one more axis.

    Convention:
        The side ratio is ``(1 − λ)^(1/3)`` (the cuboid's share of the volume is ``1 − λ`` before
        clipping); per axis, in the order ``(D, H, W)``, ``cut = floor(side·ratio)``, a uniform
        centre ``c`` (one draw of three per cuboid) and timm's far edge: ``c − cut // 2`` to
        ``c + (cut + 1) // 2``, half-open, clipped (``far_edge_up=False``: the SnapMix authors'
        ``c + cut // 2``, SnapMix's cuboids). Boxes are ``(z0, y0, x0, z1, y1, x1)``.
        An axis of size 1 (a depth-1 volume) is not cut: the cuboid spans it, and the ratio is
        ``(1 − λ)^(1/r)`` over the ``r`` longer axes, so a depth-1 volume gets the image's box
        rather than an empty cuboid (``floor(1·ratio) = 0``) that would never mix.

    Returns:
        ``(N, 6)`` int64 cuboids on ``lam``'s device.
    """
    rank = len(size)
    centre = torch.rand((lam.shape[0], rank), generator=generator, device=lam.device)
    spans = [side == 1 for side in size] if any(side > 1 for side in size) else [False] * rank
    ratio = (1.0 - lam).clamp(0.0, 1.0) ** (1.0 / (rank - sum(spans)))
    up = 1 if far_edge_up else 0
    low, high = [], []
    for axis, side in enumerate(size):
        if spans[axis]:
            low.append(torch.zeros_like(lam, dtype=torch.long))
            high.append(torch.ones_like(lam, dtype=torch.long))
            continue
        c = torch.floor(centre[:, axis] * side).long().clamp(max=side - 1)
        cut = torch.floor(side * ratio).long()
        low.append((c - cut // 2).clamp(0, side))
        high.append((c + (cut + up) // 2).clamp(0, side))
    return torch.stack(low + high, dim=1)
