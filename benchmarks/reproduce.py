"""CPU-scale reproduction of the paper's ablations on real data (Tables 2 and 4), from scratch.

No pretrained weights can be fetched on the machines this was written on, so every model starts
from random initialisation; the numbers are therefore far below the paper's ImageNet-pretrained
ResNet-50 and are meant for the *ordering* of the ablations at a scale a 2-core CPU can run:

- site-B (COVID-CT): resnet18 at 112², ``--epochs`` epochs, seeds 0 1 2; baseline, +CPE, SnapMix,
  SnapMix+CPE, and the full method (the SnapMix+CPE model evaluated with the CAM-masking TTA);
  then the same CPE trainings with the L2-normalised, temperature-0.1 form of the loss
  (``*_norm`` rows), to compare with the paper's raw dot products;
- digits (``--datasets digits``): ``examples/mnist_usps.py``, a resnet18 at 64² (the least input
  that gives the 2×2 feature map the contrastive patch loss needs) trained on a per-class subset
  of MNIST, each model tested on USPS and on MNIST-M (``mnist-usps`` and ``mnist-mnistm``), the
  same methods and CPE forms.

Each (seed, method) is one call of the example script, so an interrupted reproduction resumes where
it stopped (``--resume`` is always passed; finished runs are only re-evaluated), and the result
files are rewritten after every run: ``benchmarks/results/reproduce_cpu.json`` (``{dataset: {method:
{"acc": [per seed], "precision", "recall", "f1", "train_seconds"}}}``, metrics in percent) and
``benchmarks/results/reproduce_cpu.md`` (the tables next to the paper's numbers).

    python benchmarks/reproduce.py --epochs 20 --seeds 0 1 2
    python benchmarks/reproduce.py --datasets digits --seeds 0 1 2
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import covid_ct  # noqa: E402
import mnist_usps  # noqa: E402

KEYS = ("acc", "precision", "recall", "f1", "train_seconds", "epochs", "best_epoch")

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

# (result key, example methods, example row giving that key, extra example arguments); the same
# runs for every dataset
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
]
DATASETS = ("site-B", "digits")
RECIPES = {run[0]: run[1:] for run in RUNS}


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def write_markdown(results: dict, args: argparse.Namespace) -> None:
    lines = [
        "# CPU-scale reproduction of the paper's ablations",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "Commands (each run resumes or is re-evaluated when rerun):",
        "",
        "    python benchmarks/reproduce.py --epochs 20 --seeds 0 1 2",
        "    python benchmarks/reproduce.py --datasets digits --seeds 0 1 2",
        "",
        "All models are trained **from scratch** (no pretrained weights are reachable here), so",
        "the absolute numbers are far below the paper's ImageNet-pretrained ResNet-50 (200",
        "epochs, 224²); compare the ordering of the rows. Metrics in percent on the test split,",
        "mean ± std over the seeds listed per row; the epoch is chosen on the validation split,",
        "never on test.",
        "`*_norm` rows use the CPE loss with L2-normalised cells and temperature 0.1 instead of",
        "the paper's raw dot products. `full` = the `snapmix_cpe` model evaluated with the",
        "CAM-masking TTA (k = 31, θ = 0.2). `best val epochs`: the epoch the validation split",
        "selected in each run, in the order of the seeds; well before the last epoch, it says the",
        "validation accuracy had stopped improving (the convergence check).",
        "",
        "- site-B: COVID-CT official split, resnet18 at 112², 20 epochs, batch 64; TTA on a 28×28",
        "  grid of 4-pixel cells. Precision, recall and F1 with COVID as the positive class.",
        "- digits: resnet18 at 64² (a 2×2 feature map), trained on the first 200 MNIST training",
        "  digits of each class (2,000) for 15 epochs, batch 128, the epoch chosen on 200 held-out",
        "  MNIST digits per class; tested on the first 200 digits per class of the USPS test set",
        "  (1,784: some classes have fewer) and of MNIST-M's test half (2,000), with the same",
        "  model for both targets. TTA on a 32×32 grid of 2-pixel cells. Precision, recall and F1",
        "  macro-averaged over the 10 classes.",
        "",
    ]
    for dataset, rows in results.items():
        lines += [
            f"## {dataset}",
            "",
            "| method | seeds | epochs | best val epochs | accuracy | precision | recall | F1 "
            "| train s/run | paper acc | paper F1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method, entry in rows.items():
            paper = PAPER.get(dataset, {}).get(method.removesuffix("_norm"), (None, None))
            if method.endswith("_norm"):
                paper = (None, None)
            cells = [fmt(entry.get(k, [])) for k in ("acc", "precision", "recall", "f1")]
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
    for dataset, rows in results.items():
        for method, entry in rows.items():
            for seed, seconds in zip(
                entry.get("seeds", []), entry.get("train_seconds", []), strict=True
            ):
                lines.append(f"| {dataset} | {method} | {seed} | {seconds:.0f} |")
    lines.append("")
    atomic_write(args.results / "reproduce_cpu.md", "\n".join(lines))


def example_call(
    dataset: str, key: str, seed: int, args: argparse.Namespace
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Run one (dataset, run, seed) with its example script; ``{result dataset: example rows}``."""
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
        return {"site-B": covid_ct.main(argv)["B"]}
    train_n, test_n = args.digits_subset
    argv = [
        "--target", "both", "--model", "resnet18", "--img-size", str(args.digits_img_size),
        "--epochs", str(args.digits_epochs), "--out", str(args.out / f"digits_{key}"),
        "--train-subset", str(train_n), "--test-subset", str(test_n),
        "--mnistm-cache", str(args.out / "mnistm"), *common, *extra,
    ]  # fmt: skip
    return mnist_usps.main(argv)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=["site-B"])
    parser.add_argument("--epochs", type=int, default=20, help="site-B epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--img-size", type=int, default=112, help="site-B input side")
    parser.add_argument("--model", default="resnet18", help="site-B model")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reproduce")
    parser.add_argument("--runs", nargs="+", default=[r[0] for r in RUNS])
    parser.add_argument("--data", type=Path, help="COVID-CT folder (default: the data root's)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the markdown from the JSON and exit"
    )
    parser.add_argument(
        "--subset", type=int, nargs=2, metavar=("TRAIN", "TEST"), help="site-B images per class"
    )
    parser.add_argument("--digits-epochs", type=int, default=15)
    parser.add_argument("--digits-img-size", type=int, default=64)
    parser.add_argument(
        "--digits-subset",
        type=int,
        nargs=2,
        default=[200, 200],
        metavar=("TRAIN", "TEST"),
        help="MNIST training digits per class; validation and target test digits per class",
    )
    args = parser.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    json_path = args.results / "reproduce_cpu.json"
    results = load(json_path)
    if args.report_only:
        write_markdown(results, args)
        return results
    unknown = sorted(set(args.runs) - set(RECIPES))
    if unknown:
        raise SystemExit(f"--runs: unknown run(s) {unknown}; choose from {sorted(RECIPES)}")
    # per dataset, the paper's form for every seed first, then the normalised-CPE variants
    schedule = [
        (dataset, key, seed)
        for dataset in args.datasets
        for norm in (False, True)
        for seed in args.seeds
        for key in args.runs
        if key.endswith("_norm") == norm
    ]
    for dataset, key, seed in schedule:
        _, row, _ = RECIPES[key]
        start = time.perf_counter()
        example = example_call(dataset, key, seed, args)
        seconds = time.perf_counter() - start
        targets = {key: row}
        if key.startswith("snapmix_cpe"):
            targets[key.replace("snapmix_cpe", "full")] = "full+tta"
        for result_name, rows in example.items():
            for name, source in targets.items():
                entry = results.setdefault(result_name, {}).setdefault(name, {})
                seeds_done = entry.setdefault("seeds", [])
                if seed in seeds_done:  # a rerun replaces that seed's values
                    index = seeds_done.index(seed)
                    for k in KEYS:
                        if k in entry:
                            entry[k].pop(index)
                    seeds_done.pop(index)
                seeds_done.append(seed)
                for k in KEYS:
                    entry.setdefault(k, []).append(rows[source][k][-1])
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(json_path, json.dumps(results, indent=1))
        write_markdown(results, args)
        print(f"done: {dataset} {key} seed {seed} ({seconds:.0f} s including evaluation)")
    return results


if __name__ == "__main__":
    main()
