"""CAM overlays: coloured maps blended onto images, batched tensor code on the images' device.

kornia colormaps; no OpenCV, no matplotlib (matplotlib's table only for names kornia lacks).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from camkit._checks import check_probability, check_tensor
from camkit.cam import normalize_cams, upsample_cams

Stats = Sequence[float] | torch.Tensor | None


@functools.lru_cache(maxsize=32)
def _colormap(cmap: str, device: torch.device) -> object:
    """A 256-colour `kornia.color.ColorMap` on ``device``: kornia's, else matplotlib's."""
    from kornia.color import ColorMap, ColorMapType

    if cmap.lower() in ColorMapType.list():
        return ColorMap(cmap, num_colors=256, device=device, dtype=torch.float32)
    try:
        import matplotlib
        import numpy as np

        table = matplotlib.colormaps[cmap].resampled(256)(np.linspace(0.0, 1.0, 256))[:, :3]
    except (ImportError, KeyError):
        raise ValueError(
            f"cmap: expected one of kornia's colormaps {ColorMapType.list()} or, with matplotlib "
            f"installed, a matplotlib colormap name; got {cmap!r}"
        ) from None
    # a 256-entry base resampled to 256 colours is kept exactly (align_corners=False)
    return ColorMap(table.tolist(), num_colors=256, device=device, dtype=torch.float32)


def _display(images: torch.Tensor, mean: Stats = None, std: Stats = None) -> torch.Tensor:
    """``(B, 3, H, W)`` images in [0, 1]: de-normalised, clamped, grey repeated to RGB."""
    check_tensor(images, "images", ndim=4, floating=True)
    channels = images.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"images: expected 1 or 3 channels, got shape {tuple(images.shape)}")
    out = images.to(torch.promote_types(images.dtype, torch.float32))
    for name, value in (("std", std), ("mean", mean)):
        if value is not None:
            stats = torch.as_tensor(value, dtype=out.dtype, device=out.device).flatten()
            if stats.numel() not in (1, channels):
                raise ValueError(f"{name}: expected 1 or {channels} values, got {stats.numel()}")
            stats = stats.view(1, -1, 1, 1)
            out = out * stats if name == "std" else out + stats
    return out.clamp(0.0, 1.0).expand(-1, 3, -1, -1)


def _check_style(alpha: float, cmap: object) -> None:
    check_probability(alpha, "alpha")
    if not isinstance(cmap, str):
        raise TypeError(f"cmap: expected a colormap name (str), got {type(cmap).__name__}")


def _blend(base: torch.Tensor, maps: torch.Tensor, alpha: float, cmap: str) -> torch.Tensor:
    """``(B, 3, H, W)`` images in [0, 1] blended with ``(B, H, W)`` maps in [0, 1] coloured."""
    from kornia.color import apply_colormap

    colour = apply_colormap(maps[:, None], _colormap(cmap, base.device)).to(base.dtype)
    return ((1.0 - alpha) * base + alpha * colour).clamp(0.0, 1.0)


def overlay_cams(
    images: torch.Tensor,
    cams: torch.Tensor,
    *,
    mean: Stats = None,
    std: Stats = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> torch.Tensor:
    """Blend coloured CAMs onto their images, batched on the images' device.

    Convention:
        ``image = clamp(images · std + mean, 0, 1)`` (each part only when given; a grey image is
        repeated to RGB); ``M = normalize_cams(upsample_cams(cams, (H, W)), "minmax")`` (bilinear,
        ``align_corners=False``; a constant map gives zeros); ``colour = cmap(M)`` with 256
        colours; ``out = (1 − alpha) · image + alpha · colour``. kornia's colormaps (``jet``,
        ``viridis``, ``turbo``, …) are resampled from 64 base colours and lie within 0.03 of
        matplotlib's; other names come from matplotlib's table when it is installed.

    Args:
        images: ``(B, C, H, W)`` float, ``C`` 1 or 3, in [0, 1] or normalised (``mean``/``std``).
        cams: ``(B, h, w)`` float maps, any resolution.
        mean: per-channel mean the images were normalised with (a sequence or a tensor).
        std: per-channel standard deviation the images were normalised with.
        alpha: weight of the colour, in [0, 1].
        cmap: colormap name.

    Returns:
        ``(B, 3, H, W)`` in [0, 1], float32 (float64 for float64 images).

    Examples:
        >>> overlay_cams(torch.rand(2, 3, 32, 32), torch.rand(2, 4, 4)).shape
        torch.Size([2, 3, 32, 32])
    """
    check_tensor(images, "images", ndim=4, floating=True)
    check_tensor(cams, "cams", shape=(images.shape[0], None, None), floating=True)
    _check_style(alpha, cmap)
    _colormap(cmap, images.device)  # an unknown name is refused before the images are read
    base = _display(images, mean, std)
    maps = upsample_cams(cams.to(images.device, torch.float32), tuple(images.shape[-2:]))
    return _blend(base, normalize_cams(maps, "minmax").clamp(0.0, 1.0), alpha, cmap)
