"""COVID-19 CT classification with camkit: SnapMix, the contrastive patch loss and CAM-masking TTA.

Trains a timm classifier on the UCSD COVID-CT dataset ("site B"), the SARS-CoV-2 CT-scan dataset
("site A"), both jointly (evaluated per site), or COVIDx-CT (``--site X``: three classes, Normal,
Pneumonia, COVID-19), with one of five methods, and reports accuracy, precision, recall and F1 of
the COVID class (mean ± std over seeds), and for COVIDx-CT also each class's sensitivity and PPV::

    baseline      soft-target cross-entropy on one-hot labels
    cpe           + contrastive patch embedding loss (paper Eq. 1)
    snapmix       SnapMix batches (CAMs of the un-mixed batch from a frozen side pass)
    snapmix_cpe   SnapMix + contrastive patch loss
    full          snapmix_cpe training + CAM-masking test-time augmentation (k=31, θ=0.2)

The training step runs the model once per batch with autograd: with SnapMix, the CAMs that weight
the mixed labels come from a no-grad side pass over the un-mixed batch that leaves BatchNorm
statistics untouched (:meth:`camkit.CAMExtractor.forward_frozen`); the training forward then gives
logits, features and the CAM of each (mixed) image's dominant label together, and that CAM ranks
the cells for the contrastive patch loss.

Every method reports the plain evaluation as ``<method>`` and, with ``--tta`` (always for
``full``), the CAM-masking TTA evaluation as ``<method>+tta``; ``full+tta`` is the paper's "full
method" and ``full`` its plain evaluation (the snapmix_cpe recipe: when both are asked for, the
model is trained once per seed).

Recipe (the released code's, see ``spec.md`` §5): SGD with Nesterov momentum 0.9, weight decay
1e-4, learning rate 1e-2 (with ``--pretrained``: 1e-3 for the pretrained layers, 1e-2 for the new
classifier), ×0.1 after 40 %, 75 % and 90 % of the epochs (80/150/180 of 200), batch 64, ImageNet
mean/std; train: Resize to ``round(img*256/224)`` square → RandomCrop(img) → horizontal and
vertical flips; test: Resize((img, img)). Unlike the released code the reported epoch is chosen on
the validation split (site B and COVIDx-CT; the pooled validation images with ``--site both``),
or is the last epoch when there is none (site A) — never on the test set.

COVIDx-CT (``--site X``): the images of ``--data-x`` with the list files
``{train,val,test}_COVIDx_CT-<version>.txt`` (``--covidx-version``, default 3A) in that folder or
in ``--covidx-lists``; each image is cropped to its list box before resizing.

Every image is decoded once (and cached in ``--out``); the train set stays on the device as a uint8
tensor and is cropped, flipped and normalised there in batches (kornia), so the hot loop needs no
DataLoader. On CUDA the model runs in bf16 autocast and channels-last.

Examples::

    # two-to-four-minute CPU demo: ResNet-18 at 112 px, SnapMix + CPE with and without the TTA
    python examples/covid_ct.py --demo --out /tmp/demo

    # the paper's site-B table, ImageNet-pretrained ResNet-50, three seeds, on a GPU
    python examples/covid_ct.py --model resnet50 --pretrained --epochs 200 --seeds 0 1 2 \\
        --method baseline snapmix snapmix_cpe full --out runs/site_b

    # COVIDx-CT (3 classes, per-class sensitivity/PPV), images and list files in one folder
    python examples/covid_ct.py --site X --data-x /data/COVIDx-CT --model resnet50 --pretrained \\
        --method baseline full --out runs/covidx

    # joint site A + B training, evaluated per site; continue an interrupted run
    python examples/covid_ct.py --site both --data-a /data/SARS-CoV-2-CT --model resnet50 \\
        --pretrained --method full --out runs/joint --resume

Outputs in ``--out``: ``results.json`` (``{site: {method: {"acc": [...], "precision": [...],
"recall": [...], "f1": [...], "train_seconds": [...], ...}}}``, metrics in percent, one value per
seed; ``train_seconds`` counts the training epochs only, not validation or checkpoint writing; also
``best_epoch`` and ``epochs``, and for ``+tta`` rows ``tta_forwards``, the mean image-forwards per
test image, and ``tta_flipped``, the labels the vote flipped; for COVIDx-CT also
``sensitivity_<class>`` and ``ppv_<class>`` of each class), one checkpoint per run
``<site>_<method>_seed<k>.pt`` (written after every epoch; ``--resume`` continues from it) and the
decoded-image caches ``cache_<site>_<size>.pt``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import timm.loss
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ImageCache,
    RunResult,
    add_run_arguments,
    atomic_copy,
    check_run_arguments,
    evaluate,
    first_n_per_class,
    resolve_device,
    run_config,
    train_augmentation,
    train_resize,
    tta_geometry,
    write_line,
)
from common import train_run as common_train_run

from camkit import CAMExtractor, CAMMaskingTTA
from camkit.datasets import COVIDCT, COVIDxCT, SARSCoV2CT, default_data_root
from camkit.metrics import format_table

METHODS = ("baseline", "cpe", "snapmix", "snapmix_cpe", "full")
RECIPES = {  # method -> (SnapMix batches, contrastive patch loss)
    "baseline": (False, False),
    "cpe": (False, True),
    "snapmix": (True, False),
    "snapmix_cpe": (True, True),
    "full": (True, True),
}
CLASS_NAMES = ("NonCOVID", "COVID")
COVIDX_CLASS_NAMES = ("Normal", "Pneumonia", "COVID-19")
SITE_NAMES = {"A": "SARS-CoV-2 CT (site A)", "B": "COVID-CT (site B)", "X": "COVIDx-CT"}
TABLE_METRICS = ("accuracy", "precision", "recall", "f1")
JSON_KEYS = {"accuracy": "acc", "precision": "precision", "recall": "recall", "f1": "f1"}
CPE_PATCHES = 2
TTA_K, TTA_THETA = 31, 0.2

DEFAULTS: dict[str, Any] = {
    "model": "resnet18",
    "img_size": 224,
    "epochs": 200,
    "method": list(METHODS),
    "seeds": [0, 1, 2],
}
DEMO: dict[str, Any] = {
    "model": "resnet18",
    "img_size": 112,
    "epochs": 16,  # about 3 minutes on 2 CPU cores, TTA included
    "method": ["snapmix_cpe"],
    "seeds": [0],
}


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring (python -m pydoc examples/covid_ct.py) for details.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, help="COVID-CT folder (default: <data root>/COVID-CT)")
    data.add_argument(
        "--data-a", type=Path, help="SARS-CoV-2 CT folder (default: <data root>/SARS-CoV-2-CT)"
    )
    data.add_argument(
        "--data-x", type=Path, help="COVIDx-CT image folder (default: <data root>/COVIDx-CT)"
    )
    data.add_argument(
        "--covidx-lists", type=Path, help="folder of the COVIDx-CT list files (default: --data-x)"
    )
    data.add_argument(
        "--covidx-version", default="3A", help="COVIDx-CT list version, e.g. 2A or 3A (default)"
    )
    data.add_argument(
        "--site",
        choices=("A", "B", "both", "X"),
        default="B",
        help="B: COVID-CT (default), A: SARS-CoV-2 CT, both: joint training, per-site test; "
        "X: COVIDx-CT (3 classes)",
    )
    data.add_argument("--img-size", type=int, help="input side in pixels (default 224)")
    data.add_argument(
        "--train-subset", type=int, metavar="N", help="first N train images per class"
    )
    data.add_argument(
        "--test-subset", type=int, metavar="N", help="first N val and test images per class"
    )
    data.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="threads decoding images (once; later runs read the cache)",
    )

    train = add_run_arguments(
        p,
        methods=METHODS,
        epochs=200,
        batch_size=64,
        lr=1e-2,
        out=Path("runs/covid_ct"),
        out_help="results.json, checkpoints and image caches",
    )
    train.add_argument(
        "--demo",
        action="store_true",
        help="preset: resnet18, 112 px, 16 epochs, snapmix_cpe with TTA, seed 0 "
        "(a few minutes on a CPU); explicit options still win",
    )
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = DEMO if args.demo else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.demo:
        args.tta = True
    check_run_arguments(parser, args, positive=("workers",))
    args.class_names = COVIDX_CLASS_NAMES if args.site == "X" else CLASS_NAMES
    args.num_classes = len(args.class_names)
    return args


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """A split resident on the device: ``images`` (N, 3, S, S) uint8 and ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    @staticmethod
    def cat(splits: Sequence[Split]) -> Split:
        return Split(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]))


