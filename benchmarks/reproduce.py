"""CPU-scale reproduction of the paper's ablations on real data (Tables 2 and 4), from scratch.

No pretrained weights can be fetched on the machines this was written on, so every model starts
from random initialisation; the numbers are therefore far below the paper's ImageNet-pretrained
ResNet-50 and are meant for the *ordering* of the ablations at a scale a 2-core CPU can run:

- site-B (COVID-CT): resnet18 at 112², ``--epochs`` epochs, seeds 0 1 2; baseline, +CPE, SnapMix,
  SnapMix+CPE, and the full method (the SnapMix+CPE model evaluated with the CAM-masking TTA);
  then the same CPE trainings with the L2-normalised, temperature-0.1 form of the loss
  (``*_norm`` rows), to compare with the paper's raw dot products, that form weighted 0.1
  (``cpe_norm_w01``), and SnapMix weighing the labels with the mixed images' CAMs, without its
  extra forward (``snapmix_fast``);
- digits (``--datasets digits``): ``examples/mnist_usps.py``, a resnet18 at 64² (the least input
  that gives the 2×2 feature map the contrastive patch loss needs) trained on a per-class subset
  of MNIST, each model tested on USPS and on MNIST-M (``mnist-usps`` and ``mnist-mnistm``), the
  same methods and CPE forms.

Each (seed, method) is one call of the example script, so an interrupted reproduction resumes where
it stopped (``--resume`` is always passed; finished runs are only re-evaluated). After every run
its rows are merged (:func:`camkit.io.merge_results`, under a file lock, so concurrent
reproductions lose nothing) into ``reproduce_cpu.json`` (``{"rows": [...]}``: ``dataset``,
``method``, ``seed``, ``settings`` — model, image size, subsets, epochs, CPE form, lr, batch size,
torch and timm versions, ... — and the metrics in percent, ``train_seconds``, ``epochs``,
``best_epoch``), and ``reproduce_cpu.md`` (the tables next to the paper's numbers) is rewritten; a
table refuses rows of different settings. Both files go to the scratch folder ``--out``
(``runs/reproduce``) unless ``--publish`` (``benchmarks/results``) or ``--results DIR`` is given.

    python benchmarks/reproduce.py --epochs 20 --seeds 0 1 2 --publish
    python benchmarks/reproduce.py --datasets digits --seeds 0 1 2 --publish

The committed ``benchmarks/results/reproduce_cpu.json`` still holds the 2026-11 tables in the
older nested form, without per-row settings: ``--publish`` refuses to merge into it (it says so)
until those tables are rerun; their settings are in ``reproduce_cpu.md``.
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

from camkit.io import atomic_write_text, merge_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))  # benchmarks.evidence, when run as a script

import covid_ct  # noqa: E402
import mnist_usps  # noqa: E402

KEYS = ("acc", "precision", "recall", "f1", "train_seconds", "epochs", "best_epoch")
ROW_KEY = ("dataset", "method", "seed", "settings")
# what a run's name sets (`*_norm`, `*_w01`, `snapmix_fast`): may differ between its rows
METHOD_SETTINGS = ("cpe_normalize", "cpe_temperature", "cpe_weight", "snapmix_cams")

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
]
DATASETS = ("site-B", "digits")
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


def recommended() -> dict:
    """``{"recommended": key}`` from the digits evidence's choice (validation only), if made."""
    path = ROOT / "benchmarks" / "results" / "evidence_cpu.json"
    if not path.is_file():
        return {}
    chosen = json.loads(path.read_text()).get("recommended_detail") or {}
    if not chosen.get("method"):
        return {}
    source = "benchmarks/results/evidence_cpu.json (digits validation)"
    return {"recommended": chosen["method"], "recommended_detail": {**chosen, "source": source}}


def paired_cell(entry: dict, base: dict[int, float]) -> str:
    """Mean paired accuracy difference to the baseline over the shared seeds, with its CI."""
    from benchmarks.evidence import paired_ci

    diffs = [a - base[s] for s, a in zip(entry["seeds"], entry["acc"], strict=True) if s in base]
    if not diffs:
        return "-"
    mean, lo, hi = paired_ci(diffs)
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo == lo else f"{mean:+.2f} [one seed]"


