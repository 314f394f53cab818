"""CPU-scale reproduction of the paper's ablations on real data (Tables 2 and 4), from scratch.

No pretrained weights can be fetched on the machines this was written on, so every model starts
from random initialisation; the numbers are therefore far below the paper's ImageNet-pretrained
ResNet-50 and are meant for the *ordering* of the ablations at a scale a 2-core CPU can run:

- site-B (COVID-CT): resnet18 at 112², ``--epochs`` epochs, seeds 0 1 2; baseline, +CPE, SnapMix,
  SnapMix+CPE, and the full method (the SnapMix+CPE model evaluated with the CAM-masking TTA);
  then the CPE forms commensurate with the cross-entropy: L2-normalised cells with temperature
  0.1 (``*_norm``), also weighted 0.1 (``*_w01``), and SnapMix weighing the labels with the mixed
  images' CAMs, without its extra forward (``snapmix_fast``); the validation accuracy of the
  selected epoch is recorded with every row, and the models of ``--tta-runs`` get every vote
  rule measured on validation and test (``tta_rules``);
- digits (``--datasets digits``): ``benchmarks/evidence.py`` (MNIST → USPS and MNIST → MNIST-M,
  resnet10t from scratch, 10,000 digits), whose rows are imported as ``mnist-usps`` and
  ``mnist-mnistm``; the validation split is held-out MNIST.

The **recommended recipe** (top-level ``"recommended"``, with ``"recommended_detail"``) is chosen
on the validation splits of site-B and the digits together, by
:func:`benchmarks.evidence.choose_recipe`: the method whose worst mean paired validation difference
to the baseline is highest; the markdown then tests it against the baseline on every test set.

Each (seed, method) is one call of the example script, so an interrupted reproduction resumes where
it stopped (``--resume`` is always passed; finished runs are only re-evaluated). After every run
its rows are merged (:func:`camkit.io.merge_results`, under a file lock, so concurrent
reproductions lose nothing) into ``reproduce_cpu.json`` (``{"rows": [...]}``: ``dataset``,
``method``, ``seed``, ``settings`` — model, image size, subsets, epochs, CPE form, lr, batch size,
torch and timm versions, ... — and the metrics in percent, ``val_acc``, ``train_seconds``,
``epochs``, ``best_epoch``), and ``reproduce_cpu.md`` (the tables next to the paper's numbers) is
rewritten; a table refuses rows of different settings. Both files go to the scratch folder
``--out`` (``runs/reproduce``) unless ``--publish`` (``benchmarks/results``) or ``--results DIR``
is given.

    python benchmarks/reproduce.py --epochs 20 --seeds 0 1 2 --publish
    python benchmarks/reproduce.py --datasets digits --seeds 0 1 2 --publish
    python benchmarks/reproduce.py --report-only --publish   # tables from the JSON files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from camkit import CAMMaskingTTA
from camkit.io import atomic_write_text, load_checkpoint, merge_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EVIDENCE_OUT = ROOT / "runs" / "evidence"  # benchmarks/evidence.py's scratch folder
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))  # benchmarks.evidence, when run as a script

import covid_ct  # noqa: E402

KEYS = ("acc", "precision", "recall", "f1", "val_acc", "train_seconds", "epochs", "best_epoch")
ROW_KEY = ("dataset", "method", "seed", "settings")
# what a run's name sets (`*_norm`, `*_w01`, `snapmix_fast`): may differ between its rows
METHOD_SETTINGS = ("cpe_normalize", "cpe_temperature", "cpe_weight", "snapmix_cams")
METHOD_SETTINGS += ("cpe_form", "snapmix")  # the digits evidence's names for the same

# Paper, Table 2 (site-B, ImageNet-pretrained ResNet-50, 200 epochs): accuracy, F1
PAPER = {
    "site-B": {
        "baseline": (85.23, 84.51),
        "cpe": (85.96, 85.22),
        "snapmix": (87.56, 86.85),
        "snapmix_cpe": (87.02, 86.95),
        "full": (88.76, 88.25),
    },
    "mnist-usps": {"baseline": (98.13, None), "snapmix": (98.11, None), "full": (98.25, None)},
    "mnist-mnistm": {"baseline": (98.70, None), "snapmix": (98.65, None), "full": (98.92, None)},
}

# (result key, example methods, example row giving that key, extra example arguments, passed
# through to the example as they are); the same runs for every dataset. Runs with extra arguments
# are variants: they come after the paper's forms and have no paper numbers.
RUNS = [
    ("baseline", ["baseline"], "baseline", []),
    ("cpe", ["cpe"], "cpe", []),
    ("snapmix", ["snapmix"], "snapmix", []),
    ("snapmix_cpe", ["snapmix_cpe", "full"], "snapmix_cpe", []),
    ("cpe_norm", ["cpe"], "cpe", ["--cpe-normalize", "--cpe-temperature", "0.1"]),
    (
        "snapmix_cpe_norm",
        ["snapmix_cpe", "full"],
        "snapmix_cpe",
        ["--cpe-normalize", "--cpe-temperature", "0.1"],
    ),
    (
        "cpe_norm_w01",
        ["cpe"],
        "cpe",
        ["--cpe-normalize", "--cpe-temperature", "0.1", "--cpe-weight", "0.1"],
    ),
    ("snapmix_fast", ["snapmix"], "snapmix", ["--snapmix-cams", "mixed"]),
    (
        "snapmix_cpe_norm_w01",
        ["snapmix_cpe", "full"],
        "snapmix_cpe",
        ["--cpe-normalize", "--cpe-temperature", "0.1", "--cpe-weight", "0.1"],
    ),
]
# every run starts from the paper's CPE (Eq. 1), the example's default being the recommended form;
# a run's extra arguments come after and override it
PAPER_CPE = ["--no-cpe-normalize", "--cpe-temperature", "1"]
DATASETS = ("site-B", "digits")
DIGITS_TARGETS = {"mnist-usps": "usps", "mnist-mnistm": "mnistm"}  # dataset → evidence's part
RECIPES = {run[0]: run[1:] for run in RUNS}


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


def digits_rows(path: Path) -> list[dict]:
    """The digits evidence (``benchmarks/evidence.py``'s JSON) as rows of this table.

    One row per target (``mnist-usps``, ``mnist-mnistm``), method and seed: the target's test
    accuracy, the held-out MNIST validation accuracy both targets share, and each vote rule's
    ``tta_rules`` (``"val"``, ``"test"``: on the first ``tta_images`` images of each set).
    """
    from benchmarks.evidence import REPRODUCE_NAMES, RULES

    rows = []
    for r in load(path):
        for dataset, part in DIGITS_TARGETS.items():
            rows.append(
                {
                    "dataset": dataset,
                    "method": REPRODUCE_NAMES.get(r["method"], r["method"]),
                    "seed": r["seed"],
                    "settings": {**r["settings"], "benchmark": "benchmarks/evidence.py"},
                    "acc": 100 * r[part]["accuracy"],
                    "val_acc": 100 * r["val"]["accuracy"],
                    "n_test": r[part]["n"],
                    "train_seconds": r["train_seconds"],
                    "epochs": r["settings"]["epochs"],
                    "best_epoch": r["settings"]["epochs"],  # the last: no epoch is selected
                    "tta_rules": {
                        rule: {"val": r["val"][f"tta_{rule}"], "test": r[part][f"tta_{rule}"]}
                        for rule in RULES
                    },
                }
            )
    return rows


def choose(rows: list[dict]) -> dict:
    """``{"recommended": key, "recommended_detail": {...}}``: the recipe chosen on the validation
    splits of site-B and the digits together (:func:`benchmarks.evidence.choose_recipe`); the key
    is None, with the reason in the detail, while either lacks the seeds."""
    from benchmarks.evidence import choose_recipe

    val: dict = {}
    gains: dict = {}
    for row in rows:
        if "val_acc" not in row or row["method"].startswith("full"):
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
    if set(val) != {"site-B", "digits"}:
        chosen = {"method": None, "reason": f"validation accuracy of {sorted(val)} only"}
    else:
        chosen = choose_recipe(val, gains)
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
    from benchmarks.evidence import paired_ci

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
    from benchmarks.evidence import paired_ci, verdict

    detail = chosen["recommended_detail"]
    method = chosen["recommended"]
    lines = [
        "## Recommended recipe",
        "",
        f"**`{method}`**: SnapMix {detail['snapmix'] or 'off'}, CPE {_cpe_form(detail)}, vote "
        f"rule `{detail['tta_rule']}` for K > 2 classes and the paper's "
        f"`{detail['tta_rule_binary']}` for K = 2. Chosen on {detail['chosen_on']}; the "
        "differences below are those means, in points.",
        "",
        "| candidate | " + " | ".join(f"{d} val Δ" for d in detail["val_delta"]) + " | worst |",
        "|---|" + "---|" * (len(detail["val_delta"]) + 1),
    ]
    for m, per in detail["val_delta_by_method"].items():
        mark = f"**{m}**" if m == method else m
        cells = [f"{v:+.2f}" for v in per.values()]
        lines.append(f"| {mark} | " + " | ".join(cells) + f" | {min(per.values()):+.2f} |")
    lines += [
        "",
        "Test accuracy, the recommended recipe with its vote rule against the baseline, over "
        "paired seeds:",
        "",
        "| dataset | seeds | baseline | recommended | Δ [95 % CI] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        by = {
            (r["method"], r["seed"]): r
            for r in rows
            if r["dataset"] == dataset and r["method"] in ("baseline", method)
        }
        seeds = sorted(s for (m, s) in by if m == method and ("baseline", s) in by)
        if not seeds:
            continue
        rule = detail["tta_rule_binary"] if dataset == "site-B" else detail["tta_rule"]
        rec = [by[(method, s)] for s in seeds]
        if rule in (None, "none"):
            label, rule = "(no vote)", None
        elif all(rule in r.get("tta_rules", {}) for r in rec):
            label = f"(vote {rule})"
        else:  # the vote was not measured on this dataset's models: plain accuracy, said so
            label, rule = f"(plain: vote {rule} not measured)", None
        b = [by[("baseline", s)]["acc"] for s in seeds]
        r = [tta_accuracy(row, rule) for row in rec]
        d, lo, hi = paired_ci([x - y for x, y in zip(r, b, strict=True)])
        lines.append(
            f"| {dataset} | {len(seeds)} | {_mean_sd(b)} | {_mean_sd(r)} "
            f"{label} | "
            f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] | {verdict(d, lo, hi)} |"
        )
    return [*lines, ""]


def tta_section(rows: list[dict]) -> list[str]:
    """Each vote rule's accuracy change and flips, on validation and test, per dataset."""
    lines = [
        "## TTA vote rules",
        "",
        "CAM-masking TTA, k = 31: accuracy change in points and labels flipped, mean over seeds "
        "(digits: on the first 1,000 images of each set). `threshold` is the paper's vote "
        "(p_j > 0.2), `argmax` keeps a copy's vote while the prediction stays its arg-max, "
        "`relative` while p_j > 0.5 · p_0.",
        "",
        "| dataset | method | rule | val Δ | val flips | test Δ | test flips "
        "| images (val, test) |",
        "|---|---|---|---|---|---|---|---|",
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
        lines.append(f"| {dataset} | {method} | {rule} | " + " | ".join(cells) + f" | {n} |")
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
        "    python benchmarks/reproduce.py --epochs 20 --seeds 0 1 2 --publish",
        "    python benchmarks/reproduce.py --datasets digits --seeds 0 1 2 --publish",
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
        "- digits (`mnist-usps`, `mnist-mnistm`): `benchmarks/evidence.py` — resnet10t,",
        "  output stride 16, 32², 10,000 MNIST digits, 5 epochs (the last is reported); val is",
        "  5,000 other MNIST digits; tests the full USPS test set (framed like MNIST) and the",
        "  MNIST-M test set. The same models for both targets (precision etc. not recorded).",
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


def site_b_argv(key: str, seed: int, args: argparse.Namespace, methods: list[str]) -> list[str]:
    """``examples/covid_ct.py`` arguments of one site-B run (resumed, or re-evaluated)."""
    extra = RECIPES[key][2]
    argv = [
        "--site", "B", "--model", args.model, "--img-size", str(args.img_size),
        "--epochs", str(args.epochs), "--out", str(args.out / f"site_b_{key}"),
        "--seeds", str(seed), "--method", *methods, "--resume", "--quiet", "--device", "cpu",
        *PAPER_CPE, *extra,
    ]  # fmt: skip
    if args.data:
        argv += ["--data", str(args.data)]
    if args.subset:
        argv += ["--train-subset", str(args.subset[0]), "--test-subset", str(args.subset[1])]
    return argv


def site_b_tta_rules(key: str, seed: int, args: argparse.Namespace) -> dict:
    """Each vote rule's flips and accuracy change on site-B validation and test, for one model.

    ``{rule: {"val" | "test": {"n", "flips", "accuracy_change"}}}``, the change in [0, 1]; the
    rules' θ are the examples' (0.2; 0.5 for ``relative``), the cells the paper's scaled.
    """
    source = RECIPES[key][1]
    ns = covid_ct.parse_args(site_b_argv(key, seed, args, [source]))
    device = torch.device("cpu")
    data = covid_ct.load_site("B", ns, device, lambda msg: None)
    ckpt = load_checkpoint(covid_ct.checkpoint_path(ns, source, seed), required=("best_state",))
    model = covid_ct.create_model(ns, device, state=ckpt["best_state"]).eval()
    patch, _, k = covid_ct.tta_geometry(ns.img_size)
    out: dict = {}
    for split in ("val", "test"):
        images, labels = data[split]
        plain = covid_ct.run_evaluate(ns, model, images, labels)["accuracy"]
        for rule in covid_ct.TTA_RULES:
            theta = covid_ct.TTA_RELATIVE_THETA if rule == "relative" else covid_ct.TTA_THETA
            tta = CAMMaskingTTA(model, k=k, theta=theta, patch_size=patch, rule=rule)
            values = covid_ct.run_evaluate(ns, model, images, labels, tta=tta)
            out.setdefault(rule, {})[split] = {
                "n": len(labels),
                "flips": values["tta_flipped"],
                "accuracy_change": values["accuracy"] - plain,
            }
    return out


def example_call(key: str, seed: int, args: argparse.Namespace) -> list[dict]:
    """Run (resume, or re-evaluate) one site-B run with ``examples/covid_ct.py``; its rows."""
    argv = site_b_argv(key, seed, args, RECIPES[key][0])
    return [{**row, "dataset": "site-B"} for row in covid_ct.main(argv)]


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the reproduction; return every row of the results file afterwards."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--datasets", nargs="+", choices=DATASETS, default=["site-B"])
    add("--epochs", type=int, default=20, help="site-B epochs")
    add("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add("--img-size", type=int, default=112, help="site-B input side")
    add("--model", default="resnet18", help="site-B model")
    add("--out", type=Path, default=ROOT / "runs" / "reproduce", help="scratch folder of the runs")
    add("--runs", nargs="+", default=[r[0] for r in RUNS])
    add("--data", type=Path, help="COVID-CT folder (default: the data root's)")
    add("--publish", action="store_true", help="write the results to benchmarks/results")
    add("--results", type=Path, help="folder of the result files (default: --out)")
    add("--report-only", action="store_true", help="rewrite the markdown from the JSON and exit")
    add("--subset", type=int, nargs=2, metavar=("TRAIN", "TEST"), help="site-B images per class")
    add(
        "--tta-runs",
        nargs="*",
        default=["baseline", "recommended"],
        help="site-B runs whose models get the vote-rule study (val and test, every rule)",
    )
    add("--evidence", type=Path, help="the digits evidence JSON (default: the published one)")
    args = parser.parse_args(argv)
    if args.publish and args.results is not None:
        parser.error(
            "--publish and --results: give one (--publish is --results benchmarks/results)"
        )
    results = RESULTS if args.publish else args.results or args.out
    json_path, md_path = results / "reproduce_cpu.json", results / "reproduce_cpu.md"
    unknown = sorted(set(args.runs + args.tta_runs) - set(RECIPES) - {"recommended"})
    if unknown:
        parser.error(f"--runs/--tta-runs: unknown run(s) {unknown}; choose from {sorted(RECIPES)}")
    evidence = args.evidence or (
        RESULTS / "evidence_cpu.json"
        if args.publish or "digits" not in args.datasets
        else EVIDENCE_OUT / "evidence.json"
    )
    rows = load(json_path)  # refuses the older nested form

    def publish(new: list[dict]) -> list[dict]:
        """Merge ``new`` (and the digits evidence) under the lock, choose, rewrite the markdown."""
        kept = {_row_id(r): r for r in rows if "tta_rules" in r}
        for row in new:  # a re-evaluated model keeps its vote-rule study
            old = kept.get(_row_id(row))
            if old and "tta_rules" not in row and old.get("best_epoch") == row.get("best_epoch"):
                row["tta_rules"] = old["tta_rules"]
        digits = digits_rows(evidence) if evidence.is_file() else []
        merged = merge_results(json_path, [*new, *digits], key=ROW_KEY)
        chosen = choose(merged)
        merged = merge_results(json_path, [], key=ROW_KEY, extra=chosen)
        write_markdown(merged, md_path, chosen)
        return merged

    if args.report_only:
        return publish([])
    if "digits" in args.datasets:  # the digits evidence, resumable on its own
        from benchmarks import evidence as digits_evidence

        seeds = ["--seeds", *map(str, args.seeds)]
        digits_evidence.main(["run", *seeds])
        digits_evidence.main(["report", *(["--publish"] if args.publish else [])])
        rows = publish([])
    # site-B: the paper's forms for every seed first, then the variants (extra arguments)
    schedule = [
        (key, seed)
        for variant in (False, True)
        for seed in args.seeds
        for key in args.runs
        if bool(RECIPES[key][2]) == variant and "site-B" in args.datasets
    ]
    for key, seed in schedule:
        _, source, _ = RECIPES[key]
        start = time.perf_counter()
        example = example_call(key, seed, args)
        seconds = time.perf_counter() - start
        names = {source: key}
        if key.startswith("snapmix_cpe"):
            names["full+tta"] = key.replace("snapmix_cpe", "full")
        new = [
            {
                **{k: row[k] for k in (*ROW_KEY, *KEYS, "tta_forwards", "tta_flipped") if k in row},
                "method": names[row["method"]],
            }
            for row in example
            if row["method"] in names
        ]
        rows = publish(new)
        print(f"done: site-B {key} seed {seed} ({seconds:.0f} s including evaluation)")
    if "site-B" in args.datasets:  # the vote rules on validation and test (slow: ~2 min a model)
        chosen = choose(rows).get("recommended")
        for key in dict.fromkeys(chosen if k == "recommended" else k for k in args.tta_runs):
            for seed in args.seeds if key else []:
                row = next(
                    (r for r in rows if (r["dataset"], r["method"], r["seed"]) ==
                     ("site-B", key, seed)),
                    None,
                )  # fmt: skip
                if row is None or "tta_rules" in row:
                    continue
                start = time.perf_counter()
                rows = publish([{**row, "tta_rules": site_b_tta_rules(key, seed, args)}])
                seconds = time.perf_counter() - start
                print(f"done: site-B {key} seed {seed} vote rules ({seconds:.0f} s)")
    return rows


def _row_id(row: dict) -> str:
    return json.dumps([row.get(k) for k in ROW_KEY], sort_keys=True)


if __name__ == "__main__":
    main()
