"""The ``scratch`` table's markdown (`reproduce_cpu.md`): the from-scratch ablations."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import torch

from benchmarks.runner.io import atomic_write_text
from benchmarks.tables.rows import PAPER, fmt, nest, paired_cell, shared_settings
from benchmarks.tables.sections import recommended_section, tta_section


def write_markdown(rows: list[dict], path: Path, chosen: dict) -> None:
    settings = {d: shared_settings(d, [r for r in rows if r["dataset"] == d]) for d in nest(rows)}
    results = nest(rows)
    lines = [
        "# CPU-scale reproduction of the paper's ablations",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "Commands (each run resumes or is re-evaluated when rerun):",
        "",
        "    python benchmarks/reproduce.py --table scratch --datasets site-B digits --publish",
        "",
        "All models are trained **from scratch** (no pretrained weights are reachable here), so",
        "the absolute numbers are far below the paper's ImageNet-pretrained ResNet-50 (200",
        "epochs, 224²); compare the ordering of the rows. Metrics in percent on the test split,",
        "mean ± std over the seeds listed per row; `val acc`: the validation split's, which is",
        "all the recommendation reads. Each table lists the settings all of its rows share.",
        "`cpe` is the paper's Eq. 1; `*_norm` rows use the CPE loss with L2-normalised cells and",
        "temperature 0.1 instead of its raw dot products; `*_w01` rows also weigh it 0.1 (λ)",
        "instead of 1. `snapmix_fast` = SnapMix with the label weights read from the CAMs of the",
        "mixed images (no extra forward). `full*` = the `snapmix_cpe*` model evaluated with the",
        "paper's CAM-masking TTA (k = 31, θ = 0.2). `Δ acc`: the mean difference to the baseline",
        "over the seeds both have, with its 95 % t-interval.",
        "",
        "- site-B: COVID-CT official split (train 425, val 118, test 203 images), the epoch chosen",
        "  on val; TTA cells scaled from the paper's 8 pixels at 224². Precision, recall and F1",
        "  with COVID as the positive class. `best val epochs`: the epoch val selected per seed.",
        "- digits (`mnist-usps`, `mnist-mnistm`): the runner's `digits` dataset — resnet10t,",
        "  output stride 16, 32², 10,000 MNIST digits, 5 epochs (the last is reported); val is",
        "  5,000 other MNIST digits; tests the full USPS test set (framed like MNIST) and the",
        "  MNIST-M test set. The same models for both targets. These rows were measured by",
        "  `benchmarks/evidence.py` (2026-12-01), whose protocol the runner reproduces bit for",
        "  bit (`tests/test_runner.py`); precision etc. were not recorded then.",
        "",
    ]
    if chosen.get("recommended"):
        lines += recommended_section(rows, chosen)
    elif chosen:
        lines += [
            "## Recommended recipe",
            "",
            f"Not chosen: {chosen['recommended_detail']['reason']}.",
            "",
        ]
    for dataset, methods in results.items():
        shared = ", ".join(f"{k} {v}" for k, v in settings[dataset].items())
        lines += [
            f"## {dataset}",
            "",
            f"Settings: {shared}.",
            "",
            "| method | seeds | epochs | best val epochs | val acc | accuracy "
            "| Δ acc vs baseline [95 % CI] | precision | recall | F1 | train s/run | paper acc "
            "| paper F1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        base = dict(
            zip(
                methods.get("baseline", {}).get("seeds", []),
                methods.get("baseline", {}).get("acc", []),
                strict=True,
            )
        )
        for method, entry in methods.items():
            paper = PAPER.get(dataset, {}).get(method, (None, None))  # variants: none
            cells = [fmt(entry.get(k, [])) for k in ("val_acc", "acc", "precision", "recall", "f1")]
            cells.insert(2, paired_cell(entry, base) if method != "baseline" else "—")
            seconds = entry.get("train_seconds", [])
            epochs = sorted(set(entry.get("epochs", [])))
            name = f"**{method}**" if chosen.get("recommended") == method else method
            lines.append(
                f"| {name} | {len(entry.get('acc', []))} | "
                + (", ".join(map(str, epochs)) or "?")
                + " | "
                + (", ".join(map(str, entry.get("best_epoch", []))) or "?")
                + " | "
                + " | ".join(cells)
                + f" | {statistics.fmean(seconds):.0f} | "
                + " | ".join("-" if p is None else f"{p:.2f}" for p in paper)
                + " |"
            )
        lines.append("")
    lines += tta_section(rows)
    hours = sum(  # a model serving two rows (full*, the second digits target) counts once
        r["train_seconds"]
        for r in rows
        if r["dataset"] != "mnist-mnistm" and not r["method"].startswith("full")
    )
    lines += [
        "## Training time of each run",
        "",
        f"CPU time spent training all the models above: {hours / 3600:.2f} h (evaluation not "
        "counted; a model that serves two rows is counted once).",
        "",
        "| dataset | method | seed | train seconds |",
        "|---|---|---|---|",
    ]
    for dataset, methods in results.items():
        for method, entry in methods.items():
            for seed, seconds in zip(
                entry.get("seeds", []), entry.get("train_seconds", []), strict=True
            ):
                lines.append(f"| {dataset} | {method} | {seed} | {seconds:.0f} |")
    lines.append("")
    atomic_write_text("\n".join(lines), path)
