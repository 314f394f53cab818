"""What every figure builder shares: the figure, its file, titles, the colour bar."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from camkit._io import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Ints = Sequence[int] | torch.Tensor | None


def _figure(where: str, width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"{where}: needs matplotlib (pip install matplotlib)") from err
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, PNG without one), atomically.

    The parent folder is created; the write is `camkit.io`'s (a temporary file in that folder,
    ``fsync``, `os.replace`), so ``path`` is never left half-written. Returns ``Path(path)``.
    """
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    return atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=dpi))


def _values(value: object, name: str, count: int, per: str = "image") -> list | None:
    if value is None:
        return None
    items = value.tolist() if isinstance(value, torch.Tensor) else list(value)  # type: ignore[arg-type]
    if len(items) != count:
        raise ValueError(f"{name}: expected {count} values (one per {per}), got {len(items)}")
    return items


def _check_int(value: object, name: str, low: int, high: int | None = None) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int)
    if bad or value < low or (high is not None and value > high):
        want = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
        raise ValueError(f"{name}: expected {want}, got {value!r}")


def _name(index: int, class_names: Sequence[str] | None) -> str:
    return str(class_names[index]) if class_names is not None else str(index)


def _show(ax: Axes, image: torch.Tensor, title: str, colour: str = "black") -> None:
    ax.imshow(image.permute(1, 2, 0).detach().cpu().float().numpy())
    ax.set_title(title, fontsize=9, color=colour)
    ax.set_axis_off()


def _colorbar(fig: Figure, axes, cmap: str, label: str) -> None:
    """One colour bar for the CAM overlays: the map's own range, low to high."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(Normalize(0.0, 1.0), colormaps[cmap] if cmap in colormaps else None)
    bar = fig.colorbar(mappable, ax=axes, fraction=0.025, pad=0.01, ticks=[0.0, 1.0])
    bar.ax.set_yticklabels(["low", "high"], fontsize=8)
    bar.set_label(label, fontsize=8)