def write_markdown(rows: list[dict], path: Path) -> None:
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
        "mean ± std over the seeds listed per row; the epoch is chosen on the validation split,",
        "never on test. Each table lists the settings all of its rows share.",
        "`*_norm` rows use the CPE loss with L2-normalised cells and temperature 0.1 instead of",
        "the paper's raw dot products; `*_w01` rows also weigh it 0.1 (λ) instead of 1.",
        "`snapmix_fast` = SnapMix with the label weights read from the CAMs of the mixed images",
        "(no extra forward). `full` = the `snapmix_cpe` model evaluated with the",
        "CAM-masking TTA (k = 31, θ = 0.2). `best val epochs`: the epoch the validation split",
        "selected in each run, in the order of the seeds; well before the last epoch, it says the",
        "validation accuracy had stopped improving (the convergence check).",
        "",
        "- site-B: COVID-CT official split; TTA cells scaled from the paper's 8 pixels at 224².",
        "  Precision, recall and F1 with COVID as the positive class.",
        "- digits: trained on a per-class subset of MNIST, the epoch chosen on held-out MNIST",
        "  digits; tested on the USPS test set and MNIST-M's test half (per-class subsets), with",
        "  the same model for both targets. Precision, recall and F1 macro-averaged over the 10",
        "  classes.",
        "",
    ]
    chosen = recommended()
    if chosen:
        lines += [
            f"Recommended recipe: `{chosen['recommended']}`, chosen on validation data only by "
            "`benchmarks/evidence.py` (digits; see `evidence_cpu.md`). `Δ acc`: the mean "
            "difference to the baseline over the seeds both have, with its 95 % t-interval.",
            "",
        ]
    for dataset, methods in results.items():
        shared = ", ".join(f"{k} {v}" for k, v in settings[dataset].items())
        lines += [
            f"## {dataset}",
            "",
            f"Settings: {shared}.",
            "",
            "| method | seeds | epochs | best val epochs | accuracy | Δ acc vs baseline [95 % CI] "
            "| precision | recall | F1 | train s/run | paper acc | paper F1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
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
            cells = [fmt(entry.get(k, [])) for k in ("acc", "precision", "recall", "f1")]
            cells.insert(1, paired_cell(entry, base) if method != "baseline" else "—")
            seconds = entry.get("train_seconds", [])
            epochs = sorted(set(entry.get("epochs", [])))
            lines.append(
                f"| {method} | {len(entry.get('acc', []))} | "
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
    lines += ["## Training time of each run", "", "| dataset | method | seed | train seconds |"]
    lines.append("|---|---|---|---|")
    for dataset, methods in results.items():
        for method, entry in methods.items():
            for seed, seconds in zip(
                entry.get("seeds", []), entry.get("train_seconds", []), strict=True
            ):
                lines.append(f"| {dataset} | {method} | {seed} | {seconds:.0f} |")
    lines.append("")
    atomic_write_text("\n".join(lines), path)


def example_call(dataset: str, key: str, seed: int, args: argparse.Namespace) -> list[dict]:
    """Run one (dataset, run, seed) with its example script; the example's result rows."""
    methods, _, extra = RECIPES[key]
    common = ["--seeds", str(seed), "--method", *methods, "--resume", "--quiet", "--device", "cpu"]
    if dataset == "site-B":
        argv = [
            "--site", "B", "--model", args.model, "--img-size", str(args.img_size),
            "--epochs", str(args.epochs), "--out", str(args.out / f"site_b_{key}"),
            *common, *extra,
        ]  # fmt: skip
        if args.data:
            argv += ["--data", str(args.data)]
        if args.subset:
            argv += ["--train-subset", str(args.subset[0]), "--test-subset", str(args.subset[1])]
        return [{**row, "dataset": "site-B"} for row in covid_ct.main(argv)]
    train_n, test_n = args.digits_subset
    argv = [
        "--target", "both", "--model", "resnet18", "--img-size", str(args.digits_img_size),
        "--epochs", str(args.digits_epochs), "--out", str(args.out / f"digits_{key}"),
        "--train-subset", str(train_n), "--test-subset", str(test_n),
        "--mnistm-cache", str(args.out / "mnistm"), *common, *extra,
    ]  # fmt: skip
    return mnist_usps.main(argv)


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
    add("--digits-epochs", type=int, default=15)
    add("--digits-img-size", type=int, default=64)
    add(
        "--digits-subset",
        type=int,
        nargs=2,
        default=[200, 200],
        metavar=("TRAIN", "TEST"),
        help="MNIST training digits per class; validation and target test digits per class",
    )
    args = parser.parse_args(argv)
    if args.publish and args.results is not None:
        parser.error(
            "--publish and --results: give one (--publish is --results benchmarks/results)"
        )
    results = ROOT / "benchmarks" / "results" if args.publish else args.results or args.out
    json_path, md_path = results / "reproduce_cpu.json", results / "reproduce_cpu.md"
    if args.report_only:
        load(json_path)  # refuses the older nested form
        rows = merge_results(json_path, [], key=ROW_KEY, extra=recommended())
        write_markdown(rows, md_path)
        return rows
    unknown = sorted(set(args.runs) - set(RECIPES))
    if unknown:
        parser.error(f"--runs: unknown run(s) {unknown}; choose from {sorted(RECIPES)}")
    # per dataset, the paper's forms for every seed first, then the variants (extra arguments)
    schedule = [
        (dataset, key, seed)
        for dataset in args.datasets
        for variant in (False, True)
        for seed in args.seeds
        for key in args.runs
        if bool(RECIPES[key][2]) == variant
    ]
    rows = load(json_path)
    for dataset, key, seed in schedule:
        _, source, _ = RECIPES[key]
        start = time.perf_counter()
        example = example_call(dataset, key, seed, args)
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
        # read, merge, write under the lock; the recipe the evidence chose rides along
        rows = merge_results(json_path, new, key=ROW_KEY, extra=recommended())
        write_markdown(rows, md_path)
        print(f"done: {dataset} {key} seed {seed} ({seconds:.0f} s including evaluation)")
    return rows


if __name__ == "__main__":
    main()
