"""camkit.viz: overlay maths against an independent float64 reference, figures, deletion AUC."""

import importlib
import math
import os
import sys

import matplotlib
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import camkit
import camkit.viz as viz
from camkit import CAMExtractor, CAMMaskingTTA, SnapMix, SnapMixParams, snapmix
from camkit.tta import DeletionCurve, TTAResult, deletion_auc, deletion_curve
from tests.helpers import TinyNet

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference_overlay(images, cams, alpha, cmap="jet", mean=None, std=None):
    """float64 NumPy/torch reference: bilinear resize, min-max, matplotlib colormap, blend."""
    images = images.double()
    if std is not None:
        images = images * torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    if mean is not None:
        images = images + torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    images = images.clamp(0, 1).expand(-1, 3, -1, -1)
    up = F.interpolate(
        cams.double()[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
    )[:, 0]
    lo = up.amin((1, 2), keepdim=True)
    span = up.amax((1, 2), keepdim=True) - lo
    norm = torch.where(span > 0, (up - lo) / span.clamp_min(1e-300), torch.zeros_like(up))
    colour = matplotlib.colormaps[cmap](norm.numpy())[..., :3]  # (B, H, W, 3)
    colour = torch.from_numpy(colour).permute(0, 3, 1, 2)
    return (1 - alpha) * images + alpha * colour


def _hand_result(step_probs, original_probs, original_labels):
    step_probs = torch.tensor(step_probs)
    b = step_probs.shape[0]
    zeros = torch.zeros(b)
    return TTAResult(
        labels=torch.tensor(original_labels),
        flipped=torch.zeros(b, dtype=torch.bool),
        probs=torch.tensor(original_probs),
        original_labels=torch.tensor(original_labels),
        original_probs=torch.tensor(original_probs),
        votes_for=zeros.long(),
        votes_against=zeros.long(),
        step_probs=step_probs,
        forwards=zeros.long(),
    )


# -- overlay_cams --------------------------------------------------------------------------------


@pytest.mark.parametrize(("cmap", "alpha"), [("jet", 0.5), ("jet", 0.7), ("magma", 1.0)])
def test_overlay_matches_float64_reference(cmap, alpha):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 20, 24, generator=gen)
    cams = torch.randn(3, 5, 6, generator=gen)
    out = viz.overlay_cams(images, cams, alpha=alpha, cmap=cmap)
    assert out.shape == (3, 3, 20, 24) and out.dtype == torch.float32
    ref = reference_overlay(images, cams, alpha, cmap)
    torch.testing.assert_close(out.double(), ref, atol=0.025, rtol=0)
    # the colour really is there: far from the plain image where alpha is large
    assert (out.double() - (1 - alpha) * images.double()).abs().amax() > 0.4 * alpha


def test_overlay_orientation_hot_spot_is_red():
    """A single hot CAM cell colours its own image corner red with jet, the far corner blue."""
    cams = torch.zeros(1, 4, 4)
    cams[0, 0, 3] = 1.0  # top right
    out = viz.overlay_cams(torch.zeros(1, 3, 32, 32), cams, alpha=1.0)
    top_right, bottom_left = out[0, :, 2, 29], out[0, :, 29, 2]
    assert top_right[0] > 0.4 and top_right[2] < 0.1  # dark red end of jet
    assert bottom_left[0] == 0 and bottom_left[2] > 0.45  # the blue end (jet(0) = (0, 0, 0.5))


def test_constant_map_blends_only_the_colour_of_zero():
    images = torch.rand(2, 3, 8, 8)
    out = viz.overlay_cams(images, torch.full((2, 3, 3), 7.0), alpha=0.4)
    assert not torch.isnan(out).any()
    # jet(0) = (0, 0, 0.5): red and green are exactly the image dimmed by (1 - alpha)
    torch.testing.assert_close(out[:, :2], 0.6 * images[:, :2], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 2], 0.6 * images[:, 2] + 0.4 * 0.5, atol=1e-6, rtol=0)
    # with alpha = 0 the map does not matter at all
    torch.testing.assert_close(viz.overlay_cams(images, torch.randn(2, 3, 3), alpha=0.0), images)


