"""The benchmarks run end to end (``--smoke``) and compare against correct reference code.

No timing is asserted here: the numbers are benchmarks, reported by ``benchmarks/perf.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.reference import (
    loop_sample_params,
    loop_snapmix_apply,
    params_to_lists,
    released_tta,
)
from camkit import CAMMaskingTTA, SnapMix, snapmix
from tests.helpers import TinyNet

ROOT = Path(__file__).resolve().parent.parent

FLOAT_KEYS = (
    "train_step_ratio_cpe",
    "train_step_ratio_snapmix",
    "train_step_ratio_full",
    "train_step_ratio_timm_cutmix",
    "cam_speedup_vs_gradcam",
    "cam_corr_vs_gradcam",
    "snapmix_op_speedup_vs_loop",
    "tta_forwards_per_image",
    "tta_speedup_vs_full_vote",
    "tta_speedup_vs_released",
    "memory_ratio_full",
    "cam3d_speedup_vs_monai_cam",
    "cam3d_speedup_vs_monai_gradcam",
    "cam3d_corr_vs_monai_cam",
    "cam3d_corr_vs_monai_gradcam",
    "snapmix3d_op_ratio_vs_clone",
    "snapmix3d_op_speedup_vs_loop",
)


@pytest.mark.slow
def test_smoke_run_writes_all_keys(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "perf.py"), "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "perf_cpu_smoke.json").read_text())
    for key in FLOAT_KEYS:
        value = results[key]
        assert isinstance(value, float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)
        assert value > 0, (key, value)
    assert isinstance(results["tta_labels_identical"], bool)
    assert -1.0 <= results["cam_corr_vs_gradcam"] <= 1.0 + 1e-9
    assert results["cam3d_corr_vs_monai_cam"] >= 0.999  # the same maps as MONAI's
    assert results["meta"]["smoke"] is True
    md = (tmp_path / "perf_cpu_smoke.md").read_text()
    assert "memory_ratio_full" in md and "python benchmarks/perf.py --smoke" in md


@pytest.mark.parametrize("box_mode", ["batch", "sample"])
def test_loop_snapmix_reference_matches_camkit(box_mode):
    """The benchmark's per-sample loop computes what camkit's batched op computes."""
    gen = torch.Generator().manual_seed(0)
    b, h, w, k = 9, 40, 36, 3
    images = torch.randn(b, 3, h, w, generator=gen)
    labels = torch.randint(0, k, (b,), generator=gen)
    cams = torch.randn(b, 5, 4, generator=gen)
    cams[0] = 1.5  # a constant map: the authors' fallback (box A's area ratios)
    mixed_any = False
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        params = SnapMix(k, prob=0.8, generator=gen, box_mode=box_mode).sample(b, h, w)
        mixed, soft = snapmix(images, labels, cams, k, params=params)
        lists = params_to_lists(params)
        ref_mixed, ref_soft = loop_snapmix_apply(
            images, labels, cams, *lists, k, constant_cam="released"
        )
        # float32 both ways (camkit's grid_sample vs the loop's F.interpolate): rounding only
        torch.testing.assert_close(ref_mixed, mixed, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ref_soft, soft, rtol=1e-5, atol=1e-5)
        mixed_any = mixed_any or not torch.equal(mixed, images)
    assert mixed_any  # the draws did mix something


def test_loop_sampler_draws_valid_boxes():
    rng = np.random.default_rng(0)
    for mode in ("batch", "sample"):
        perm, box_a, box_b, apply = loop_sample_params(16, 30, 20, rng, box_mode=mode)
        assert sorted(perm) == list(range(16))
        for (y0, x0, y1, x1), ok in zip(box_a, apply, strict=True):
            assert 0 <= y0 <= y1 <= 30 and 0 <= x0 <= x1 <= 20
            assert not ok or (y1 > y0 and x1 > x0)
        assert all(0 <= v <= 30 for box in box_b for v in box)


def test_released_tta_reference_matches_camkit_full_vote():
    """The released protocol (one image at a time, autograd on) gives camkit's labels."""
    torch.manual_seed(0)
    # local class evidence (as in test_tta.py), so that masking cells moves the predictions
    model = TinyNet(num_classes=2, channels=4, stride=4, bn=False)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[-1.0, 0.5, -0.2, 0.1], [1.0, -0.5, 0.2, -0.1]]) * 4)
        model.fc.bias.zero_()
    model.eval()
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = CAMMaskingTTA(model, k=15, theta=0.4, patch_size=4, early_exit=False).predict(images)
    assert 0 < int(result.flipped.sum()) < 8  # flips and keeps, with split votes
    assert set(result.votes_against.tolist()) - {0, 15}
    got = released_tta(model, images, k=15, theta=0.4, patch_size=4)
    assert torch.equal(got, result.labels)


