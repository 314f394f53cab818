"""Digit domain generalisation with camkit: train on MNIST, test on USPS and MNIST-M.

The digits experiment of the paper (Table 4): a timm classifier is trained on MNIST only and
tested on an unseen target domain, USPS (``--target usps``), MNIST-M (``--target mnistm``), or
both with one trained model (``--target both``, the default). The five methods mean what they
mean in ``covid_ct.py``::

    baseline      soft-target cross-entropy on one-hot labels
    cpe           + contrastive patch embedding loss (paper Eq. 1)
    snapmix       SnapMix batches (CAMs of the un-mixed batch from a frozen side pass)
    snapmix_cpe   SnapMix + contrastive patch loss
    full          snapmix_cpe training + CAM-masking test-time augmentation (k=31, θ=0.2)

and the rows are reported the same way: ``<method>`` is the plain evaluation and, with ``--tta``
(always for ``full``), ``<method>+tta`` the CAM-masking TTA evaluation; ``full`` reuses the
``snapmix_cpe`` model when both are asked for. The training loop (``common.train_run``) is the
one of ``covid_ct.py``, with ten classes.

Metrics: accuracy, and precision, recall and F1 *macro-averaged over the 10 classes*: the
unweighted mean over the classes 0-9 of each class's one-vs-rest precision, recall and
F1 = 2PR/(P+R) (0 where a class is never predicted or absent; scikit-learn's
``average="macro"`` with ``labels=range(10)`` and ``zero_division=0``).

Data (``--data``, default the staged ``shared/data`` folder):

* source: ``mnist.npz``. The last ``--val-size`` (5,000) training digits are held out as the
  validation split that picks the reported epoch; the model is trained on the others (55,000).
  The target test sets are never used for selection. ``--train-subset N`` keeps the first ``N``
  digits of every class of the training part, ``--test-subset N`` the first ``N`` of every class
  of the validation split and of each target test set.
* USPS: the 2,007 test digits of ``usps.npz`` (16×16).
* MNIST-M: built from the 10,000 MNIST test digits and ``BSDS500/images/train`` with
  :func:`camkit.datasets.build_mnist_m` (``|photo patch - digit|`` per channel), with the seed and
  cache file name that :func:`camkit.datasets.mnist_m` uses for its test half (``seed=0``), so the
  two share caches; the 60,000-image training half is not needed and not built. Cached in
  ``--mnistm-cache`` (default ``<out>/mnistm``).

Every image is resized bilinearly from its native side (28, 16 or 28) to ``--img-size``, a grey
digit is replicated to 3 channels, and the result normalised with the ImageNet mean/std, as in
``covid_ct.py``. USPS digits fill their 16×16 frame while MNIST digits sit in a 4-pixel border, so
USPS digits come out larger: that gap is part of the domain shift and is not corrected. The data
stays on the device as native-resolution uint8 tensors (MNIST's 55,000 training digits take 43 MB)
and is resized, augmented and normalised there in batches (kornia), so the hot loop needs no
DataLoader. Augmentation: no flips (digits are not mirror-symmetric); a random translation of up
to ``--translate`` pixels at MNIST's 28-pixel scale (default 2, scaled to the input side; 0 turns
it off), implemented as zero (black) padding plus a random crop.

Input size: ResNet-18 (the default model) has stride 32, so at 32² its feature map is 1×1, too
small for the contrastive patch loss, which picks 2 most and 2 least relevant cells. The default
``--img-size`` is therefore 64 (a 2×2 map); a smaller size with a CPE method fails up front with a
clear message, the model is never modified. The CAM-masking TTA cells scale with the input so
that the grid is as close to 28×28 as the side allows (2-pixel cells, a 32×32 grid, at 64²;
1-pixel cells at 32²); masked cells are filled with the MNIST training mean (in the normalised
input space), the counterpart of the paper's zero fill with dataset-mean normalisation.

Recipe: SGD with Nesterov momentum 0.9 and weight decay 1e-4 (``common.make_optimizer``),
learning rate 0.05 (batch 128, from scratch; with ``--pretrained`` the pretrained layers learn at
0.1×), ×0.1 after 40 %, 75 % and 90 % of the epochs (``common.make_scheduler``), 20 epochs.

Examples::

    # the paper's table on a GPU: all five methods, three seeds, MNIST → USPS and MNIST-M
    python examples/mnist_usps.py --out runs/digits

    # one-minute CPU smoke run (checks the plumbing; one epoch on 200 digits is not a trained
    # model, and the paper's raw-dot-product CPE slows the first epochs down: see --cpe-normalize)
    python examples/mnist_usps.py --train-subset 20 --test-subset 20 --epochs 1 \\
        --method full --seeds 0 --out /tmp/digits

    # another backbone, MNIST → MNIST-M only; continue an interrupted run
    python examples/mnist_usps.py --model resnet50 --target mnistm --out runs/r50 --resume

Outputs in ``--out``: ``results.json`` (``{"mnist-usps": {method: {"acc": [...], "precision":
[...], "recall": [...], "f1": [...], "train_seconds": [...], ...}}, "mnist-mnistm": {...}}``,
metrics in percent, one value per seed; only the targets asked for; ``train_seconds`` counts the
training epochs only; also ``best_epoch``, ``epochs``, and for ``+tta`` rows ``tta_forwards`` and
``tta_flipped``, as in ``covid_ct.py``), one checkpoint per run ``mnist_<method>_seed<k>.pt``
(written atomically after every epoch; ``--resume`` continues from it; the model does not depend
on the target, so a run trained for one target is resumed or re-evaluated for another) and the
MNIST-M cache.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    RunResult,
    add_run_arguments,
    atomic_copy,
    check_run_arguments,
    first_n_per_class,
    normalizer,
    resolve_device,
    run_config,
    tta_geometry,
    write_line,
)
from common import evaluate as common_evaluate
from common import train_run as common_train_run
from covid_ct import (  # the method vocabulary and the generic pieces of the sibling example
    CPE_PATCHES,
    JSON_KEYS,
    METHODS,
    RECIPES,
    TABLE_METRICS,
    TTA_K,
    TTA_THETA,
    check_feature_grid,
    create_model,
    pretrained_weights,
    write_json,
)

from camkit import CAMMaskingTTA
from camkit.datasets import build_mnist_m, default_data_root, load_digits_npz, usps
from camkit.metrics import classification_metrics, format_table

NUM_CLASSES = 10
MNIST_SIDE = 28
MNISTM_SEED = 0  # MNIST-M is a fixed data set: the same photo patches for every run
TARGETS = {"usps": "mnist-usps", "mnistm": "mnist-mnistm"}  # --target -> results.json key
TARGET_NAMES = {"usps": "MNIST → USPS", "mnistm": "MNIST → MNIST-M"}

DEFAULTS: dict[str, Any] = {
    "model": "resnet18",
    "img_size": 64,
    "epochs": 20,
    "method": list(METHODS),
    "seeds": [0, 1, 2],
}


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring (python -m pydoc examples/mnist_usps.py) for details.",
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        help="folder with mnist.npz, usps.npz and BSDS500/images/train (default: the staged "
        "shared/data folder, or CAMKIT_DATA)",
    )
    data.add_argument(
        "--target",
        choices=("usps", "mnistm", "both"),
        default="both",
        help="target domain(s) to test on (default both, one trained model)",
    )
    data.add_argument(
        "--mnistm-cache", type=Path, help="folder of the MNIST-M cache (default: <out>/mnistm)"
    )
    data.add_argument("--img-size", type=int, help="input side in pixels (default 64)")
    data.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="last N MNIST training digits held out for model selection (default 5000; "
        "0: report the last epoch)",
    )
    data.add_argument(
        "--translate",
        type=float,
        default=2.0,
        help="largest random shift, in pixels at MNIST's 28-px scale (default 2; 0: none)",
    )
    data.add_argument(
        "--train-subset", type=int, metavar="N", help="first N training digits per class"
    )
    data.add_argument(
        "--test-subset", type=int, metavar="N", help="first N validation and test digits per class"
    )

    add_run_arguments(
        p,
        methods=METHODS,
        epochs=20,
        batch_size=128,
        lr=0.05,
        out=Path("runs/mnist_usps"),
        out_help="results.json, checkpoints and the MNIST-M cache",
    )
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_run_arguments(parser, args)
    args.num_classes = NUM_CLASSES  # what covid_ct's create_model and pretrained_weights read
    if args.val_size < 0:
        parser.error("--val-size: expected 0 or more")
    if not args.translate >= 0:
        parser.error("--translate: expected 0 or more pixels")
    if args.mnistm_cache is None:
        args.mnistm_cache = args.out / "mnistm"
    return args


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


@dataclass
class Digits:
    """Digits resident on the device: ``images`` (N, C, h, w) uint8 at their native side (C = 1
    for grey, 3 for MNIST-M) and ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device) -> Digits:
        return Digits(self.images.to(device), self.labels.to(device))


