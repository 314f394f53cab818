"""The ``volumes`` table's markdown (`adrenal3d_cpu.md`): AdrenalMNIST3D from scratch.

The baseline, CutMix, SnapMix and camkit's default CPE on the runner's ``adrenal3d`` recipe, over
paired seeds; the paired intervals are `benchmarks.runner.report`'s.
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import torch

from benchmarks.runner.io import atomic_write_text
from benchmarks.runner.models import feature_grid
from benchmarks.runner.recipes import RECIPES
from benchmarks.runner.report import by_seed, ci_cell, mean_sd, paired_diffs
from benchmarks.tables.rows import _cpe_form, recipe_detail, shared_settings
from benchmarks.tables.sections import method_groups

DATASET = "adrenal3d"
SHAPE_MASKS = (
    "**The volumes are shape masks, not CT intensities**: each voxel is 0 or 1 (background or "
    "gland, segmented from abdominal CT), so these models learn shapes and have never seen a CT "
    "intensity."
)


def _method_settings(method: str) -> str:
    detail = recipe_detail(method)
    return f"mix {detail['mix'] or 'none'}, CPE {_cpe_form(detail)}"


def _network(shared: dict) -> list[str]:
    """The rows' network in words, its final feature map measured (`feature_grid`)."""
    if not shared:
        return []
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in shared["model_kwargs"].items()}
    recipe = RECIPES[DATASET].replace(
        model=shared["model"], model_kwargs=tuple(kwargs.items()), img_size=shared["img_size"]
    )
    grid = "×".join(map(str, feature_grid(recipe, 2)))
    return [
        "Every model is trained from scratch by the runner's `adrenal3d` recipe",
        "(`benchmarks/runner/recipes.py` gives the timings behind the choice): "
        f"`{shared['model']}`",
        f"(layers {list(kwargs.get('layers', ()))}, channels "
        f"{list(kwargs.get('block_inplanes', ()))}, first convolution stride "
        f"{kwargs.get('conv1_t_stride')}, max-pool {'off' if kwargs.get('no_max_pool') else 'on'})"
        " read through",
        f"camkit's MONAI adapter; at {shared['img_size']}³ its final feature map is {grid} cells,",
        "2 a side being the least a CAM needs. A stride-1 first convolution (a 4³ map) costs about",
        "5 times as much per epoch here, MONAI's 3-D DenseNet121 on the 64³ file about 100 times:",
        "more than this CPU could give 4 methods × 3 seeds.",
    ]


def volumes_markdown(rows: list[dict], path: Path) -> None:
    """Write the AdrenalMNIST3D table of ``rows`` to ``path``: per method its settings, validation
    and test accuracy (mean ± std over seeds) with the paired 95 % intervals to the baseline, F1,
    the epochs validation chose, and the CPU time."""
    sel = [r for r in rows if r["dataset"] == DATASET]
    shared = shared_settings(DATASET, sel) if sel else {}
    keep = ("model", "model_kwargs", "img_size", "epochs", "batch_size", "lr", "weight_decay")
    keep += ("schedule", "selection", "mean", "std", "cpe_patches")
    lines = [
        "# AdrenalMNIST3D from scratch: volumes through the runner (CPU)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "    python benchmarks/reproduce.py --table volumes --publish",
        "",
        "AdrenalMNIST3D (MedMNIST v2, CC BY 4.0), its official split: train 1,188, validation 98,",
        f"test 298 volumes of {shared.get('img_size', 28)}³ voxels, normal adrenal gland (0) or "
        "mass (1). " + SHAPE_MASKS,
        "",
        *_network(shared),
        "Training augmentation: a random flip along each axis (no crops or intensity changes: the",
        "voxels are masks). The lr and the epochs were chosen on the baseline's validation",
        "accuracy (seed 0) before the other methods ran; each run's epoch is chosen on validation.",
        "`cpe_norm` is camkit's default CPE (L2-normalised cells, τ = 0.1, weight 1), SnapMix and",
        "CutMix use cuboid boxes. Test metrics in percent (F1 with mass as the positive class),",
        "mean ± std over the seeds; `Δ`: the mean paired difference to the baseline over the",
        "seeds both rows have, with its 95 % t-interval.",
        "",
        "Settings of every row: "
        + ", ".join(f"{k} {shared[k]}" for k in keep if k in shared)
        + ".",
        "",
    ]
    if not sel:
        atomic_write_text("\n".join([*lines, "(not run yet)", ""]), path)
        return
    names = {"train_subset": "training", "test_subset": "validation and test"}
    subsets = [f"{shared[k]} {name}" for k, name in names.items() if shared.get(k)]
    if subsets:  # a smoke run: say so above the numbers
        lines += [
            f"**A subset, not the table**: the first {' and '.join(subsets)} volumes of each "
            f"class ({sel[0]['n_test']} test volumes).",
            "",
        ]
    lines += [
        "| method | settings | seeds | val acc | Δ val vs baseline [95 % CI] | accuracy "
        "| Δ acc vs baseline [95 % CI] | F1 | best val epochs | train s/run | s/epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    val = by_seed(sel, "val_acc")
    for method, name, group, delta in method_groups(sel, {}):
        cells = [_method_settings(method), str(len(group))]
        cells.append(mean_sd([r["val_acc"] for r in group if "val_acc" in r]))
        cells.append(
            "—" if method == "baseline"
            else ci_cell(paired_diffs(val.get(method, {}), val.get("baseline", {})))
        )  # fmt: skip
        cells += [mean_sd([r["acc"] for r in group]), delta, mean_sd([r["f1"] for r in group])]
        cells.append(", ".join(str(r["best_epoch"]) for r in group))
        cells.append(f"{statistics.fmean(r['train_seconds'] for r in group):.0f}")
        per_epoch = [r["train_seconds"] / r["epochs"] for r in group if r["epochs"]]
        cells.append(f"{statistics.fmean(per_epoch):.1f}" if per_epoch else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    accs = by_seed(sel)
    if "snapmix" in accs and "cutmix" in accs:
        lines += ["", "SnapMix − CutMix (paired seeds): "
                  f"{ci_cell(paired_diffs(accs['snapmix'], accs['cutmix']))}"]  # fmt: skip
    minutes = sum(r["train_seconds"] for r in sel) / 60
    lines += [
        "",
        "## CPU time",
        "",
        f"Training the {len(sel)} models above took {minutes:.1f} min of this machine's "
        f"{os.cpu_count()} CPU cores (wall clock, evaluation not counted; other jobs shared the "
        "cores, so compare the times only roughly).",
        "",
    ]
    atomic_write_text("\n".join(lines), path)