def test_mean_std_denormalise_then_clamp():
    raw = torch.rand(2, 3, 10, 10)
    raw[0, 0, 0, 0], raw[1, 2, 5, 5] = 1.7, -0.6  # out of range before clamping
    mean, std = torch.tensor(MEAN), list(STD)
    normalised = (raw - mean.view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    plain = viz.overlay_cams(normalised, torch.rand(2, 2, 2), mean=mean, std=std, alpha=0.0)
    torch.testing.assert_close(plain, raw.clamp(0, 1), atol=1e-6, rtol=0)
    assert plain[0, 0, 0, 0] == 1.0 and plain[1, 2, 5, 5] == 0.0
    cams = torch.randn(2, 3, 3)
    out = viz.overlay_cams(normalised, cams, mean=MEAN, std=STD, alpha=0.3)
    ref = reference_overlay(normalised, cams, 0.3, mean=MEAN, std=STD)
    torch.testing.assert_close(out.double(), ref, atol=0.025, rtol=0)


def test_grayscale_repeated_to_rgb():
    gray = torch.rand(2, 1, 9, 7)
    out = viz.overlay_cams(gray * 2 - 1, torch.rand(2, 3, 3), mean=[0.5], std=[0.5], alpha=0.0)
    assert out.shape == (2, 3, 9, 7)
    torch.testing.assert_close(out, gray.expand(-1, 3, -1, -1), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"images": torch.rand(3, 8, 8)}, "images"),
        ({"images": torch.rand(2, 2, 8, 8)}, "images"),
        ({"images": torch.randint(0, 255, (2, 3, 8, 8))}, "images"),
        ({"cams": torch.rand(2, 4)}, "cams"),
        ({"cams": torch.rand(3, 4, 4)}, "cams"),
        ({"cams": torch.randint(0, 3, (2, 4, 4))}, "cams"),
        ({"alpha": 1.5}, "alpha"),
        ({"cmap": "not-a-colormap"}, "cmap"),
        ({"cmap": 3}, "cmap"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"std": torch.ones(4)}, "std"),
    ],
)
def test_overlay_errors_name_the_argument(kwargs, name):
    args = {"images": torch.rand(2, 3, 8, 8), "cams": torch.rand(2, 4, 4), **kwargs}
    with pytest.raises((ValueError, TypeError), match=rf"^{name}:"):
        viz.overlay_cams(args.pop("images"), args.pop("cams"), **args)


def test_import_and_overlay_work_without_matplotlib(monkeypatch):
    monkeypatch.setattr(camkit, "viz", viz)  # the fresh import below rebinds it
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    for name in [m for m in sys.modules if m == "camkit.viz" or m.startswith("camkit.viz.")]:
        monkeypatch.delitem(sys.modules, name)
    fresh = importlib.import_module("camkit.viz")
    assert fresh is not viz and fresh._overlay is not viz._overlay
    out = fresh.overlay_cams(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 2), cmap="viridis")
    assert out.shape == (1, 3, 8, 8)
    fresh._overlay._colormap.cache_clear()
    with pytest.raises(ValueError, match=r"^cmap: .*'magma'"):
        fresh.overlay_cams(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 2), cmap="magma")
    with pytest.raises(ImportError, match="cam_grid: needs matplotlib"):
        fresh.cam_grid(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 2))


# -- figures -------------------------------------------------------------------------------------