def data_folder(explicit: Path | None, name: str, flag: str) -> Path:
    if explicit is not None:
        return explicit
    root = default_data_root()
    if root is None:
        raise FileNotFoundError(
            f"{flag}: not given, and no shared/data folder was found above the working directory "
            f"(set CAMKIT_DATA or pass {flag} PATH/{name})"
        )
    return root / name


def load_site(
    site: str, args: argparse.Namespace, device: torch.device, log: Callable[[str], None]
) -> dict[str, Split]:
    """Decode (or read from the cache) one site's splits and move them to the device."""
    if site == "B":
        root = data_folder(args.data, "COVID-CT", "--data")
        datasets = {s: COVIDCT(root, split=s) for s in ("train", "val", "test")}
    elif site == "X":
        root = data_folder(args.data_x, "COVIDx-CT", "--data-x")
        lists = args.covidx_lists or root
        datasets = {
            s: COVIDxCT(root, lists / f"{s}_COVIDx_CT-{args.covidx_version}.txt")
            for s in ("train", "val", "test")
        }
    else:
        root = data_folder(args.data_a, "SARS-CoV-2-CT", "--data-a")
        if not root.is_dir():
            raise FileNotFoundError(
                f"--data-a: the SARS-CoV-2 CT-scan dataset (site A) is not at {root}; download it "
                "(folders COVID/ and non-COVID/) and pass --data-a PATH"
            )
        datasets = {s: SARSCoV2CT(root, split=s, seed=0) for s in ("train", "test")}
    cache = ImageCache(args.out / f"cache_{site}_{args.img_size}.pt", log)
    log(f"site {site}: {root}")
    splits = {}
    for name, dataset in datasets.items():
        subset = args.train_subset if name == "train" else args.test_subset
        keep = first_n_per_class(dataset.targets, subset)
        size = train_resize(args.img_size) if name == "train" else args.img_size
        images = cache.images(dataset, keep, size, args.workers)
        labels = torch.tensor([dataset.targets[i] for i in keep], dtype=torch.long)
        splits[name] = Split(images.to(device), labels.to(device))
    cache.save()
    return splits


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------


