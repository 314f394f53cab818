"""Figures of camkit's methods at work: a SnapMix draw, the TTA's masked copies, deletion curves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from camkit._checks import check_tensor
from camkit.mix import SnapMixParams, snapmix
from camkit.tta import DeletionCurve, deletion_auc
from camkit.viz._common import _check_int, _colorbar, _figure, _name, _show, _values
from camkit.viz._overlay import Stats, _display, overlay_cams

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from camkit.tta import CAMMaskingTTA, TTAResult


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
