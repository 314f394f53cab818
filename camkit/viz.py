"""Seeing what camkit does: CAM overlays, SnapMix, TTA and deletion-curve figures.

[`overlay_cams`][camkit.overlay_cams] is batched tensor code on the images' device (kornia
colormaps; no OpenCV, no matplotlib). The figure builders return a matplotlib `Figure` made without
pyplot (no global state, no display), importing matplotlib only when called.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from camkit._checks import check_probability, check_tensor
from camkit._io import atomic_write
from camkit.cam import normalize_cams, upsample_cams
from camkit.mix import SnapMixParams, snapmix
from camkit.tta import DeletionCurve, deletion_auc

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from camkit.tta import CAMMaskingTTA, TTAResult

__all__ = [
    "cam_grid",
    "deletion_figure",
    "overlay_cams",
    "save_figure",
    "snapmix_figure",
    "tta_figure",
]

Stats = Sequence[float] | torch.Tensor | None
Ints = Sequence[int] | torch.Tensor | None


def _figure(where: str, width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"{where}: needs matplotlib (pip install matplotlib)") from err
    return Figure(figsize=(width, height), layout="constrained")


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
    check_probability(alpha, "alpha")
    if not isinstance(cmap, str):
        raise TypeError(f"cmap: expected a colormap name (str), got {type(cmap).__name__}")
    from kornia.color import apply_colormap

    colormap, base = _colormap(cmap, images.device), _display(images, mean, std)
    maps = upsample_cams(cams.to(images.device, torch.float32), tuple(images.shape[-2:]))
    maps = normalize_cams(maps, "minmax").clamp(0.0, 1.0)
    colour = apply_colormap(maps[:, None], colormap).to(base.dtype)
    return ((1.0 - alpha) * base + alpha * colour).clamp(0.0, 1.0)


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix, PNG without one), atomically.

    The parent folder is created; the write is `camkit.io`'s (a temporary file in that folder,
    ``fsync``, `os.replace`), so ``path`` is never left half-written. Returns ``Path(path)``.
    """
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    return atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=dpi))


def _values(value: object, name: str, count: int) -> list | None:
    if value is None:
        return None
    items = value.tolist() if isinstance(value, torch.Tensor) else list(value)  # type: ignore[arg-type]
    if len(items) != count:
        raise ValueError(f"{name}: expected {count} values (one per image), got {len(items)}")
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


