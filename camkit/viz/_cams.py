"""Figures of CAMs: a grid of overlays, and a volume's (or image's) CAMs through their peaks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from camkit._checks import check_tensor
from camkit.cam import normalize_cams, upsample_cams
from camkit.viz._common import Ints, _check_int, _colorbar, _figure, _name, _show, _values
from camkit.viz._overlay import Stats, _blend, _check_style, _colormap, _display, overlay_cams

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def cam_grid(
    images: torch.Tensor,
    cams: torch.Tensor,
    *,
    labels: Ints = None,
    preds: Ints = None,
    flipped: Ints = None,
    tta_labels: Ints = None,
    class_names: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    mean: Stats = None,
    std: Stats = None,
    ncols: int = 4,
    alpha: float = 0.5,
    cmap: str = "jet",
    title: str | None = "CAM of the predicted class",
    colorbar: bool = True,
) -> Figure:
    """A grid of CAM overlays ([`overlay_cams`][camkit.overlay_cams]), one axes per image.

    Each title shows the label ``y`` and the prediction ``pred`` (green when they agree, red
    otherwise) and, with ``flipped`` or ``tta_labels`` (e.g. from a
    [`TTAResult`][camkit.TTAResult]), the TTA's decision on every tile: ``TTA: kept`` or
    ``TTA: → <class>``; ``names`` adds a line naming each image. The figure title says whose CAM
    is shown (default: the predicted class's) and a colour bar reads the map, each normalised to
    its own range.

    Args:
        images: ``(B, C, H, W)``, see [`overlay_cams`][camkit.overlay_cams].
        cams: ``(B, h, w)``.
        labels: ``B`` true classes, optional.
        preds: ``B`` predicted classes, optional.
        flipped: ``B`` flags: whether the TTA flipped the prediction, optional.
        tta_labels: ``B`` labels after the TTA's vote, optional (implies ``flipped``).
        class_names: names of the classes, indexed by class.
        names: ``B`` image names (e.g. file names), optional.
        mean: as in [`overlay_cams`][camkit.overlay_cams]; so are ``std``, ``alpha``, ``cmap``.
        ncols: number of columns, ≥ 1.
        title: the figure's title (``None``: none).
        colorbar: draw the colour bar.

    Returns:
        A `Figure` with ``B`` image axes.
    """
    overlays = overlay_cams(images, cams, mean=mean, std=std, alpha=alpha, cmap=cmap)
    b = overlays.shape[0]
    _check_int(ncols, "ncols", 1)
    ys, ps = _values(labels, "labels", b), _values(preds, "preds", b)
    after = _values(tta_labels, "tta_labels", b)
    flips = _values(flipped, "flipped", b)
    if flips is None and after is not None and ps is not None:
        flips = [a != p for a, p in zip(after, ps, strict=True)]
    tiles = _values(names, "names", b)
    cols, rows = min(ncols, b), -(-b // min(ncols, b))
    fig = _figure("cam_grid", 2.6 * cols + (0.6 if colorbar else 0.0), 2.9 * rows + 0.4)
    axes = []
    for i in range(b):
        parts = [f"y: {_name(ys[i], class_names)}"] if ys is not None else []
        parts += [f"pred: {_name(ps[i], class_names)}"] if ps is not None else []
        vote = ""
        if flips is not None:
            vote = "TTA: kept" if not flips[i] else "TTA: flip"
            if flips[i] and after is not None:
                vote = f"TTA: → {_name(after[i], class_names)}"
        colour = "black" if ys is None or ps is None else ("green" if ys[i] == ps[i] else "red")
        text = "\n".join(t for t in (tiles[i] if tiles else "", " | ".join(parts), vote) if t)
        ax = fig.add_subplot(rows, cols, i + 1)
        _show(ax, overlays[i], text, colour)
        axes.append(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    if colorbar:
        _colorbar(fig, axes, cmap, "CAM (each map min → max)")
    return fig


# The planes shown per spatial rank: (name, the spatial axis fixed at the peak); a 2-D image is
# shown whole (no axis fixed). Everything else in `volume_figure` is the same for 2-D and 3-D.
_PLANES: dict[int, tuple[tuple[str, int | None], ...]] = {
    2: (("image", None),),
    3: (("axial", 0), ("coronal", 1), ("sagittal", 2)),
}
_AXIS_NAMES = {2: "hw", 3: "dhw"}


def _cut(x: torch.Tensor, spatial: int, axis: int | None, index: int | None) -> torch.Tensor:
    """``x`` (``(..., *spatial)``) at ``index`` along spatial ``axis``; its maximum along it for
    ``index=None``; the whole of ``x`` for ``axis=None``."""
    if axis is None:
        return x
    dim = x.ndim - spatial + axis
    return x.amax(dim) if index is None else x.select(dim, index)


def volume_figure(
    volume: torch.Tensor,
    cams: torch.Tensor,
    *,
    names: Sequence[str] | None = None,
    mean: Stats = None,
    std: Stats = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    projection: bool = True,
    title: str | None = "CAM through its peak (+)",
    colorbar: bool = True,
) -> Figure:
    """A volume's CAMs as the three orthogonal slices through each map's peak, and a projection.

    Each map is upsampled to the volume (trilinear, as [`upsample_cams`][camkit.upsample_cams])
    and min-max normalised over the whole volume, so a voxel has the same colour in every panel
    and the peak is the top colour. Its peak is the voxel ``(d, h, w)`` of the largest upsampled
    value (the first in row-major order on ties; a constant map peaks at ``(0, 0, 0)``). One row
    per map:

    - ``axial: d = …``: the slice ``volume[:, d]``, shown as ``(H, W)``;
    - ``coronal: h = …``: ``volume[:, :, h]``, shown as ``(D, W)``;
    - ``sagittal: w = …``: ``volume[:, :, :, w]``, shown as ``(D, H)``;
    - ``max projection over d`` (``projection=True``): the maximum of the volume over ``d`` and,
      overlaid, the maximum of the normalised map over ``d``.

    Rows run down, columns across (the first and second remaining axis); a white ``+`` marks the
    peak in every panel. An image ``(C, H, W)`` with maps ``(h, w)`` goes the same way with
    nothing sliced: one panel per map, the overlay of
    [`overlay_cams`][camkit.overlay_cams], with its peak marked.

    Args:
        volume: ``(C, D, H, W)`` (or an image ``(C, H, W)``) float, ``C`` 1 or 3, in [0, 1] or
            normalised (``mean``/``std``). MedMNIST's 3-D sets are shape masks (0 or 1).
        cams: one map ``(d, h, w)`` or ``K`` maps ``(K, d, h, w)`` of any resolution (for an image
            ``(h, w)`` or ``(K, h, w)``), e.g. ``CAMExtractor(...)(x[None]).cams[0]``.
        names: ``K`` row names (e.g. the classes of the maps), optional.
        mean: as in [`overlay_cams`][camkit.overlay_cams]; so are ``std``, ``alpha``, ``cmap``.
        projection: add the max projection panel (volumes only).
        title: the figure's title (``None``: none).
        colorbar: draw the colour bar.

    Returns:
        A `Figure` with ``K`` rows of 4 image axes (3 without the projection; 1 for an image),
        row by row, then the colour bar.

    Raises:
        TypeError: ``volume`` or ``cams`` is not a floating-point tensor, ``cmap`` is not a
            string.
        ValueError: ``volume`` is not ``(C, D, H, W)`` or ``(C, H, W)`` with 1 or 3 channels,
            ``cams`` does not have the volume's spatial rank (plus an optional ``K``) or is not
            finite, ``names`` is not ``K`` long, or ``alpha``, ``mean``, ``std``, ``cmap`` are bad
            (each message names the argument).

    Examples:
        >>> import torch
        >>> from camkit import volume_figure
        >>> cam = torch.zeros(8, 8, 8)  # at the volume's resolution: nothing interpolated
        >>> cam[3, 5, 7] = 1.0
        >>> fig = volume_figure(torch.rand(1, 8, 8, 8), cam)
        >>> [ax.get_title() for ax in fig.axes[:4]]
        ['axial: d = 3', 'coronal: h = 5', 'sagittal: w = 7', 'max projection over d']
    """
    check_tensor(volume, "volume", ndim=(3, 4), floating=True)
    spatial = volume.ndim - 1
    dims = "(C, D, H, W)" if spatial == 3 else "(C, H, W)"
    if volume.shape[0] not in (1, 3) or 0 in volume.shape:
        raise ValueError(
            f"volume: expected {dims} with 1 or 3 channels and no empty side, got shape "
            f"{tuple(volume.shape)}"
        )
    check_tensor(cams, "cams", ndim=(spatial, spatial + 1), floating=True)
    maps = cams if cams.ndim == spatial + 1 else cams[None]
    if 0 in maps.shape:
        raise ValueError(f"cams: expected no empty side, got shape {tuple(cams.shape)}")
    check_tensor(maps, "cams", finite=True)
    rows = _values(names, "names", maps.shape[0], per="map")
    _check_style(alpha, cmap)
    _colormap(cmap, volume.device)
    size = tuple(volume.shape[1:])
    up = upsample_cams(maps.to(volume.device, torch.float32), size)
    norm = normalize_cams(up, "minmax").clamp(0.0, 1.0)
    peaks = [tuple(int(i) for i in np.unravel_index(int(j), size)) for j in up.flatten(1).argmax(1)]
    letters = _AXIS_NAMES[spatial]
    views = [
        (f"{plane}: {letters[axis]} = " if axis is not None else plane, axis, False)
        for plane, axis in _PLANES[spatial]
    ]
    if spatial == 3 and projection:
        views.append((f"max projection over {letters[0]}", 0, True))
    ncols, nrows = len(views), len(peaks)
    fig = _figure("volume_figure", 2.6 * ncols + (0.6 if colorbar else 0.0), 2.9 * nrows + 0.4)
    axes = []
    for r, peak in enumerate(peaks):
        for c, (label, axis, project) in enumerate(views):
            index = None if project or axis is None else peak[axis]
            text = label + (str(index) if index is not None else "")
            if rows is not None:
                text = f"{rows[r]}\n{text}"
            base = _display(_cut(volume, spatial, axis, index)[None], mean, std)
            shown = _blend(base, _cut(norm[r], spatial, axis, index)[None], alpha, cmap)
            ax = fig.add_subplot(nrows, ncols, r * ncols + c + 1)
            _show(ax, shown[0], text)
            y, x = [p for i, p in enumerate(peak) if i != axis]
            ax.plot([x], [y], marker="+", ms=10, mew=1.5, color="white", ls="none")
            axes.append(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    if colorbar:
        _colorbar(fig, axes, cmap, "CAM (each map min → max)")
    return fig