def pretrained_weights(args: argparse.Namespace) -> dict[str, torch.Tensor] | None:
    """timm's ImageNet weights of the backbone (fetched once for all seeds), or None."""
    if not args.pretrained:
        return None
    try:
        model = timm.create_model(args.model, pretrained=True, num_classes=args.num_classes)
    except Exception as err:
        raise RuntimeError(
            f"--pretrained: could not load the ImageNet weights of {args.model!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). timm "
            "downloads them from the Hugging Face Hub on first use and caches them (HF_HOME); "
            "on an offline machine copy the cache over first (HF_HUB_OFFLINE=1 skips the "
            "retries), or pass --checkpoint PATH, or drop --pretrained"
        ) from err
    head = {f"{name}." for name, mod in model.named_modules() if mod is model.get_classifier()}
    return {k: v for k, v in model.state_dict().items() if not any(k.startswith(h) for h in head)}


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``path``: a bare one, or a camkit run checkpoint (its selected weights)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        return state.get("best_state") or state["model"]
    if isinstance(state, dict) and "state_dict" in state:
        return state["state_dict"]
    return state


def create_model(
    args: argparse.Namespace,
    device: torch.device,
    backbone: dict[str, torch.Tensor] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """A new model on ``device``: ``state`` if given, else pretrained backbone and --checkpoint."""
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
    if state is not None:
        model.load_state_dict(state)
    elif backbone is not None:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        head = {name for name, _ in model.get_classifier().named_parameters()}
        if unexpected or len(missing) != len(head):
            raise RuntimeError(f"--pretrained: weights do not fit {args.model}: {missing=}")
    if state is None and args.checkpoint is not None:
        try:
            model.load_state_dict(read_checkpoint(args.checkpoint))
        except RuntimeError as err:
            raise RuntimeError(
                f"--checkpoint {args.checkpoint}: not a state_dict of {args.model} with "
                f"{args.num_classes} classes "
                f"({err})"
            ) from err
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def check_feature_grid(args: argparse.Namespace) -> tuple[int, int]:
    """The model's feature grid at ``--img-size``; fail early if CPE cannot pick its cells."""
    model = timm.create_model(args.model, pretrained=False, num_classes=2).eval()
    with torch.no_grad():
        out = CAMExtractor(model)(torch.zeros(1, 3, args.img_size, args.img_size))
    h, w = out.cams.shape[-2:]
    if any(RECIPES[m][1] for m in args.method) and h * w < 2 * CPE_PATCHES:
        raise ValueError(
            f"--img-size {args.img_size}: {args.model} gives a {h}×{w} feature map, but the "
            f"contrastive patch loss needs at least {2 * CPE_PATCHES} cells ({CPE_PATCHES} most "
            "and least relevant); use a larger --img-size (64 or more for a stride-32 network)"
        )
    return h, w


# ------------------------------------------------------------------------------------------------
# one training run
# ------------------------------------------------------------------------------------------------


def train_run(
    args: argparse.Namespace,
    method: str,
    seed: int,
    train: Split,
    val: Split | None,
    backbone: dict[str, torch.Tensor] | None,
    device: torch.device,
    log: Callable[[str], None],
) -> RunResult:
    """Train one (method, seed) run with :func:`common.train_run`; return the selected weights."""
    use_snapmix, use_cpe = RECIPES[method]
    torch.manual_seed(seed)
    model = create_model(args, device, backbone)
    augment = train_augmentation(args.img_size).to(device)
    channels_last = device.type == "cuda"

    def batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return augment(train.images[idx].float().div_(255)), train.labels[idx]  # crop, flip, norm.

    def val_accuracy(model: nn.Module) -> float:
        return evaluate(
            model,
            val.images,
            val.labels,
            batch_size=args.batch_size,
            class_names=args.class_names,
            channels_last=channels_last,
        )["accuracy"]

    return common_train_run(
        args,
        model,
        use_snapmix=use_snapmix,
        use_cpe=use_cpe,
        num_classes=args.num_classes,
        num_train=len(train),
        batch=batch,
        val_accuracy=None if val is None else val_accuracy,
        ckpt_path=args.out / f"{args.site}_{method}_seed{seed}.pt",
        config=run_config(args, RECIPES[method], seed, site=args.site),
        seed=seed,
        device=device,
        log=log,
        desc=f"{method} seed {seed}",
        cpe_patches=CPE_PATCHES,
    )


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def write_json(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(obj, handle, indent=2)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Run the example; return the results written to ``--out/results.json``."""
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else write_line
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)

    grid = check_feature_grid(args)
    patch, cells, k = tta_geometry(args.img_size, TTA_K)
    rows = [
        m
        for method in args.method
        for m in (method, f"{method}+tta")[: 2 if (args.tta or method == "full") else 1]
    ]
    log(
        f"{args.model} at {args.img_size} px on {device}: {grid[0]}×{grid[1]} feature map; "
        f"methods {', '.join(args.method)}; seeds {args.seeds}; {args.epochs} epochs"
    )
    if any(r.endswith("+tta") for r in rows):
        log(
            f"CAM-masking TTA: {patch}×{patch}-pixel cells ({math.isqrt(cells)}×"
            f"{math.isqrt(cells)} grid), k = {k} masks, θ = {TTA_THETA}"
        )
    backbone = pretrained_weights(args)

    sites = ["A", "B"] if args.site == "both" else [args.site]
    data = {site: load_site(site, args, device, log) for site in sites}
    train = Split.cat([data[s]["train"] for s in sites])
    vals = [data[s]["val"] for s in sites if "val" in data[s]]
    val = Split.cat(vals) if vals else None
    log(
        f"train {len(train)} images, val {len(val) if val else 'none (last epoch is reported)'}, "
        + ", ".join(f"test {s} {len(data[s]['test'])}" for s in sites)
    )

    results: dict[str, dict[str, dict[str, list[float]]]] = {
        s: {r: {} for r in rows} for s in sites
    }
    # COVIDx-CT (three classes) also reports each class's sensitivity and PPV, as the paper does
    per_class = (
        [f"{m}_{name}" for name in args.class_names for m in ("sensitivity", "ppv")]
        if args.site == "X"
        else []
    )
    json_keys = {**JSON_KEYS, **{m: m for m in per_class}}
    trained: dict[tuple[tuple[bool, bool], int], tuple[str, RunResult]] = {}
    channels_last = device.type == "cuda"
    for method in args.method:
        for seed in args.seeds:
            recipe = RECIPES[method]
            ckpt_path = args.out / f"{args.site}_{method}_seed{seed}.pt"
            if (recipe, seed) in trained:
                source, run = trained[(recipe, seed)]
                log(f"{method} seed {seed}: same training recipe as {source}, reusing its model")
                source_path = args.out / f"{args.site}_{source}_seed{seed}.pt"
                if source_path.is_file():  # so that --resume finds this method's run too
                    atomic_copy(source_path, ckpt_path)
            else:
                log(f"{method} seed {seed}:")
                run = train_run(args, method, seed, train, val, backbone, device, log)
                later = args.method[args.method.index(method) + 1 :]
                if any(RECIPES[m] == recipe for m in later):  # e.g. snapmix_cpe, then full
                    trained[(recipe, seed)] = (method, run)
            model = create_model(args, device, state=run.state).eval()
            tta = CAMMaskingTTA(model, k=k, theta=TTA_THETA, patch_size=patch)
            for site in sites:
                test = data[site]["test"]
                for row in (method, f"{method}+tta"):
                    if row not in rows:
                        continue
                    values = evaluate(
                        model,
                        test.images,
                        test.labels,
                        batch_size=args.batch_size,
                        class_names=args.class_names,
                        channels_last=channels_last,
                        tta=tta if row.endswith("+tta") else None,
                    )
                    entry = results[site][row]
                    for metric, key in json_keys.items():
                        entry.setdefault(key, []).append(100.0 * values[metric])
                    entry.setdefault("train_seconds", []).append(run.train_seconds)
                    entry.setdefault("best_epoch", []).append(run.best_epoch)
                    entry.setdefault("epochs", []).append(run.epochs)
                    if "tta_forwards" in values:
                        entry.setdefault("tta_forwards", []).append(values["tta_forwards"])
                        entry.setdefault("tta_flipped", []).append(values["tta_flipped"])
                    log(
                        f"  site {site} {row}: "
                        + ", ".join(f"{key} {entry[key][-1]:.2f}" for key in JSON_KEYS.values())
                        + f" (epoch {run.best_epoch})"
                    )
    write_json(results, args.out / "results.json")

    for site in sites:
        n_test = len(data[site]["test"])
        table_rows = {
            row: {m: [v / 100.0 for v in entry[json_keys[m]]] for m in (*TABLE_METRICS, *per_class)}
            for row, entry in results[site].items()
        }
        selection = "best validation epoch" if val is not None else "last epoch"
        print(
            f"\n{SITE_NAMES[site]}: test set ({n_test} images), {selection}, "
            f"mean ± std over seeds {args.seeds}"
        )
        print(format_table(table_rows, metrics=[*TABLE_METRICS, *per_class]))
        for row, entry in results[site].items():
            if "tta_forwards" in entry:
                forwards = sum(entry["tta_forwards"]) / len(entry["tta_forwards"])
                print(
                    f"{row}: {forwards:.1f} image-forwards per test image on average "
                    f"(k = {k}), labels flipped per seed: {entry['tta_flipped']} of {n_test}"
                )
    print(f"\nresults: {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