def test_cam_grid_axes_and_titles(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    images, cams = torch.rand(5, 3, 16, 16), torch.rand(5, 4, 4)
    fig = viz.cam_grid(
        images,
        cams,
        labels=torch.tensor([0, 1, 1, 0, 1]),
        preds=[0, 1, 0, 0, 1],
        tta_labels=torch.tensor([0, 1, 1, 0, 1]),
        class_names=["normal", "covid"],
        names=["a.png", "b.png", "c.png", "d.png", "e.png"],
        ncols=3,
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 6  # five tiles and the colour bar
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 3)
    titles = [ax.get_title() for ax in fig.axes[:5]]
    assert titles[2] == "c.png\ny: covid | pred: normal\nTTA: → covid"  # the TTA on every tile
    assert titles[0] == "a.png\ny: normal | pred: normal\nTTA: kept"
    assert [ax.title.get_color() for ax in fig.axes[:5]] == [
        "green",
        "green",
        "red",
        "green",
        "green",
    ]
    assert fig.get_suptitle() == "CAM of the predicted class"
    assert fig.axes[5].get_ylabel() == "CAM (each map min → max)"
    plain = viz.cam_grid(
        images, cams, preds=[0] * 5, flipped=[True] * 5, colorbar=False, title=None
    )
    assert len(plain.axes) == 5 and plain.axes[0].get_title() == "pred: 0\nTTA: flip"
    shown = fig.axes[3].get_images()[0].get_array()
    expected = viz.overlay_cams(images[3:4], cams[3:4])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(shown, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"^labels:"):
        viz.cam_grid(images, cams, labels=[0, 1])
    with pytest.raises(ValueError, match=r"^ncols:"):
        viz.cam_grid(images, cams, ncols=0)


def test_snapmix_figure_shows_the_draws_boxes_and_weights():
    gen = torch.Generator().manual_seed(3)
    images, cams = torch.rand(4, 3, 32, 32, generator=gen), torch.rand(4, 4, 4, generator=gen)
    labels = torch.tensor([0, 1, 2, 3])  # distinct: soft[i] holds rho_a and rho_b apart
    params = SnapMix(4, generator=torch.Generator().manual_seed(0)).sample(4, 32, 32)
    assert bool(params.apply.all())
    mixed, soft = snapmix(images, labels, cams, num_classes=4, params=params)
    index = 2
    partner = int(params.perm[index])
    assert partner != index
    fig = viz.snapmix_figure(images, labels, cams, params, index=index)
    assert len(fig.axes) == 6 and fig.axes[5].get_ylabel() == "CAM (min → max)"
    title = fig.axes[2].get_title()
    assert f"ρ_a={soft[index, index].item():.3f}" in title
    assert f"ρ_b={soft[index, partner].item():.3f}" in title
    y0, x0, y1, x1 = params.box_a[index].tolist()
    rect = next(p for p in fig.axes[0].patches if isinstance(p, Rectangle))
    assert rect.get_xy() == (x0 - 0.5, y0 - 0.5)
    assert (rect.get_width(), rect.get_height()) == (x1 - x0, y1 - y0)
    yb0, xb0, yb1, xb1 = params.box_b[index].tolist()
    rect_b = next(p for p in fig.axes[1].patches if isinstance(p, Rectangle))
    assert (rect_b.get_width(), rect_b.get_height()) == (xb1 - xb0, yb1 - yb0)
    shown_mixed = fig.axes[2].get_images()[0].get_array()
    np.testing.assert_allclose(shown_mixed, mixed[index].clamp(0, 1).permute(1, 2, 0), atol=1e-6)


def test_snapmix_figure_self_pair_splits_the_weights():
    images, cams = torch.rand(2, 3, 16, 16), torch.rand(2, 4, 4)
    labels = torch.tensor([1, 0])
    box = torch.tensor([[2, 2, 10, 12]] * 2)
    box_b = torch.tensor([[4, 0, 12, 6]] * 2)
    params = SnapMixParams(torch.tensor([0, 1]), box, box_b, torch.tensor([True, True]))
    _, soft = snapmix(images, labels, cams, num_classes=2, params=params)
    title = viz.snapmix_figure(images, labels, cams, params, index=0).axes[2].get_title()
    rho_a = float(title.split("ρ_a=")[1].split()[0])
    rho_b = float(title.split("ρ_b=")[1].split()[0])
    assert 0 < rho_a < 1 and 0 < rho_b < 1
    assert rho_a + rho_b == pytest.approx(soft[0, 1].item(), abs=2e-3)
    with pytest.raises(ValueError, match=r"^index:"):
        viz.snapmix_figure(images, labels, cams, params, index=2)


def _evidence_model() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet(num_classes=2, channels=4, stride=4, bn=False)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[-1.0, 0.5, -0.2, 0.1], [1.0, -0.5, 0.2, -0.1]]) * 4)
        model.fc.bias.zero_()
    return model.eval()