def snapmix_figure(
    images: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor,
    params: SnapMixParams,
    *,
    index: int = 0,
    class_names: Sequence[str] | None = None,
    mean: Stats = None,
    std: Stats = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Figure:
    """The SnapMix of image ``index``: both images, their boxes and CAMs, the mix and ``ρ_a, ρ_b``.

    Replays the exact draw ``params`` (from [`SnapMix.sample`][camkit.Mix.sample]) through
    [`snapmix`][camkit.snapmix] on the pair (image ``a = index`` and its partner
    ``b = params.perm[index]``), so the boxes and weights shown are the ones the training step
    used with these draws: ``soft = ρ_a·onehot(y_a) + ρ_b·onehot(y_b)``.

    Args:
        images: ``(B, C, H, W)`` un-mixed batch, as given to SnapMix.
        labels: ``(B,)`` int64 labels.
        cams: ``(B, h, w)`` CAMs of the un-mixed images for their labels.
        params: the [`SnapMixParams`][camkit.SnapMixParams] of the batch.
        index: which image ``a`` to show.
        class_names: names of the classes.
        mean: as in [`overlay_cams`][camkit.overlay_cams]; so are ``std``, ``alpha``, ``cmap``.

    Returns:
        A `Figure` with 5 axes: image a with box A, image b with box B, the mixed image with box A,
        CAM a, CAM b; ``ρ_a`` and ``ρ_b`` in the mixed image's title.
    """
    b = check_tensor(images, "images", ndim=4, floating=True).shape[0]
    check_tensor(labels, "labels", shape=(b,), floating=False)
    check_tensor(cams, "cams", ndim=3, floating=True)
    _check_int(index, "index", 0, b - 1)
    pair = [index, int(params.perm[index])]
    # the pair as a batch of two whose labels are 0 and 1: soft[0] is exactly (ρ_a, ρ_b), also
    # for a self-pair, and mixed[0] is the batch's mixed image a
    twice = [index, index]
    pair_params = SnapMixParams(params.perm.new_tensor([1, 0]), *(t[twice] for t in params[1:4]))
    pair_params = pair_params._replace(shared_box=params.shared_box)  # the batch's paste path
    two = torch.tensor([0, 1], device=images.device)
    mixed, soft = snapmix(images[pair], two, cams[pair], 2, params=pair_params)
    rho_a, rho_b = soft[0].tolist()
    shown = _display(torch.cat([images[pair], mixed[:1]]), mean, std)
    overlays = overlay_cams(images[pair], cams[pair], mean=mean, std=std, alpha=alpha, cmap=cmap)
    box_a, box_b = params.box_a[index].tolist(), params.box_b[index].tolist()
    y_a, y_b = (_name(int(labels[i]), class_names) for i in pair)
    state = "mixed" if bool(params.apply[index]) else "not mixed"
    mixed_title = f"{state}: ρ_a={rho_a:.3f} ({y_a})\nρ_b={rho_b:.3f} ({y_b})"
    fig = _figure("snapmix_figure", 8.4, 5.8)
    from matplotlib.patches import Rectangle

    panels = [
        (shown[0], f"a = {index}: {y_a}, box A", box_a, "white"),
        (shown[1], f"b = {pair[1]}: {y_b}, box B", box_b, "white"),
        (shown[2], mixed_title, box_a, "white"),
        (overlays[0], "CAM a", box_a, "black"),
        (overlays[1], "CAM b", box_b, "black"),
    ]
    cam_axes = []
    for n, (image, title, (y0, x0, y1, x1), colour) in enumerate(panels):
        ax = fig.add_subplot(2, 3, n + 1)
        _show(ax, image, title)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=colour, lw=2))
        if n >= 3:
            cam_axes.append(ax)
    fig.suptitle("SnapMix: box B of b pasted into box A of a; CAMs of each image's own label",
                 fontsize=10)  # fmt: skip
    _colorbar(fig, cam_axes, cmap, "CAM (min → max)")
    return fig


