"""The site-A tables' markdown: every method on the patient-block folds (`site_a_cpu.md`) and
the recipe study (`site_a_recipe_cpu.md`)."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import torch

from benchmarks.runner.io import atomic_write_text
from benchmarks.runner.methods import METHODS
from benchmarks.runner.report import by_seed, ci_cell, mean_sd, paired_diffs
from benchmarks.tables.rows import PAPER, _mean_sd, _split, shared_settings
from benchmarks.tables.sections import method_table, recommended_section, tta_section


def site_a_markdown(rows: list[dict], path: Path, chosen: dict) -> None:
    """The site-A table: every method on the patient-block folds, the leaking split's baseline,
    how validation and test relate, the vote rules, the CPU time."""
    blocks = [r for r in rows if r["dataset"] == "site-A" and _split(r).startswith("patient")]
    leaky = [r for r in rows if r["dataset"] == "site-A" and _split(r).startswith("leaky")]
    shared = shared_settings("site-A", blocks) if blocks else {}
    keep = ("model", "pretrained", "img_size", "epochs", "batch_size", "lr", "pretrained_lr_scale")
    keep += ("weight_decay", "head_init", "schedule", "selection", "split", "tta_k")
    lines = [
        "# Site A fine-tuned from ImageNet weights, patients kept apart (CPU)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "    python benchmarks/reproduce.py --table site-a --publish",
        "",
        "The SARS-CoV-2 CT-scan dataset (2,481 slices), split by `camkit.datasets.SARSCoV2CT`:",
        "each class in numeric file order cut into 5 contiguous blocks (consecutive numbers are",
        "one patient's slices, so only a patient straddling a block edge can be shared); seed `s`",
        "tests block `s` and validates on block `s + 1` (mod 5), so the 5 seeds are 5 folds and",
        "every image is tested once. Train 1,488–1,489, validation 495–497, test 495–497 images.",
        "The same fine-tuning as site B's table (EfficientNet-Lite0 from ImageNet, 128²); the lr",
        "and the schedule were chosen on the baseline's validation accuracy of fold 0 before any",
        "method ran (`site_a_recipe_cpu.md`). Test metrics in percent, mean ± std over the folds;",
        "`Δ`: mean paired difference over the folds both rows have, with its 95 % t-interval.",
        "",
        "Settings of every row: "
        + ", ".join(f"{k} {shared[k]}" for k in keep if k in shared)
        + ".",
        "",
        *(recommended_section(blocks, chosen) if chosen.get("recommended") else []),
        "## Every method, 5 patient-block folds",
        "",
        *(method_table(blocks, chosen, PAPER["site-A"]) if blocks else ["(not run yet)"]),
        "",
    ]
    base = [r for r in blocks if r["method"] == "baseline"]
    if leaky and base:
        cells = []
        for key in ("val_acc", "acc"):
            a = by_seed(leaky, key).get("baseline", {})
            cells += [
                mean_sd(list(a.values())),
                ci_cell(paired_diffs(a, by_seed(base, key)["baseline"])),
            ]
        lines += [
            "## What a random split of the slices does",
            "",
            "The baseline on `leaky-random:5` (each class's files shuffled, then the same",
            "60 / 20 / 20 blocks): one patient's slices land in train, validation and test alike.",
            "",
            "| split | folds | val acc | Δ val vs patient blocks | test acc "
            "| Δ test vs patient blocks |",
            "|---|---|---|---|---|---|",
            f"| leaky-random | {len(leaky)} | " + " | ".join(cells) + " |",
            f"| patient-blocks | {len(base)} | {mean_sd([r['val_acc'] for r in base])} | — "
            f"| {mean_sd([r['acc'] for r in base])} | — |",
            "",
        ]  # fmt: skip
    pairs = [(r["val_acc"], r["acc"]) for r in blocks if "val_acc" in r]
    if len(pairs) > 2:
        gaps = [v - t for v, t in pairs]
        try:
            r_val = f"{statistics.correlation(*zip(*pairs, strict=True)):.2f}"
        except statistics.StatisticsError:  # a constant column
            r_val = "undefined (one of them is constant)"
        lines += [
            "## Validation as a proxy for test",
            "",
            f"Over the {len(pairs)} models above: validation − test accuracy "
            f"{_mean_sd(gaps)} points (largest {max(gaps, key=abs):+.2f}), Pearson r between them "
            f"{r_val}. The folds differ in which patients they hold, and that moves both.",
            "",
        ]
    shares = {}
    for r in blocks:
        if "cam_body_share" in r and not METHODS[r["method"]].tta:
            shares.setdefault(r["method"], []).append(r["cam_body_share"])
    if shares:
        areas = [r["body_area"] for r in blocks if r["method"] == "baseline" and "body_area" in r]
        lines += [
            "## Where the CAMs sit",
            "",
            "Share of the predicted class's positive CAM mass inside the body on each fold's test",
            "images (`benchmarks.runner.cams`: the body is all but the dark background connected",
            "to the border), mean ± std over the folds. A map spread evenly over the image would",
            "put " + mean_sd(areas) + " % inside (the body's share of the image area).",
        ]
        if areas and min(areas) >= UNINFORMATIVE_BODY_AREA:
            lines += [
                f"Site A's slices are cropped to the body (at least {min(areas):.2f} % of every",
                "fold's image area), so nearly any map lies inside it: on this dataset the share",
                "cannot tell one method's maps from another's (on site B, whose slices show",
                "the background around the body, it can: `cam_body_share.md`).",
            ]
        lines += [
            "",
            "| method | folds | CAM mass inside the body (%) |",
            "|---|---|---|",
            *(f"| {m} | {len(v)} | {mean_sd(v)} |" for m, v in shares.items()),
            "",
        ]
    if any("tta_rules" in r for r in blocks):
        lines += tta_section(blocks)
    hours = sum(r["train_seconds"] for r in blocks + leaky if not METHODS[r["method"]].tta) / 3600
    lines += ["## CPU time", "", f"Training the models above took {hours:.2f} h of this machine "
              "(evaluation not counted; `full` reuses the `snapmix_cpe` models).", ""]  # fmt: skip
    atomic_write_text("\n".join(lines), path)


# a body covering at least this share (%) of the image leaves the CAM's body share uninformative
UNINFORMATIVE_BODY_AREA = 95.0


def choose_site_a_recipe(
    rows: list[dict], lrs: tuple[float, ...], tolerance: float = 1.0
) -> tuple[float, int] | None:
    """The rule written before the runs: the lr of the best validation accuracy over the longest
    schedule (every lr of ``lrs`` measured there, else None; a tie goes to the smaller lr), then
    the shortest schedule measured at that lr whose best validation accuracy is within
    ``tolerance`` points of the longest one's."""
    longest = max((r["epochs"] for r in rows), default=0)
    full = {r["settings"]["lr"]: r["val_acc"] for r in rows if r["epochs"] == longest}
    if not rows or any(lr not in full for lr in lrs):
        return None
    lr = max(sorted(full), key=lambda k: full[k])
    near = [
        r["epochs"]
        for r in rows
        if r["settings"]["lr"] == lr and r["val_acc"] >= full[lr] - tolerance
    ]
    return lr, min(near)