@pytest.mark.parametrize("early_exit", [True, False])
def test_tta_figure_copies_and_curve(early_exit):
    images = torch.rand(3, 3, 32, 32) + 0.1  # no pixel is 0 before masking
    tta = CAMMaskingTTA(_evidence_model(), k=9, theta=0.5, patch_size=8, early_exit=early_exit)
    res = tta.predict(images)
    index = 1
    evaluated = (~torch.isnan(res.step_probs[index])).nonzero()[:, 0] + 1
    fig = viz.tta_figure(images, res, tta, index=index, num_copies=3)
    shown = min(3, len(evaluated))
    assert len(fig.axes) == 1 + shown + 1
    steps = [0] + [int(t.split(":")[0].split()[1]) for t in (a.get_title() for a in fig.axes[1:-1])]
    assert steps[1] == int(evaluated[0]) and steps[-1] == int(evaluated[-1])
    for ax, step in zip(fig.axes[:-1], steps, strict=True):
        masked = (ax.get_images()[0].get_array() == 0).all(-1).sum()
        assert masked == step * 64  # `step` cells of 8 x 8 pixels set to mask_value 0
    line = fig.axes[-1].get_lines()[0]
    assert line.get_xdata().tolist() == [0, *evaluated.tolist()]
    p0 = res.original_probs[index, res.original_labels[index]].item()
    expected = [p0, *res.step_probs[index, evaluated - 1].tolist()]
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-6)
    theta_line = fig.axes[-1].get_lines()[1]
    assert list(theta_line.get_ydata()) == [0.5, 0.5]
    if not early_exit:
        assert len(evaluated) == 9
    with pytest.raises(ValueError, match=r"^num_copies:"):
        viz.tta_figure(images, res, tta, num_copies=0)


def test_deletion_figure_lines_and_labels():
    a = DeletionCurve(
        torch.tensor([0.0, 0.5, 1.0]), torch.tensor([[0.9, 0.4, 0.1], [0.8, 0.8, 0.8]])
    )
    b = DeletionCurve(torch.tensor([0.0, 0.25]), torch.tensor([[1.0, 0.5]]))
    fig = viz.deletion_figure([a, b], labels=["cam 0", "cam 1", "random"], title="deletion")
    assert len(fig.axes) == 1
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["cam 0: AUC 0.450", "cam 1: AUC 0.800", "random: AUC 0.750"]
    assert fig.axes[0].get_xlim() == (0.0, 1.0)  # the whole curve
    assert lines[2].get_xdata().tolist() == [0.0, 0.25]
    unnamed = viz.deletion_figure(a).axes[0]
    assert len(unnamed.get_lines()) == 2
    assert unnamed.get_legend().get_texts()[1].get_text() == "image 1: AUC 0.800"
    with pytest.raises(ValueError, match=r"^labels:"):
        viz.deletion_figure(a, labels=["only one"])
    with pytest.raises(TypeError, match=r"^curves\[0\]:"):
        viz.deletion_figure([(a.fractions, a.probs.numpy())])


def test_save_figure_writes_png_atomically(tmp_path):
    fig = viz.deletion_figure(DeletionCurve(torch.tensor([0.0, 1.0]), torch.tensor([[1.0, 0.0]])))
    target = tmp_path / "new" / "deeper" / "curve.png"
    assert viz.save_figure(fig, target, dpi=50) == target
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.stat(target).st_mode & 0o777 == 0o644
    pdf = viz.save_figure(fig, str(tmp_path / "new" / "curve.pdf"))
    assert pdf.read_bytes()[:4] == b"%PDF"
    viz.save_figure(fig, target, dpi=30)  # overwrite in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["curve.png"]  # no temp left


# -- deletion curve and AUC ----------------------------------------------------------------------


def test_deletion_curve_and_auc_hand_made():
    res = _hand_result(
        step_probs=[[0.6, 0.3, 0.1, 0.0], [0.2, 0.2, 0.2, 0.2]],
        original_probs=[[0.9, 0.1], [0.2, 0.8]],
        original_labels=[0, 1],
    )
    curve = deletion_curve(res, num_cells=16)
    torch.testing.assert_close(curve.fractions, torch.tensor([0.0, 1, 2, 3, 4]) / 16)
    torch.testing.assert_close(
        curve.probs, torch.tensor([[0.9, 0.6, 0.3, 0.1, 0.0], [0.8, 0.2, 0.2, 0.2, 0.2]])
    )
    # (0.9/2 + 0.6 + 0.3 + 0.1 + 0/2) / 4 and (0.8/2 + 0.2 * 3 + 0.2/2) / 4
    torch.testing.assert_close(deletion_auc(curve), torch.tensor([0.3625, 0.275]))
    torch.testing.assert_close(deletion_auc(res), torch.tensor([0.3625, 0.275]))
    with pytest.raises(ValueError, match=r"^num_cells:"):
        deletion_curve(res, num_cells=3)


