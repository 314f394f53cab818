"""The CAM methods of [`CAMExtractor`][camkit.CAMExtractor]: small functions over one signature.

Each method turns the ``(B, C, h, w)`` feature map ``F`` (``(B, C, d, h, w)`` for volumes) and
the head gradient of each sample's target logit into ``(B, h, w)`` (``(B, d, h, w)``) maps. The
gradient is taken at the same, last, feature layer and through the head only (no backbone
backward):

- ``G(c, h, w) = d logit / d F(c, h, w)``, the per-cell gradient. For an average-pooling +
  linear head it is ``w_c / (h·w)`` at every cell and is written down without autograd. The
  gradient that lands on prefix tokens (class, distillation or register tokens, which have no
  cell) is spread evenly over the ``h·w`` cells, so that ``sum_{h,w} G = alpha`` always holds.
- ``alpha_c``: the class row ``w_c`` for an exact head, ``sum_{h,w} G`` (the gradient at the
  pooled vector) otherwise.

Every method treats both as constants (detached): the maps are differentiable with respect to
``F`` only. Private module: the public name is [`CAM_METHODS`][camkit.CAM_METHODS].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

__all__ = ["CAM_METHODS", "CAMMethod", "HeadGradient", "compute_cams"]

CAMMethod = Literal["cam", "gradcam", "gradcampp", "layercam"]


class HeadGradient(NamedTuple):
    """The head gradient of each sample's target logit, both tensors detached.

    Attributes:
        cells: ``(B, C, *cells)`` per-cell gradient ``G`` (prefix-token share spread over
            cells).
        alpha: ``(B, C)`` class weights: the classifier's class rows for an exact head,
            ``G`` summed over the cells otherwise.
    """

    cells: torch.Tensor
    alpha: torch.Tensor


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: squares and cubes of small gradients underflow in 16 bits."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _cells(x: torch.Tensor) -> tuple[int, ...]:
    """The cell dimensions of a ``(B, C, *cells)`` tensor: ``(2, 3)``, or ``(2, 3, 4)``."""
    return tuple(range(2, x.ndim))


def _weighted_sum(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``sum_c weights[b, c] · features[b, c, *cell]`` with constant weights."""
    cells = "dhw"[3 - (features.ndim - 2) :]
    return torch.einsum(f"bc,bc{cells}->b{cells}", weights.detach().to(features.dtype), features)


def _cam(features: torch.Tensor, grad: HeadGradient) -> torch.Tensor:
    """CAM (Zhou et al. 2016): ``sum_c alpha_c F_c``, raw (no ReLU)."""
    return _weighted_sum(grad.alpha, features)


def _gradcam(features: torch.Tensor, grad: HeadGradient) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``ReLU(sum_c mean_{h,w}(G_c) F_c)``."""
    return torch.relu(_weighted_sum(_wide(grad.cells).mean(_cells(features)), features))


def _gradcampp(features: torch.Tensor, grad: HeadGradient) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19 with the exponential-logit approximation).

    ``a_c(h, w) = G² / (2 G² + S_c G³)`` with ``S_c = sum_{h,w} F_c`` (0 where the denominator
    is 0, i.e. where ``G = 0``), weights ``sum_{h,w} a_c(h, w) ReLU(G_c(h, w))``, map
    ``ReLU(sum_c weight_c F_c)``. No additive epsilon: the coefficients do not depend on the
    scale of the gradient through one.
    """
    g = _wide(grad.cells)
    total = _wide(features.detach()).sum(_cells(features), keepdim=True)
    g2 = g * g
    denom = 2 * g2 + total * g2 * g
    nonzero = denom != 0
    coeff = torch.where(nonzero, g2 / torch.where(nonzero, denom, torch.ones_like(denom)), 0.0)
    weights = (coeff * g.clamp_min(0)).sum(_cells(features))
    return torch.relu(_weighted_sum(weights, features))


def _layercam(features: torch.Tensor, grad: HeadGradient) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): ``ReLU(sum_c ReLU(G_c(h, w)) F_c(h, w))``."""
    weights = grad.cells.detach().clamp_min(0).to(features.dtype)
    return torch.relu((weights * features).sum(1))


_METHODS: dict[str, Callable[[torch.Tensor, HeadGradient], torch.Tensor]] = {
    "cam": _cam,
    "gradcam": _gradcam,
    "gradcampp": _gradcampp,
    "layercam": _layercam,
}

CAM_METHODS: tuple[str, ...] = tuple(_METHODS)
"""The names ``CAMExtractor(model, method=...)`` accepts: ``("cam", "gradcam", "gradcampp",
"layercam")``; see [`CAMExtractor`][camkit.CAMExtractor] for their definitions."""


def compute_cams(method: str, features: torch.Tensor, grad: HeadGradient) -> torch.Tensor:
    """``(B, *cells)`` maps of ``method`` (one of `CAM_METHODS`) from ``(B, C, *cells)``
    features."""
    return _METHODS[method](features, grad)