def site_a_recipe_markdown(rows: list[dict], path: Path, lrs: tuple[float, ...]) -> None:
    """The recipe choice: the baseline's validation curve of fold 0 at each of ``lrs`` over the
    longest schedule, then shorter schedules at the best lr."""
    rows = sorted(rows, key=lambda r: (-r["epochs"], r["settings"]["lr"]))
    lines = [
        "# Site A: the fine-tuning recipe, chosen on the baseline's validation accuracy (CPU)",
        "",
        "    python benchmarks/reproduce.py --table site-a-recipe --publish",
        "",
        "The baseline only, fold 0 (seed 0) of the patient-block split, EfficientNet-Lite0 from",
        "ImageNet at 128², batch 32, SGD with the step schedule (×0.1 after 40, 75 and 90 % of",
        "the epochs); validation accuracy after each epoch. Test accuracy is not read for the",
        "choice and is not shown. The rule, written before the runs: the lr of the best",
        "validation accuracy over 20 epochs, then the shortest schedule at that lr whose best",
        "validation accuracy is within 1 point of its 20-epoch run's (the validation split has",
        "497 slices: one slice is 0.2 points).",
        "",
        "| lr (backbone × 0.1) | epochs | best val acc | at epoch | val acc by epoch |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        curve = r.get("val_curve", [])
        lines.append(
            f"| {r['settings']['lr']:g} | {r['epochs']} | {r['val_acc']:.2f} | {r['best_epoch']} | "
            + " ".join(f"{v:.1f}" for v in curve)
            + " |"
        )
    measured = {r["settings"]["lr"] for r in rows}
    missing = [f"{lr:g}" for lr in lrs if lr not in measured]
    chosen = choose_site_a_recipe(rows, lrs)
    if missing or chosen is None:
        lines += ["", f"Not measured yet: lr {', '.join(missing)}; no lr is chosen before all are."]
    else:
        lines += [
            "",
            f"Chosen: **lr {chosen[0]:g}, {chosen[1]} epochs** (the site-A table's recipe).",
        ]
    atomic_write_text("\n".join([*lines, ""]), path)