def test_deletion_refuses_early_exit_results():
    res = _hand_result([[0.6, float("nan")]], [[0.9, 0.1]], [0])
    with pytest.raises(ValueError, match=r"^result: .*early_exit=False"):
        deletion_curve(res, num_cells=4)
    with pytest.raises(ValueError, match="early_exit=False"):
        deletion_auc(res)
    with pytest.raises(TypeError, match=r"^result:"):
        deletion_curve((res.step_probs,), num_cells=4)


@pytest.fixture(scope="module")
def resnet_run():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=2).eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    res = CAMMaskingTTA(model, k=8, patch_size=16, early_exit=False).predict(images)
    return model, images, res


def test_deletion_auc_of_a_real_tta_run(resnet_run):
    _, _, res = resnet_run
    assert not torch.isnan(res.step_probs).any()
    auc = deletion_auc(res)
    assert auc.shape == (3,) and bool(((auc >= 0) & (auc <= 1)).all())
    curve = deletion_curve(res, num_cells=16)
    assert curve.fractions[-1].item() == pytest.approx(0.5)
    ys = curve.probs.double().numpy()
    xs = curve.fractions.double().numpy()
    reference = [np.trapezoid(y, xs) / 0.5 for y in ys]
    np.testing.assert_allclose(auc.numpy(), reference, rtol=1e-6)


def test_step_probs_match_pytorch_grad_cam_deletion_metric(resnet_run):
    """pytorch-grad-cam's RemoveMostRelevantFirst (percentile threshold on a saliency map, zero
    imputation) removes exactly the top-j cells when the map is the per-cell CAM mass, as every
    pixel of a cell then shares one value: its scores must equal ``step_probs[:, j - 1]``."""
    pc = pytest.importorskip("pytorch_grad_cam.metrics.perturbation_confidence")
    targets_mod = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model, images, res = resnet_run
    cams = CAMExtractor(model).forward_frozen(images).cams
    up = F.interpolate(cams[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    cell_mass = up.view(3, 4, 16, 4, 16).sum((2, 4))
    assert len(set(cell_mass.flatten().tolist())) == 48  # no ties: the top-j set is unique
    saliency = cell_mass.repeat_interleave(16, 1).repeat_interleave(16, 2).numpy()
    targets = [targets_mod.ClassifierOutputSoftmaxTarget(int(c)) for c in res.original_labels]
    probs = []
    for j in range(1, 9):
        remove = pc.RemoveMostRelevantFirst(100 * (1 - j / 16), lambda x, m: x * m)
        metric = pc.PerturbationConfidenceMetric(remove)
        probs.append(metric(images, saliency, targets, model, return_diff=False))
    probs = np.stack(probs, axis=1)  # (B, k)
    np.testing.assert_allclose(probs, res.step_probs.numpy(), atol=1e-5)
    p0 = res.original_probs.gather(1, res.original_labels[:, None]).numpy()
    ys = np.concatenate([p0, probs], axis=1)
    xs = np.arange(9) / 16
    gc_auc = np.trapezoid(ys, xs, axis=1) / xs[-1]
    np.testing.assert_allclose(deletion_auc(res).numpy(), gc_auc, atol=1e-5)
    assert math.isfinite(float(gc_auc.sum()))


@pytest.mark.parametrize("rule", ["argmax", "relative"])
def test_tta_figure_draws_the_rules_own_line(rule):
    images = torch.rand(3, 3, 32, 32) + 0.1
    tta = CAMMaskingTTA(_evidence_model(), k=9, theta=0.5, patch_size=8, rule=rule)
    res = tta.predict(images)
    fig = viz.tta_figure(images, res, tta, index=1, num_copies=3)
    lines = fig.axes[-1].get_lines()
    if rule == "argmax":  # its votes depend on every class: no single line to draw
        assert len(lines) == 1
        assert {a.title.get_color() for a in fig.axes[:-1]} == {"black"}
    else:
        p0 = res.original_probs[1, res.original_labels[1]].item()
        np.testing.assert_allclose(lines[1].get_ydata(), [0.5 * p0, 0.5 * p0], rtol=1e-6)