def tta_figure(
    images: torch.Tensor,
    result: TTAResult,
    tta: CAMMaskingTTA,
    *,
    index: int = 0,
    num_copies: int = 4,
    class_names: Sequence[str] | None = None,
    mean: Stats = None,
    std: Stats = None,
) -> Figure:
    """The CAM-masking TTA of image ``index``: masked copies and ``P(pred)`` against the step.

    The image's CAM is recomputed with ``tta``'s extractor (one forward) and the copies masked as
    [`CAMMaskingTTA.predict`][camkit.CAMMaskingTTA.predict] masks them (with ``tta.mask_value``).
    Only evaluated steps are drawn (the early exit leaves others NaN); a title is green when its
    copy supports the prediction (P > θ).

    Args:
        images: ``(B, C, H, W)`` the batch given to ``tta.predict``.
        result: its [`TTAResult`][camkit.TTAResult].
        tta: the [`CAMMaskingTTA`][camkit.CAMMaskingTTA] that produced ``result``.
        index: which image to show.
        num_copies: how many masked copies to show, evenly spaced over the evaluated steps.
        class_names: names of the classes.
        mean: as in [`overlay_cams`][camkit.overlay_cams], and so is ``std``.

    Returns:
        A `Figure` with ``1 + min(num_copies, evaluated steps)`` image axes (the unmasked image
        first) and one plot axes.
    """
    b = check_tensor(images, "images", ndim=4, floating=True).shape[0]
    _check_int(index, "index", 0, b - 1)
    _check_int(num_copies, "num_copies", 1)
    check_tensor(result.step_probs, "result.step_probs", shape=(b, tta.k), floating=True)
    image = images[index : index + 1]
    pred = int(result.original_labels[index])
    out = tta.extractor.forward_frozen(image)
    if int(out.target[0]) != pred:
        raise ValueError(f"result: predicts {pred} for image {index}, tta {int(out.target[0])}")
    probs = result.step_probs[index].detach().cpu().float()
    evaluated = (~torch.isnan(probs)).nonzero()[:, 0] + 1
    picks = torch.linspace(0, len(evaluated) - 1, min(num_copies, len(evaluated))).round()
    steps = torch.cat([evaluated.new_zeros(1), evaluated[picks.long().unique()]]).to(image.device)
    n = len(steps)
    copies = tta.masked_copies(image.expand(n, -1, -1, -1), steps, cams=out.cams.expand(n, -1, -1))
    shown = _display(copies, mean, std)
    p0 = float(result.original_probs[index, pred])
    fig = _figure("tta_figure", max(6.0, 2.3 * n), 5.6)
    grid = fig.add_gridspec(2, n, height_ratios=[1.0, 1.1])
    # the vote's own line: θ (the paper's rule), θ·P0 (relative); none for the arg-max rule,
    # whose votes depend on the other classes too
    rule = getattr(tta, "rule", "threshold")
    line = {"threshold": tta.theta, "relative": tta.theta * p0}.get(rule)
    for i, step in enumerate(steps.tolist()):
        p = p0 if step == 0 else float(probs[step - 1])
        title = f"unmasked: P={p:.2f}" if step == 0 else f"step {step}: P={p:.2f}"
        colour = "black" if line is None else "green" if p > line else "red"
        _show(fig.add_subplot(grid[0, i]), shown[i], title, colour)
    ax = fig.add_subplot(grid[1, :])
    xs, ys = [0, *evaluated.tolist()], [p0, *probs[evaluated - 1].tolist()]
    ax.plot(xs, ys, marker="o", ms=3, label=f"P({_name(pred, class_names)})")
    if line is not None:
        name = f"θ = {tta.theta:g}" if rule == "threshold" else f"θ·P0 = {line:.2f}"
        ax.axhline(line, color="grey", ls="--", label=name)
    ax.set(xlim=(0, tta.k), ylim=(0.0, 1.02), xlabel="mask step j (cells masked)")
    verdict = "flipped to" if bool(result.flipped[index]) else "kept"
    label = _name(int(result.labels[index]), class_names)
    ax.set_title(f"prediction {_name(pred, class_names)}: the vote {verdict} {label}", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("CAM-masking TTA: the most relevant cells masked cumulatively", fontsize=10)
    return fig


def deletion_figure(
    curves: DeletionCurve | Sequence[DeletionCurve],
    labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Deletion curves: ``P(pred)`` against the fraction of cells masked, AUC in the legend.

    Args:
        curves: one [`DeletionCurve`][camkit.DeletionCurve] (from
            [`deletion_curve`][camkit.deletion_curve]) or several (e.g. one per CAM method); each
            of their images is one line.
        labels: one legend label per line, optional.
        title: figure title.

    Returns:
        A `Figure` with one axes.
    """
    group = [curves] if isinstance(curves, DeletionCurve) else list(curves)
    lines = []
    for n, curve in enumerate(group):
        if not isinstance(curve, DeletionCurve):
            raise TypeError(f"curves[{n}]: expected a DeletionCurve, got {type(curve).__name__}")
        xs, aucs = curve.fractions.tolist(), deletion_auc(curve).tolist()
        lines += [(xs, row, auc) for row, auc in zip(curve.probs.tolist(), aucs, strict=True)]
    names = _values(labels, "labels", len(lines))
    fig = _figure("deletion_figure", 6.4, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    for i, (xs, ys, auc) in enumerate(lines):
        name = f"{names[i]}: " if names is not None else f"image {i}: "
        marker = {"marker": "o", "ms": 2} if len(xs) <= 40 else {}  # dots only where few
        ax.plot(xs, ys, label=f"{name}AUC {auc:.3f}", **marker)
    ax.set(xlabel="fraction of cells masked", ylabel="P(predicted class)", ylim=(0.0, 1.02))
    ax.set_xlim(0.0, max(x for xs, _, _ in lines for x in xs) or 1.0)
    ax.set_title(title or "")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # not over
    return fig