def to_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, h, w)`` uint8 digits → ``(B, 3, size, size)`` float in ``[0, 1]``.

    Bilinear resize (antialiased when shrinking), then a grey digit replicated to 3 channels. Not
    normalised: train augmentation and evaluation normalise afterwards.
    """
    x = images.float().div_(255)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def translate_pad(img_size: int, translate: float) -> int:
    """Padding (= largest shift) in pixels at ``img_size`` for ``translate`` pixels at 28 px.

    Example:
        >>> translate_pad(64, 2.0), translate_pad(28, 2.0), translate_pad(64, 0.0)
        (5, 2, 0)
    """
    return round(translate * img_size / MNIST_SIDE)


def train_augmentation(img_size: int, translate: float) -> nn.Module:
    """Batched training augmentation of ``(B, 3, S, S)`` inputs in ``[0, 1]`` (kornia).

    A random shift by whole pixels: zero padding (black, the digits' background) by
    :func:`translate_pad` pixels and a random ``S × S`` crop, one offset per image, sampled as a
    batched integer translation. No flips. Then ImageNet normalisation.
    """
    pad = translate_pad(img_size, translate)
    layers: list[nn.Module] = []
    if pad > 0:
        layers.append(
            K.RandomCrop((img_size, img_size), padding=pad, fill=0.0, cropping_mode="resample")
        )
    layers.append(normalizer())
    return nn.Sequential(*layers)


def source_indices(
    labels: Sequence[int], val_size: int, train_subset: int | None, val_subset: int | None
) -> tuple[list[int], list[int]]:
    """MNIST training indices for training and for validation (the last ``val_size`` digits).

    Deterministic and disjoint: training indices are below ``len(labels) - val_size``, validation
    indices at or above it; each part keeps its first ``train_subset`` / ``val_subset`` digits of
    every class (all when None).

    Example:
        >>> source_indices([0, 1, 0, 1, 0, 1, 0, 1], 4, 1, None)
        ([0, 1], [4, 5, 6, 7])
    """
    n = len(labels)
    if not 0 <= val_size < n:
        raise ValueError(f"--val-size: expected 0 to {n - 1} (MNIST has {n} training digits)")
    cut = n - val_size
    train = first_n_per_class(labels[:cut], train_subset)
    val = [cut + i for i in first_n_per_class(labels[cut:], val_subset)] if val_size else []
    return train, val


def data_root(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    root = default_data_root()
    if root is None:
        raise FileNotFoundError(
            "--data: not given, and no shared/data folder was found above the working directory "
            "(set CAMKIT_DATA or pass --data PATH, the folder with mnist.npz, usps.npz and "
            "BSDS500/images/train)"
        )
    return root


def mnist_m_test(
    digits: np.ndarray, root: Path, cache_dir: Path, log: Callable[[str], None]
) -> np.ndarray:
    """MNIST-M test images ``(N, 28, 28, 3)`` uint8: the test half of ``camkit.datasets.mnist_m``.

    Same seed (derived from :data:`MNISTM_SEED` as ``mnist_m`` derives it) and cache file, built
    without the training half.
    """
    _, test_seed = (int(s) for s in np.random.SeedSequence(MNISTM_SEED).generate_state(2))
    cache = cache_dir / f"mnist_m_test_seed{MNISTM_SEED}.npz"
    log(f"  MNIST-M test set: {'cached' if cache.is_file() else 'building'} {cache}")
    return build_mnist_m(
        digits, root / "BSDS500" / "images" / "train", seed=test_seed, cache_path=cache
    )


def _digits(images: np.ndarray | torch.Tensor, labels: Any, keep: list[int]) -> Digits:
    x = torch.as_tensor(images)[keep]
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, h, w)
    return Digits(x.contiguous(), torch.as_tensor(np.asarray(labels))[keep].long())


def load_data(
    args: argparse.Namespace,
    targets: Sequence[str],
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[Digits, Digits | None, dict[str, Digits]]:
    """The MNIST train and validation splits and the target test sets, on the device."""
    root = data_root(args.data)
    log(f"data: {root}")
    source = load_digits_npz(root / "mnist.npz")
    y_train = source["y_train"].tolist()
    train_idx, val_idx = source_indices(y_train, args.val_size, args.train_subset, args.test_subset)
    train = _digits(source["x_train"], y_train, train_idx)
    val = _digits(source["x_train"], y_train, val_idx) if val_idx else None
    tests: dict[str, Digits] = {}
    for target in targets:
        if target == "usps":
            data = usps(root / "usps.npz", train=False)
            images, labels = data.images, data.targets
        else:
            images = mnist_m_test(source["x_test"], root, args.mnistm_cache, log)
            labels = source["y_test"].tolist()
        tests[target] = _digits(images, labels, first_n_per_class(labels, args.test_subset))
    return (
        train.to(device),
        val.to(device) if val is not None else None,
        {t: d.to(device) for t, d in tests.items()},
    )


# ------------------------------------------------------------------------------------------------
# model and evaluation
# ------------------------------------------------------------------------------------------------


def mask_fill(train: Digits) -> list[float]:
    """The MNIST training mean pixel in the normalised input space, per channel (TTA mask)."""
    mean = float(train.images.mean(dtype=torch.float64)) / 255
    return [
        (mean - m) / s for m, s in zip(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, strict=True)
    ]


def macro_scores(values: dict[str, float]) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 from ``classification_metrics(10, None)`` values.

    The per-class ``ppv_<c>`` (precision) and ``sensitivity_<c>`` (recall) are averaged over the
    10 classes without weights; the F1 of class ``c`` is ``2PR/(P+R)`` (0 where ``P+R = 0``),
    which equals ``2TP/(2TP+FP+FN)``, and the macro F1 its mean.
    """
    p = np.array([values[f"ppv_{c}"] for c in range(NUM_CLASSES)])
    r = np.array([values[f"sensitivity_{c}"] for c in range(NUM_CLASSES)])
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    return {
        "accuracy": values["accuracy"],
        "precision": float(p.mean()),
        "recall": float(r.mean()),
        "f1": float(f1.mean()),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    digits: Digits,
    *,
    img_size: int,
    batch_size: int,
    tta: CAMMaskingTTA | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 (:func:`macro_scores`) on resident digits.

    ``common.evaluate`` for ten classes and native-resolution digits: each batch is resized with
    :func:`to_input` and normalised on the device. With ``tta`` also ``tta_forwards`` (mean
    image-forwards per test image) and ``tta_flipped`` (labels the vote flipped).
    """
    values = common_evaluate(
        model,
        digits.images,
        digits.labels,
        batch_size=batch_size,
        tta=tta,
        channels_last=channels_last,
        metrics=classification_metrics(NUM_CLASSES, positive_class=None),
        to_unit=lambda batch: to_input(batch, img_size),
    )
    scores = macro_scores(values)
    scores.update({k: values[k] for k in ("tta_forwards", "tta_flipped") if k in values})
    return scores


# ------------------------------------------------------------------------------------------------
# one training run
# ------------------------------------------------------------------------------------------------


def checkpoint_path(args: argparse.Namespace, method: str, seed: int) -> Path:
    return args.out / f"mnist_{method}_seed{seed}.pt"


def train_run(
    args: argparse.Namespace,
    method: str,
    seed: int,
    train: Digits,
    val: Digits | None,
    backbone: dict[str, torch.Tensor] | None,
    device: torch.device,
    log: Callable[[str], None],
) -> RunResult:
    """Train one (method, seed) run on MNIST with :func:`common.train_run`; return its weights."""
    use_snapmix, use_cpe = RECIPES[method]
    torch.manual_seed(seed)
    model = create_model(args, device, backbone)
    augment = train_augmentation(args.img_size, args.translate).to(device)
    channels_last = device.type == "cuda"

    def batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return augment(to_input(train.images[idx], args.img_size)), train.labels[idx]

    def val_accuracy(model: nn.Module) -> float:
        return evaluate(
            model, val, img_size=args.img_size, batch_size=args.batch_size,
            channels_last=channels_last,
        )["accuracy"]  # fmt: skip

    return common_train_run(
        args,
        model,
        use_snapmix=use_snapmix,
        use_cpe=use_cpe,
        num_classes=NUM_CLASSES,
        num_train=len(train),
        batch=batch,
        val_accuracy=None if val is None else val_accuracy,
        ckpt_path=checkpoint_path(args, method, seed),
        config=run_config(
            args,
            RECIPES[method],
            seed,
            source="mnist",  # the target is free: one model serves every target
            translate=args.translate,
            val_size=args.val_size,
        ),
        seed=seed,
        device=device,
        log=log,
        desc=f"{method} seed {seed}",
        cpe_patches=CPE_PATCHES,
    )


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


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
    targets = ["usps", "mnistm"] if args.target == "both" else [args.target]
    log(
        f"{args.model} at {args.img_size} px on {device}: {grid[0]}×{grid[1]} feature map; "
        f"methods {', '.join(args.method)}; seeds {args.seeds}; {args.epochs} epochs; "
        f"MNIST → {', '.join(TARGET_NAMES[t].split(' → ')[1] for t in targets)}"
    )
    backbone = pretrained_weights(args)

    train, val, tests = load_data(args, targets, device, log)
    fill = mask_fill(train)
    log(
        f"train {len(train)} MNIST digits, val "
        f"{len(val) if val else 'none (last epoch is reported)'}, "
        + ", ".join(f"test {TARGET_NAMES[t].split(' → ')[1]} {len(tests[t])}" for t in targets)
        + f"; random shift up to {translate_pad(args.img_size, args.translate)} px, no flips"
    )
    if any(r.endswith("+tta") for r in rows):
        log(
            f"CAM-masking TTA: {patch}×{patch}-pixel cells ({math.isqrt(cells)}×"
            f"{math.isqrt(cells)} grid), k = {k} masks, θ = {TTA_THETA}, masked cells filled "
            f"with the MNIST training mean ({', '.join(f'{v:.2f}' for v in fill)} normalised)"
        )

    results: dict[str, dict[str, dict[str, list[float]]]] = {
        TARGETS[t]: {r: {} for r in rows} for t in targets
    }
    trained: dict[tuple[tuple[bool, bool], int], tuple[str, RunResult]] = {}
    channels_last = device.type == "cuda"
    for method in args.method:
        for seed in args.seeds:
            recipe = RECIPES[method]
            ckpt_path = checkpoint_path(args, method, seed)
            if (recipe, seed) in trained:
                source, run = trained[(recipe, seed)]
                log(f"{method} seed {seed}: same training recipe as {source}, reusing its model")
                source_path = checkpoint_path(args, source, seed)
                if source_path.is_file():  # so that --resume finds this method's run too
                    atomic_copy(source_path, ckpt_path)
            else:
                log(f"{method} seed {seed}:")
                run = train_run(args, method, seed, train, val, backbone, device, log)
                later = args.method[args.method.index(method) + 1 :]
                if any(RECIPES[m] == recipe for m in later):  # e.g. snapmix_cpe, then full
                    trained[(recipe, seed)] = (method, run)
            model = create_model(args, device, state=run.state).eval()
            tta = CAMMaskingTTA(model, k=k, theta=TTA_THETA, patch_size=patch, mask_value=fill)
            for target in targets:
                for row in (method, f"{method}+tta"):
                    if row not in rows:
                        continue
                    values = evaluate(
                        model,
                        tests[target],
                        img_size=args.img_size,
                        batch_size=args.batch_size,
                        tta=tta if row.endswith("+tta") else None,
                        channels_last=channels_last,
                    )
                    entry = results[TARGETS[target]][row]
                    for metric, key in JSON_KEYS.items():
                        entry.setdefault(key, []).append(100.0 * values[metric])
                    entry.setdefault("train_seconds", []).append(run.train_seconds)
                    entry.setdefault("best_epoch", []).append(run.best_epoch)
                    entry.setdefault("epochs", []).append(run.epochs)
                    if "tta_forwards" in values:
                        entry.setdefault("tta_forwards", []).append(values["tta_forwards"])
                        entry.setdefault("tta_flipped", []).append(values["tta_flipped"])
                    log(
                        f"  {TARGET_NAMES[target]} {row}: "
                        + ", ".join(f"{key} {entry[key][-1]:.2f}" for key in JSON_KEYS.values())
                        + f" (epoch {run.best_epoch})"
                    )
    write_json(results, args.out / "results.json")

    selection = "best epoch on the MNIST hold-out" if val is not None else "last epoch"
    for target in targets:
        n_test = len(tests[target])
        table_rows = {
            row: {m: [v / 100.0 for v in entry[JSON_KEYS[m]]] for m in TABLE_METRICS}
            for row, entry in results[TARGETS[target]].items()
        }
        print(
            f"\n{TARGET_NAMES[target]}: target test set ({n_test} images), {selection}, "
            f"mean ± std over seeds {args.seeds}; precision, recall, F1 macro-averaged over "
            f"the {NUM_CLASSES} classes"
        )
        print(format_table(table_rows, metrics=list(TABLE_METRICS)))
        for row, entry in results[TARGETS[target]].items():
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