def _result_rows(epochs: int = 20) -> list[dict]:
    """Rows as reproduce.py writes them: two datasets, three methods, three seeds."""
    rows = []
    for d, dataset in enumerate(("site-B", "mnist-usps")):
        for m, method in enumerate(("baseline", "snapmix", "cpe_norm")):
            for seed in range(3):
                acc = 60.0 + 10 * d + 2.0 * m + seed * (1 + m)  # paired differences vary
                rows.append(dict(dataset=dataset, method=method, seed=seed, acc=acc,
                                 val_acc=acc + 1, epochs=epochs))  # fmt: skip
    return rows


def test_result_plots_show_the_numbers_of_the_results_files(tmp_path):
    import statistics

    from benchmarks import plots
    from benchmarks.reproduce import nest

    rows = _result_rows()
    fig = plots.ablation_figure(nest(rows))
    heights = [patch.get_height() for patch in fig.axes[0].patches]
    by: dict = {}
    for r in rows:
        if r["dataset"] == "site-B":
            by.setdefault(r["method"], []).append(r["acc"])
    assert heights == pytest.approx([statistics.fmean(v) for v in by.values()])
    results = tmp_path / "results"
    results.mkdir()
    (results / "reproduce_cpu.json").write_text(json.dumps({"rows": rows}))
    written = plots.main(["--results", str(results), "--out", str(tmp_path)])
    assert {p.name for p in written} == {"results_ablation.png", "results_paired.png"}
    pretrained = [r for r in _result_rows(10) + _result_rows(30) if r["dataset"] == "site-B"]
    data = {"rows": pretrained, "recommended": "cpe_norm"}
    (results / "pretrained_cpu.json").write_text(json.dumps(data))
    written = plots.main(["--results", str(results), "--out", str(tmp_path)])
    assert {"results_pretrained.png", "results_pretrained_paired.png"} <= {p.name for p in written}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    fig = plots.paired_figure(
        [{**r, "dataset": f"site-B {r['epochs']} ep"} for r in pretrained], "cpe_norm", columns=2
    )
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == [
        f"site-B {e} ep {split}" for e in (10, 30) for split in ("validation", "test")
    ]


def test_paired_plot_marks_each_methods_mean_paired_difference():
    import statistics

    from benchmarks import plots

    data = {"rows": _result_rows(), "recommended": "cpe_norm"}
    fig = plots.paired_figure(data["rows"], data["recommended"])
    titles = [ax.get_title() for ax in fig.axes]
    assert "mnist-usps test" in titles and "site-B validation" in titles
    usps = fig.axes[titles.index("mnist-usps test")]
    means = [line.get_xdata()[0] for line in usps.lines if line.get_marker() == "o"]
    by: dict = {}
    for r in data["rows"]:
        if r["dataset"] == "mnist-usps":
            by.setdefault(r["method"], {})[r["seed"]] = r["acc"]
    expected = [
        statistics.fmean(by[m][s] - by["baseline"][s] for s in by[m] if s in by["baseline"])
        for m in by
        if m != "baseline"
    ]
    assert sorted(means) == pytest.approx(sorted(expected))
    assert sorted(means) == pytest.approx([3.0, 6.0])  # snapmix: 2 + seed, cpe_norm: 4 + 2·seed


def test_a_partial_perf_run_keeps_the_other_benchmarks(tmp_path):
    """``perf.py --only train`` into a results folder replaces the train numbers only."""
    from benchmarks.perfcases.report import merge_previous

    def run(benchmarks, values, command):
        meta = {"command": command, "smoke": False, "benchmarks": benchmarks, "machine": {}}
        return {"meta": meta, **values, "details": {b: {"from": command} for b in benchmarks}}

    path = tmp_path / "perf_cpu.json"
    first = merge_previous(
        run(["train", "cam"], {"train_step_ratio_full": 1.4, "cam_speedup_vs_gradcam": 3.1}, "a"),
        path,
    )
    path.write_text(json.dumps(first))
    second = merge_previous(run(["train"], {"train_step_ratio_full": 1.3}, "b"), path)
    assert second["train_step_ratio_full"] == 1.3
    assert second["cam_speedup_vs_gradcam"] == 3.1  # kept, not lost
    assert second["details"] == {"train": {"from": "b"}, "cam": {"from": "a"}}
    assert second["meta"]["runs"]["cam"]["command"] == "a"
    assert second["meta"]["runs"]["train"]["command"] == "b"
    assert second["meta"]["benchmarks"] == ["cam", "train"]


