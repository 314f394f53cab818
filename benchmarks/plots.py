"""Plots of the committed benchmark results for the docs' results page.

Usage (from the repository root; ``make figures`` runs it)::

    python benchmarks/plots.py                 # reads benchmarks/results, writes docs/figures

- ``results_ablation.png``: accuracy per method and dataset from ``reproduce_cpu.json``, the bar
  at the mean over seeds, the whisker ± one standard deviation, each seed a dot;
- ``results_paired.png``: from the same rows, each method's paired difference to the baseline on
  the validation splits (what the recipe is chosen on) and on each test set, mean and 95 % CI;
- ``perf_ratios.png``: the cost ratios of ``perf_cpu.json`` (and ``perf_cuda.json`` when present)
  against their targets;
- ``results_pretrained.png`` and ``results_pretrained_paired.png``: the same two plots of the
  pretrained table (``pretrained_cpu.json``), a panel per schedule;
- ``site_a_recipe_curves.png``: the site-A baseline's validation curve at each lr of the recipe
  study (``site_a_recipe_cpu.json``), the epoch kept marked.
- ``results_adrenal3d.png`` and ``results_adrenal3d_paired.png``: the same two plots of the
  volume table (``adrenal3d_cpu.json``);
- ``results_sites.png``: the two CT sites side by side (``site_a_cpu.json`` and the 10-epoch
  rows of ``pretrained_cpu.json``): test accuracy per method, mean ± std over the paired units,
  each unit a dot, and the paper's figure for the method (its 200-epoch ResNet-50) a red diamond.

The gallery's figures come from ``benchmarks/figures.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from camkit.viz import save_figure

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"

# (key, label, target or None, True when lower is better)
PERF_KEYS = [
    ("train_step_ratio_cpe", "step + CPE / plain step", 1.05, True),
    ("train_step_ratio_snapmix", "step + SnapMix / plain", None, True),
    ("train_step_ratio_full", "full step / plain", 1.35, True),
    ("train_step_ratio_full_vs_hand", "TrainStep / hand-written step", 1.02, True),
    ("train_step_ratio_full_fast", "full step, weights from mixed CAMs / plain", 1.10, True),
    ("train_step_ratio_timm_cutmix", "timm CutMix step / plain (peer)", None, True),
    ("memory_ratio_full", "full step memory / plain", 1.25, True),
    ("cam_speedup_vs_gradcam", "CAM speed-up vs pytorch-grad-cam", 3.0, False),
    ("snapmix_op_speedup_vs_loop", "SnapMix op speed-up vs loop", 10.0, False),
    ("tta_speedup_vs_full_vote", "TTA early exit speed-up", 1.6, False),
    ("cam3d_speedup_vs_monai_gradcam", "3-D CAM speed-up vs MONAI GradCAM", None, False),
    ("cam3d_speedup_vs_monai_cam", "3-D CAM speed-up vs MONAI CAM", None, False),
]


def _accuracies(entry: dict) -> list[float]:
    values = entry.get("acc") or entry.get("accuracy") or []
    return [float(v) for v in values]


def ablation_figure(results: dict, recommended: str | None = None, title: str | None = None):
    """One panel per dataset: mean ± std accuracy per method, each seed a dot; the baseline grey,
    the recommended recipe green."""
    from matplotlib.figure import Figure

    datasets = [name for name, rows in results.items() if isinstance(rows, dict) and rows]
    fig = Figure(figsize=(4.2 * len(datasets), 3.6), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, name in zip(axes, datasets, strict=True):
        methods = [m for m, row in results[name].items() if isinstance(row, dict)]
        accs = [_accuracies(results[name][m]) for m in methods]
        means = [statistics.fmean(a) if a else float("nan") for a in accs]
        stds = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in accs]
        xs = range(len(methods))
        colors = [
            {recommended: "tab:green", "baseline": "tab:gray"}.get(m, "tab:blue") for m in methods
        ]
        ax.bar(xs, means, yerr=stds, color=colors, alpha=0.75, capsize=3)
        for x, values in zip(xs, accs, strict=True):
            ax.plot([x] * len(values), values, "k.", markersize=4)
        baseline = means[methods.index("baseline")] if "baseline" in methods else None
        if baseline is not None:
            ax.axhline(baseline, color="tab:gray", linestyle="--", linewidth=1)
        ax.set_xticks(list(xs), methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("test accuracy (%)")
        low = min((v for a in accs for v in a), default=0.0)
        ax.set_ylim(max(0.0, low - 10), min(100.0, max(means) + max(stds) + 8))
    fig.suptitle(
        (title or "Ablations from scratch on the CPU")
        + "\nmean ± std over seeds, dots = seeds"
        + (
            "; green = the recommended recipe"
            if recommended not in (None, "baseline")
            else "; the recommendation: plain training (grey)"
            if recommended
            else ""
        ),
        fontsize=10,
    )
    return fig


def pretrained_results(rows: list[dict]) -> dict:
    """The pretrained table as ``{panel: {method: {"acc": [...]}}}``, a panel per schedule."""
    out: dict = {}
    for r in rows:
        panel = f"site-B, {r['epochs']} epochs (test)"
        out.setdefault(panel, {}).setdefault(r["method"], {}).setdefault("acc", []).append(r["acc"])
    return dict(sorted(out.items(), key=lambda kv: int(kv[0].split(", ")[1].split()[0])))


def perf_figure(runs: dict[str, dict]):
    """Horizontal bars of each measured ratio, one colour per device, the target as a tick."""
    from matplotlib.figure import Figure

    rows = [k for k in PERF_KEYS if any(k[0] in r for r in runs.values())]
    fig = Figure(figsize=(7.5, 0.45 * len(rows) * len(runs) + 1.2), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / max(1, len(runs))
    for i, (device, run) in enumerate(runs.items()):
        ys = [r + i * height for r in range(len(rows))]
        values = [float(run.get(key, float("nan"))) for key, *_ in rows]
        ax.barh(ys, values, height=height, label=device)
        for y, v in zip(ys, values, strict=True):
            if v == v:
                ax.text(v, y, f" {v:.2f}", va="center", fontsize=7)
    for r, (_, _, target, lower) in enumerate(rows):
        if target is not None:
            mid = r + 0.4 - height / 2
            ax.plot([target, target], [mid - 0.4, mid + 0.4], "r-", linewidth=1.5)
            ax.text(
                target,
                mid - 0.3,
                (" ≤ " if lower else " ≥ ") + f"{target:g}",
                color="r",
                fontsize=7,
                ha="left",
            )
    ax.set_yticks(
        [r + 0.4 - height / 2 for r in range(len(rows))], [k[1] for k in rows], fontsize=8
    )
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ratio (log scale); red: the target")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Measured costs and speed-ups (benchmarks/perf.py)")
    return fig


def paired_figure(rows: list[dict], recommended: str | None, columns: int | None = None):
    """Each method's paired difference to the baseline (mean and 95 % CI; dots = seeds), on the
    validation split the recipe is chosen on and on each test set, from ``reproduce_cpu.json``;
    ``columns`` panels a row (default: all in one row)."""
    from matplotlib.figure import Figure

    from benchmarks.runner.report import paired_ci

    acc: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for r in rows:
        if r["method"].startswith("full"):  # the snapmix_cpe model again, with the TTA
            continue
        val_of = "digits" if r["dataset"].startswith("mnist") else r["dataset"]
        for panel, key in (((val_of, "validation"), "val_acc"), ((r["dataset"], "test"), "acc")):
            if key in r:
                acc.setdefault(panel, {}).setdefault(r["method"], {})[r["seed"]] = r[key]
    panels = [p for p in acc if "baseline" in acc[p]]
    methods = list(dict.fromkeys(m for p in panels for m in acc[p] if m != "baseline"))
    cols = min(columns or len(panels), len(panels))
    grid = -(-len(panels) // cols)
    fig = Figure(
        figsize=(3.4 * cols + 1.8, grid * (0.5 * len(methods) + 1.4) + 0.6), layout="constrained"
    )
    axes = fig.subplots(grid, cols, sharey=True, squeeze=False).flatten()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels, strict=False):
        base = acc[panel]["baseline"]
        for y, m in enumerate(methods):
            seeds = sorted(set(acc[panel].get(m, {})) & set(base))
            diffs = [acc[panel][m][s] - base[s] for s in seeds]
            if not diffs:
                continue
            mean, lo, hi = paired_ci(diffs)
            color = "tab:green" if m == recommended else "tab:blue"
            if lo == lo:
                ax.plot([lo, hi], [y, y], color=color, linewidth=2, alpha=0.6)
            ax.plot(diffs, [y] * len(diffs), "k.", markersize=4)
            ax.plot([mean], [y], "o", color=color)
        ax.axvline(0.0, color="tab:gray", linestyle="--", linewidth=1)
        ax.set_title(f"{panel[0]} {panel[1]}", fontsize=9)
        ax.set_xlabel("acc − baseline (points)", fontsize=8)
        ax.set_xlim(*_clipped(ax.get_xlim(), 40.0))
    axes[0].set_yticks(range(len(methods)), methods, fontsize=8)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.tick_params(labelsize=8)
    chosen = (
        "green = the recommended recipe, chosen on the validation panels only"
        if recommended not in (None, "baseline")
        else "none beats the baseline on every validation panel: plain training is recommended"
    )
    fig.suptitle(
        f"Paired difference to the baseline, mean and 95 % CI over seeds\n(dots = seeds; {chosen})",
        fontsize=10,
    )
    return fig


def _clipped(limits: tuple[float, float], span: float) -> tuple[float, float]:
    """At most ``span`` points on either side of 0 (one wild CI would flatten the others; the
    collapsed runs of a paper-form CPE lose up to 25 points, so 40 keeps every interval)."""
    return max(limits[0], -span), min(limits[1], span)


def shrink_png(src: Path, dst: Path, max_width: int = 720) -> Path:
    """Copy a figure into the docs as a small PNG: at most ``max_width`` px, 256 colours."""
    from io import BytesIO

    from PIL import Image

    from benchmarks.runner.io import atomic_write_bytes

    image = Image.open(src).convert("RGB")
    if image.width > max_width:
        image = image.resize(
            (max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS
        )
    buffer = BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        buffer, format="PNG", optimize=True
    )
    return atomic_write_bytes(buffer.getvalue(), dst)


def curve_figure(rows: list[dict], key: str, title: str):
    """Validation accuracy after each epoch, one line per row (labelled by ``settings[key]``);
    the epoch each run kept is marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    schedules = len({r.get("epochs") for r in rows}) > 1
    for r in sorted(rows, key=lambda r: (r["settings"][key], -r.get("epochs", 0))):
        curve = r.get("val_curve") or []
        epochs = range(1, len(curve) + 1)
        label = f"{key} {r['settings'][key]:g}" + (f", {r['epochs']} epochs" if schedules else "")
        (line,) = ax.plot(epochs, curve, marker=".", label=label)
        if 1 <= r.get("best_epoch", 0) <= len(curve):
            ax.plot([r["best_epoch"]], [curve[r["best_epoch"] - 1]], "o", color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title(title + "\n(circle: the epoch kept, chosen on validation)", fontsize=10)
    return fig


def sites_figure(sites: dict[str, list[dict]], paper: dict, recommended: str | None = None):
    """One panel per site: each method's test accuracy, mean ± std over its units, each unit a
    dot, and the paper's accuracy for the same method a red diamond (where the paper has one)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * len(sites), 3.8), layout="constrained")
    axes = fig.subplots(1, len(sites), squeeze=False)[0]
    for ax, (site, rows) in zip(axes, sites.items(), strict=True):
        accs: dict[str, list[float]] = {}
        for r in rows:
            accs.setdefault(r["method"], []).append(float(r["acc"]))
        methods = list(accs)
        means = [statistics.fmean(accs[m]) for m in methods]
        stds = [statistics.stdev(accs[m]) if len(accs[m]) > 1 else 0.0 for m in methods]
        colors = [
            {recommended: "tab:green", "baseline": "tab:gray"}.get(m, "tab:blue") for m in methods
        ]
        xs = range(len(methods))
        ax.bar(xs, means, yerr=stds, color=colors, alpha=0.75, capsize=3)
        for x, m in zip(xs, methods, strict=True):
            ax.plot([x] * len(accs[m]), accs[m], "k.", markersize=4)
            reported = paper.get(site, {}).get(m)
            if reported is not None:
                ax.plot([x], [reported[0]], "D", color="tab:red", markersize=6)
        ax.set_xticks(list(xs), methods, rotation=45, ha="right", fontsize=8)
        sizes = sorted({len(v) for v in accs.values()}) or [0]
        units = f"{sizes[0]}–{sizes[-1]}" if len(sizes) > 1 else f"{sizes[0]}"
        ax.set_title(f"{site} ({units} paired units)", fontsize=10)
        ax.set_ylabel("test accuracy (%)")
        low = min((v for a in accs.values() for v in a), default=0.0)
        ax.set_ylim(max(0.0, low - 8), 100.0)
    fig.suptitle(
        "The two CT sites, EfficientNet-Lite0 from ImageNet at 128² on the CPU\n"
        "bars: mean ± std, dots: units; "
        "red diamonds: the paper's accuracy (ResNet-50, 224², 200 epochs)",
        fontsize=10,
    )
    return fig


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=FIGURES)
    args = parser.parse_args(argv)
    written = []
    reproduce = args.results / "reproduce_cpu.json"
    recommended = None
    if reproduce.is_file():
        data = json.loads(reproduce.read_text())
        if "rows" in data:  # reproduce.py's merged rows
            from benchmarks.reproduce import nest

            recommended = data.get("recommended")
            fig = paired_figure(data["rows"], recommended)
            written.append(save_figure(fig, args.out / "results_paired.png", dpi=90))
            data = nest(data["rows"])
        fig = ablation_figure(data, recommended)
        written.append(save_figure(fig, args.out / "results_ablation.png", dpi=90))
    pretrained = args.results / "pretrained_cpu.json"
    if pretrained.is_file():
        data = json.loads(pretrained.read_text())
        chosen = data.get("recommended")
        rows = [r for r in data["rows"] if r["dataset"] == "site-B"]
        fig = ablation_figure(pretrained_results(rows), chosen, "Site B fine-tuned from ImageNet")
        written.append(save_figure(fig, args.out / "results_pretrained.png", dpi=90))
        panels = [{**r, "dataset": f"site-B {r['epochs']} ep"} for r in rows]
        fig = paired_figure(panels, chosen, columns=2)
        written.append(save_figure(fig, args.out / "results_pretrained_paired.png", dpi=90))
    recipe = args.results / "site_a_recipe_cpu.json"
    if recipe.is_file():
        rows = json.loads(recipe.read_text())["rows"]
        title = "Site A: the baseline's validation curve (fold 0), per lr"
        fig = curve_figure(rows, "lr", title)
        written.append(save_figure(fig, args.out / "site_a_recipe_curves.png", dpi=90))
    volumes = args.results / "adrenal3d_cpu.json"
    if volumes.is_file():
        from benchmarks.tables.rows import nest

        rows = json.loads(volumes.read_text())["rows"]
        title = "AdrenalMNIST3D (masks, 28³), 3-D ResNet"
        fig = ablation_figure(nest(rows), None, title)
        written.append(save_figure(fig, args.out / "results_adrenal3d.png", dpi=90))
        fig = paired_figure(rows, None)
        written.append(save_figure(fig, args.out / "results_adrenal3d_paired.png", dpi=90))
    site_a = args.results / "site_a_cpu.json"
    if site_a.is_file() and pretrained.is_file():
        from benchmarks.reproduce import PAPER

        data = json.loads(site_a.read_text())
        main_rows = [r for r in data["rows"] if r["settings"].get("split") == "patient-blocks:5"]
        site_b = json.loads(pretrained.read_text())["rows"]
        sites = {
            "site-A": main_rows,
            "site-B": [r for r in site_b if r["dataset"] == "site-B" and r["epochs"] == 10],
        }
        fig = sites_figure(sites, PAPER, data.get("recommended"))
        written.append(save_figure(fig, args.out / "results_sites.png", dpi=90))
    runs = {}
    for device in ("cpu", "cuda"):
        path = args.results / f"perf_{device}.json"
        if path.is_file():
            runs[device.upper()] = json.loads(path.read_text())
    if runs:
        written.append(save_figure(perf_figure(runs), args.out / "perf_ratios.png", dpi=90))
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1024} kB)")
    return written


if __name__ == "__main__":
    main()