def test_curve_plot_draws_each_runs_validation_curve_and_marks_the_kept_epoch(tmp_path):
    from benchmarks import plots

    rows = [
        {"settings": {"lr": lr}, "val_curve": curve, "best_epoch": best}
        for lr, curve, best in ((0.1, [50.0, 70.0, 65.0], 2), (0.01, [40.0, 45.0, 60.0], 3))
    ]
    fig = plots.curve_figure(rows, "lr", "t")
    lines = fig.axes[0].get_lines()
    assert [list(line.get_ydata()) for line in lines] == [
        [40.0, 45.0, 60.0],
        [60.0],
        [50.0, 70.0, 65.0],
        [70.0],
    ]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["lr 0.01", "lr 0.1"]
    results = tmp_path / "results"
    results.mkdir()
    (results / "site_a_recipe_cpu.json").write_text(json.dumps({"rows": rows}))
    written = plots.main(["--results", str(results), "--out", str(tmp_path)])
    assert [p.name for p in written] == ["site_a_recipe_curves.png"]


def test_sites_plot_shows_each_methods_units_and_the_papers_figure(tmp_path):
    from matplotlib.colors import to_rgba

    from benchmarks import plots

    def row(site, method, seed, acc, split=None):
        settings = {"split": split} if split else {}
        return {"dataset": site, "method": method, "seed": seed, "acc": acc, "epochs": 10,
                "settings": settings}  # fmt: skip

    site_a = [row("site-A", m, s, a + s, "patient-blocks:5")
              for m, a in (("baseline", 70.0), ("snapmix", 80.0)) for s in range(3)]  # fmt: skip
    site_b = [row("site-B", "baseline", s, 60.0 + 2 * s) for s in range(2)]
    site_b.append(row("site-B", "cutmix", 0, 55.0))  # a method with fewer units
    paper = {"site-A": {"snapmix": (92.38, 91.92)}, "site-B": {"baseline": (85.23, 84.51)}}
    fig = plots.sites_figure({"site-A": site_a, "site-B": site_b}, paper, "baseline")
    ax_a, ax_b = fig.axes
    assert [b.get_height() for b in ax_a.patches] == [71.0, 81.0]  # the means over the units
    # plain training recommended: the baseline stays grey, the other bars blue
    colours = [to_rgba("tab:gray", 0.75), to_rgba("tab:blue", 0.75)]
    assert [tuple(b.get_facecolor()) for b in ax_a.patches] == colours
    lines = [(list(ln.get_xdata()), list(ln.get_ydata()), ln.get_marker()) for ln in ax_a.lines]
    assert ([1], [92.38], "D") in lines  # the paper's SnapMix on site A, at SnapMix's bar
    assert ([0, 0, 0], [70.0, 71.0, 72.0], ".") in lines  # every unit a dot
    assert not any(m == "D" and x == [0] for x, _, m in lines)  # no paper figure: no diamond
    assert ax_a.get_title() == "site-A (3 paired units)"
    assert [b.get_height() for b in ax_b.patches] == [61.0, 55.0]
    assert ax_b.get_title() == "site-B (1–2 paired units)"
    assert ([0], [85.23], "D") in [
        (list(ln.get_xdata()), list(ln.get_ydata()), ln.get_marker()) for ln in ax_b.lines
    ]
    # plots.main draws it from the two results files, the leaking split's rows left out
    results = tmp_path / "results"
    results.mkdir()
    leaky = row("site-A", "baseline", 0, 99.0, "leaky-random:5")
    (results / "site_a_cpu.json").write_text(json.dumps({"rows": [*site_a, leaky]}))
    (results / "pretrained_cpu.json").write_text(json.dumps({"rows": site_b}))
    written = plots.main(["--results", str(results), "--out", str(tmp_path)])
    assert "results_sites.png" in [p.name for p in written]


def _tiny_monai_densenet3d():
    """A MONAI 3-D DenseNet of DenseNet121's layer names and stride 32, a thousandth the size."""
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = nets.DenseNet(
        spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
        block_config=(1, 1, 1, 1),
    )  # fmt: skip
    return net.eval()


def test_cam3d_contenders_return_the_same_maps_as_monai():
    """The 3-D CAM row's contenders: camkit's maps, MONAI's CAM and GradCAM as documented (its
    normaliser maps (min, max) to (1, 0)), on one class for the batch, agree to r ≥ 0.999."""
    from benchmarks.perfcases.volumes import cam3d_agreement, cam3d_contenders

    model = _tiny_monai_densenet3d()
    x = torch.randn(2, 1, 64, 64, 64, generator=torch.Generator().manual_seed(1))
    outputs: dict = {}
    fns = cam3d_contenders(model, x, 1, outputs)
    assert set(fns) == {"camkit", "monai_cam", "monai_gradcam", "forward_only"}
    for fn in fns.values():
        fn()
    assert outputs["camkit_raw"].shape == (2, 2, 2, 2)  # 64³ / 32: a 2³ map
    for name in ("camkit", "monai_cam", "monai_gradcam"):
        assert outputs[name].shape == (2, 64, 64, 64), name
    table = cam3d_agreement(outputs, (64, 64, 64))
    for key in ("corr_vs_monai_cam", "corr_vs_monai_gradcam"):
        assert table[key]["maps"] == 2 and table[key]["min"] >= 0.999, (key, table[key])
    # the model the row times is left as it was: MONAI's hooks sit on copies
    assert not model._forward_hooks and not model.class_layers.relu._forward_hooks


def test_the_volume_rows_are_kept_and_replaced_by_their_own_runs_and_reported(tmp_path):
    """``--only cam`` keeps the ``cam3d_*`` numbers, ``--only cam3d`` replaces only them; the
    report shows their tables."""
    from benchmarks.perfcases.report import merge_previous, write_report

    def run(benchmarks, values, details):
        meta = {"command": "c", "smoke": False, "benchmarks": benchmarks, "machine": {}}
        return {"meta": meta, **values, "details": details}

    cam3d = {
        "densenet121_3d_64cube_b2": {
            "camkit": {"median_ms": 900.0},
            "monai_gradcam": {"median_ms": 2700.0, "ratio": 3.0, "ratio_q1": 2.9, "ratio_q3": 3.1},
            "corr_vs_monai_gradcam": {"min": 1.0, "mean": 1.0, "maps": 2},
            "corr_vs_monai_cam": {"min": 1.0, "mean": 1.0, "maps": 2},
        }
    }
    snap3d = {"camkit": {"median_ms": 20.0}, "clone": {"median_ms": 10.0, "ratio": 0.5}}
    path = tmp_path / "perf_cpu.json"
    first = run(
        ["cam", "cam3d", "snapmix3d"],
        {"cam_speedup_vs_gradcam": 3.1, "cam3d_speedup_vs_monai_gradcam": 3.0,
         "snapmix3d_op_ratio_vs_clone": 2.0},
        {"cam": {}, "cam3d": cam3d, "snapmix3d": snap3d},
    )  # fmt: skip
    path.write_text(json.dumps(merge_previous(first, path)))
    second = merge_previous(run(["cam"], {"cam_speedup_vs_gradcam": 4.0}, {"cam": {}}), path)
    assert second["cam_speedup_vs_gradcam"] == 4.0
    assert second["cam3d_speedup_vs_monai_gradcam"] == 3.0  # a 2-D run keeps the 3-D rows
    assert second["details"]["cam3d"] == cam3d
    path.write_text(json.dumps(second))
    third = merge_previous(
        run(["cam3d"], {"cam3d_speedup_vs_monai_gradcam": 2.5}, {"cam3d": cam3d}), path
    )
    assert third["cam3d_speedup_vs_monai_gradcam"] == 2.5
    assert third["cam_speedup_vs_gradcam"] == 4.0 and third["snapmix3d_op_ratio_vs_clone"] == 2.0
    machine = {k: "x" for k in ("platform", "processor", "cpu_count", "torch_threads", "torch")}
    machine.update({"timm": "x", "grad-cam": "x", "torchcam": "x"})
    report = run(["cam3d", "snapmix3d"], {"cam3d_corr_vs_monai_cam": 0.9995},
                 {"cam3d": cam3d, "snapmix3d": snap3d})  # fmt: skip
    report["meta"].update(device="cpu", machine=machine, wall_seconds=1.0)
    _, md = write_report(report, tmp_path / "out", "perf_cpu")
    text = md.read_text()
    assert "| `cam3d_corr_vs_monai_cam` | 0.9995 | ≥ 0.999 | yes |" in text
    assert "| monai_gradcam | 2700.0 | 3.00 |" in text
    assert "## SnapMix op on volumes" in text and "| clone | 10.0 | 0.500 |" in text
