"""Digit domain generalisation with camkit: train on MNIST, test on USPS and MNIST-M.

The digits experiment of the paper (Table 4): a timm classifier is trained on MNIST only and
tested on unseen target domains, USPS (``--target usps``), MNIST-M (``--target mnistm``), or both
with one trained model (default). The methods are those of ``covid_ct.py``: ``baseline``, ``cpe``
(+ contrastive patch loss), ``snapmix``, ``snapmix_cpe``, and ``full`` (snapmix_cpe training +
CAM-masking TTA, k=31, θ=0.2); ``<method>`` rows are the plain evaluation and ``<method>+tta``
(with ``--tta``, always for ``full``) the TTA one; ``full`` reuses the ``snapmix_cpe`` model.

The script reads top to bottom: options, data, model, then :func:`train` — a
:class:`camkit.TrainStep` and one loop — and :func:`main`.

Metrics: accuracy, and precision, recall and F1 macro-averaged over the 10 classes (each class's
one-vs-rest score, 0 where undefined; scikit-learn's ``average="macro"``, ``zero_division=0``).

Data (``--data``, default the staged ``shared/data`` folder): ``mnist.npz`` — the last
``--val-size`` (5,000) training digits are the validation split that picks the reported epoch;
``usps.npz`` — the 2,007 test digits (16×16), each framed as MNIST frames its digits (20×20 in
28×28, :func:`camkit.frame_like_mnist`; ``--no-usps-frame``: resized as they are); MNIST-M — the
test half of :func:`camkit.datasets.mnist_m` (seed 0, built from MNIST's test digits and BSDS500,
cached in ``--mnistm-cache``). ``--train-subset N`` keeps the first N digits of every class for
training, ``--test-subset N`` of the validation split and of each test set. Digits stay on the
device at their native size as uint8 and are resized bilinearly to ``--img-size``, grey replicated
to RGB, ImageNet-normalised; augmentation: a random shift of up to ``--translate`` pixels at 28 px
(zero padding and a random crop), no flips. ResNet-18 has stride 32, so the default ``--img-size``
is 64 (a 2×2 feature map, the least the contrastive patch loss can use). The TTA cells scale with
the input (2-pixel cells, a 32×32 grid, at 64²) and masked cells take the MNIST training mean.

Recipe: SGD, Nesterov momentum 0.9, weight decay 1e-4, lr 0.05, batch 128, from scratch, ×0.1
after 40 %, 75 % and 90 % of 20 epochs. Variants, as in ``covid_ct.py``: ``--cpe-normalize``,
``--cpe-temperature``, ``--cpe-weight`` (λ), ``--snapmix-cams mixed`` (no extra forward) train
differently, so a resumed run must keep them. The CPE's default is the recommended form
(L2-normalised, τ = 0.1, λ = 1); the paper's Eq. 1 is ``--no-cpe-normalize --cpe-temperature 1``.
``--tta-rule`` and ``--tta-theta`` only change the evaluation (a finished run can be re-evaluated
with them).

Examples::

    python examples/mnist_usps.py --out runs/digits                 # the table, on a GPU
    python examples/mnist_usps.py --train-subset 20 --test-subset 20 --epochs 1 \\
        --method full --seeds 0 --out /tmp/digits                    # a one-minute smoke run

Outputs in ``--out``: ``results.json`` (merged ``{"rows": [...]}``, one row per target, method and
seed, as in ``covid_ct.py``; ``dataset`` is ``mnist-usps`` or ``mnist-mnistm``), one checkpoint
per run ``mnist_<method>_seed<k>.pt`` (the model does not depend on the target, so a run trained
for one target is resumed or re-evaluated for another), the MNIST-M cache, and with
``--figures`` the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tqdm.auto import tqdm

from camkit import CAMExtractor, CAMMaskingTTA, ContrastivePatchLoss, SnapMix, TrainStep
from camkit.datasets import build_mnist_m, frame_like_mnist, load_digits_npz, usps
from camkit.io import (
    atomic_save,
    atomic_write_bytes,
    clean_stale_temps,
    load_checkpoint,
    merge_results,
)
from camkit.metrics import classification_metrics, evaluate, format_table

METHODS = ("baseline", "cpe", "snapmix", "snapmix_cpe", "full")
RECIPES = {  # method -> (SnapMix batches, contrastive patch loss)
    "baseline": (False, False),
    "cpe": (False, True),
    "snapmix": (True, False),
    "snapmix_cpe": (True, True),
    "full": (True, True),
}
NUM_CLASSES, MNIST_SIDE = 10, 28
TARGETS = {"usps": "mnist-usps", "mnistm": "mnist-mnistm"}  # --target -> results dataset
TARGET_NAMES = {"usps": "USPS", "mnistm": "MNIST-M"}
METRICS = {"accuracy": "acc", "precision": "precision", "recall": "recall", "f1": "f1"}
CPE_PATCHES, TTA_K, TTA_THETA, TTA_RELATIVE_THETA = 2, 31, 0.2, 0.5
TTA_RULES = ("threshold", "argmax", "relative")  # CAMMaskingTTA's vote rules (threshold: paper)
ROW_KEY = ("dataset", "method", "seed", "settings")  # a result row replaces the row of equal key
MILESTONES = (0.4, 0.75, 0.9)  # lr ×0.1 after these fractions of the epochs
SETTINGS = (  # what a run checkpoint must agree on to be resumed (epochs may grow)
    *("model", "pretrained", "img_size", "batch_size", "lr", "cpe_normalize", "cpe_temperature"),
    *("cpe_weight", "snapmix_cams", "train_subset", "test_subset", "translate", "val_size"),
)
IMPLIED = {"cpe_weight": 1.0, "snapmix_cams": "unmixed"}  # what checkpoints without them used


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--data", type=Path, help="folder with mnist.npz, usps.npz, BSDS500 (default: data root)")
    add("--target", choices=("usps", "mnistm", "both"), default="both", help="default both")
    add("--mnistm-cache", type=Path, help="folder of the MNIST-M cache (default <out>/mnistm)")
    add(
        "--usps-frame",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="frame each USPS digit as MNIST does, 20×20 in 28×28 (default; --no-usps-frame: "
        "the 16×16 digit resized as it is)",
    )
    add("--img-size", type=int, default=64, help="input side in pixels (default 64)")
    add("--val-size", type=int, default=5000, help="last N MNIST digits held out (0: none)")
    add("--translate", type=float, default=2.0, help="largest shift in px at 28 px (default 2)")
    add("--train-subset", type=int, metavar="N", help="first N training digits per class")
    add("--test-subset", type=int, metavar="N", help="first N val and test digits per class")
    add("--model", default="resnet18", help="timm model name (default resnet18)")
    add("--pretrained", action="store_true", help="start from timm's ImageNet weights")
    add("--checkpoint", type=Path, help="state_dict or camkit run checkpoint to start from")
    add("--method", nargs="+", choices=METHODS, default=list(METHODS), help="default: all five")
    add("--tta", action="store_true", help="also evaluate with CAM-masking TTA (always for full)")
    add(
        "--cpe-normalize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="L2-normalise the CPE cells (default; --no-cpe-normalize: the paper's raw cells)",
    )
    add(
        "--cpe-temperature",
        type=float,
        default=0.1,
        help="CPE temperature τ (default 0.1; paper: 1)",
    )
    add("--cpe-weight", type=float, default=1.0, metavar="λ", help="CPE term weight (paper: 1)")
    add(
        "--snapmix-cams",
        choices=("unmixed", "mixed"),
        default="unmixed",
        help="SnapMix label weights from the CAMs of the unmixed images (default: exact SnapMix, "
        "one extra forward) or of the mixed ones (no extra forward)",
    )
    add(
        "--tta-rule",
        choices=TTA_RULES,
        default="threshold",
        help="TTA vote rule (paper: threshold)",
    )
    add(
        "--tta-theta",
        type=float,
        metavar="θ",
        help=f"TTA vote threshold (default {TTA_THETA}; {TTA_RELATIVE_THETA} with --tta-rule "
        "relative, a fraction of the unmasked confidence; unused by argmax)",
    )
    add("--epochs", type=int, default=20, help="training epochs (default 20; 0: evaluate only)")
    add("--batch-size", type=int, default=128, help="default 128")
    add("--lr", type=float, default=0.05, help="new layers' lr; pretrained ones get 0.1×")
    add("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add("--out", type=Path, default=Path("runs/mnist_usps"), help="results, checkpoints, cache")
    add("--resume", action="store_true", help="continue (or re-evaluate) the runs in --out")
    add("--overwrite", action="store_true", help="train the runs in --out again from scratch")
    add("--log-every", type=int, default=10, help="read the loss back every N steps")
    add("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    add("--figures", action="store_true", help="write every figure kind for each run")
    args = p.parse_args(argv)

    args.method, args.seeds = list(dict.fromkeys(args.method)), list(dict.fromkeys(args.seeds))
    for name in ("img_size", "batch_size", "log_every"):
        if getattr(args, name) < 1:
            p.error(
                f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}"
            )
    if args.batch_size < 2:
        p.error("--batch-size: BatchNorm training needs at least 2 images per batch")
    if args.epochs < 0 or args.val_size < 0 or not args.translate >= 0:
        p.error("--epochs, --val-size, --translate: expected 0 or more")
    if not args.cpe_weight >= 0:
        p.error(f"--cpe-weight: expected 0 or more, got {args.cpe_weight}")
    if args.tta_theta is None:
        args.tta_theta = TTA_RELATIVE_THETA if args.tta_rule == "relative" else TTA_THETA
    if not 0 <= args.tta_theta <= 1:
        p.error(f"--tta-theta: expected a value in [0, 1], got {args.tta_theta}")
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected at least 1 digit per class")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite: choose one (continue the runs, or start them again)")
    args.mnistm_cache = args.mnistm_cache or args.out / "mnistm"
    args.num_classes, args.class_names = NUM_CLASSES, [str(c) for c in range(NUM_CLASSES)]
    for method in args.method:  # a finished or half-done run is never silently trained again
        for seed in args.seeds:
            path = checkpoint_path(args, method, seed)
            if path.exists() and not (args.resume or args.overwrite):
                p.error(
                    f"{path} exists: pass --resume to continue or re-evaluate that run, or "
                    "--overwrite to train it again from scratch (or choose another --out)"
                )
    return args


def checkpoint_path(args: argparse.Namespace, method: str, seed: int) -> Path:
    return args.out / f"mnist_{method}_seed{seed}.pt"


# ------------------------------------------------------------------------------------------------
# data: native-size uint8 digits, resident on the device
# ------------------------------------------------------------------------------------------------


def first_n_per_class(targets: list[int], n: int | None) -> list[int]:
    """Indices of the first ``n`` samples of every class, in order (all when ``n`` is None)."""
    seen: dict[int, int] = {}
    keep = []
    for i, label in enumerate(targets):
        seen[label] = seen.get(label, 0) + 1
        if n is None or seen[label] <= n:
            keep.append(i)
    return keep


def source_indices(labels: list[int], val_size: int, train_n: int | None, val_n: int | None):
    """MNIST training indices for training and for validation (the last ``val_size`` digits)."""
    n = len(labels)
    if not 0 <= val_size < n:
        raise ValueError(f"--val-size: expected 0 to {n - 1} (MNIST has {n} training digits)")
    cut = n - val_size
    val = [cut + i for i in first_n_per_class(labels[cut:], val_n)] if val_size else []
    return first_n_per_class(labels[:cut], train_n), val


def digits(images: Any, labels: Any, keep: list[int], device: torch.device):
    """``(images (N, C, h, w) uint8, labels (N,) int64)`` of ``keep``, on ``device``."""
    x = torch.as_tensor(images)[keep]
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    y = torch.as_tensor(np.asarray(labels))[keep].long()
    return x.contiguous().to(device), y.to(device)


def _default_data_root() -> Path | None:
    """``CAMKIT_DATA`` if set, else the nearest ``shared/data`` above this script, else ``None``."""
    if os.environ.get("CAMKIT_DATA"):
        return Path(os.environ["CAMKIT_DATA"]).expanduser()
    found = (p / "shared" / "data" for p in Path(__file__).resolve().parents)
    return next((p for p in found if p.is_dir()), None)


def load_data(args: argparse.Namespace, targets: list[str], device: torch.device, log: Any):
    """The MNIST train and validation splits and the target test sets, on the device."""
    root = args.data or _default_data_root()
    if root is None:
        raise FileNotFoundError(
            f"--data: not given, and no shared/data folder was found above {Path(__file__).parent} "
            "(set CAMKIT_DATA or pass --data PATH, the folder with mnist.npz, usps.npz, BSDS500)"
        )
    log(f"data: {root}")
    source = load_digits_npz(root / "mnist.npz")
    y = source["y_train"].tolist()
    train_idx, val_idx = source_indices(y, args.val_size, args.train_subset, args.test_subset)
    train = digits(source["x_train"], y, train_idx, device)
    val = digits(source["x_train"], y, val_idx, device) if val_idx else None
    tests = {}
    for target in targets:
        if target == "usps":
            data = usps(root / "usps.npz", train=False)
            images = frame_like_mnist(data.images) if args.usps_frame else data.images
            labels = data.targets
        else:  # the test half of camkit.datasets.mnist_m(seed=0): same seed, same cache file
            _, seed = (int(s) for s in np.random.SeedSequence(0).generate_state(2))
            cache = args.mnistm_cache / "mnist_m_test_seed0.npz"
            log(f"  MNIST-M test set: {'cached' if cache.is_file() else 'building'} {cache}")
            bsds = root / "BSDS500" / "images" / "train"
            images = build_mnist_m(source["x_test"], bsds, seed=seed, cache_path=cache)
            labels = source["y_test"].tolist()
        tests[target] = digits(images, labels, first_n_per_class(labels, args.test_subset), device)
    return train, val, tests


def to_unit(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, h, w)`` uint8 → ``(B, 3, size, size)`` float in [0, 1]: bilinear (antialiased
    when shrinking), grey replicated to RGB."""
    x = images.float().div_(255)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def normalize(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] → ImageNet-normalised model input (channels-last on CUDA)."""
    mean = x.new_tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    x = (x - mean) / x.new_tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def translate_pad(img_size: int, translate: float) -> int:
    """Padding (= largest shift) in pixels at ``img_size`` for ``translate`` pixels at 28 px."""
    return round(translate * img_size / MNIST_SIDE)


def macro_scores(values: dict[str, float]) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 from ``classification_metrics(10, None)`` values."""
    p = np.array([values[f"ppv_{c}"] for c in range(NUM_CLASSES)])
    r = np.array([values[f"sensitivity_{c}"] for c in range(NUM_CLASSES)])
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=p + r > 0)
    scores = {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f1.mean())}
    return {"accuracy": values["accuracy"], **scores}


def run_evaluate(args, model, images, labels, tta=None) -> dict[str, float]:
    values = evaluate(
        model,
        images,
        labels,
        classification_metrics(NUM_CLASSES, positive_class=None),
        batch_size=args.batch_size,
        transform=lambda batch: normalize(to_unit(batch, args.img_size)),
        tta=tta,
        amp=images.is_cuda,
    )
    return {**macro_scores(values), **{k: v for k, v in values.items() if k.startswith("tta_")}}


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------


def create_model(args: argparse.Namespace, device: torch.device, state=None):
    """A model on ``device``: ``state`` if given, else ImageNet weights or --checkpoint."""
    pretrained = args.pretrained and state is None
    try:
        model = timm.create_model(args.model, pretrained=pretrained, num_classes=NUM_CLASSES)
    except Exception as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"--pretrained: could not load the ImageNet weights of {args.model!r} "
            f"({type(err).__name__}); timm downloads them from the Hugging Face Hub once "
            "(HF_HOME); offline, pass --checkpoint PATH or drop --pretrained"
        ) from err
    if state is None and args.checkpoint is not None:
        state = load_checkpoint(args.checkpoint)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a run checkpoint
            state = state.get("best_state") or state["model"]
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise RuntimeError(
                f"--checkpoint {args.checkpoint}: not a state_dict of {args.model} with "
                f"{NUM_CLASSES} classes ({err})"
            ) from err
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def check_feature_grid(args: argparse.Namespace) -> tuple[int, int]:
    """The model's feature grid at ``--img-size``; fail early if CPE cannot pick its cells."""
    model = timm.create_model(args.model, pretrained=False, num_classes=2).eval()
    with torch.no_grad():
        h, w = CAMExtractor(model)(torch.zeros(1, 3, args.img_size, args.img_size)).cams.shape[-2:]
    if any(RECIPES[m][1] for m in args.method) and h * w < 2 * CPE_PATCHES:
        raise ValueError(
            f"--img-size {args.img_size}: {args.model} gives a {h}×{w} feature map, but the "
            f"contrastive patch loss needs at least {2 * CPE_PATCHES} cells; use a larger "
            "--img-size (64 or more for a stride-32 network)"
        )
    return h, w


def make_optimizer(model: torch.nn.Module, lr: float, pretrained: bool) -> torch.optim.SGD:
    """SGD, Nesterov momentum 0.9, weight decay 1e-4; pretrained layers at 0.1 × ``lr``.

    Group 0 is the backbone, group 1 the classifier; ``base_lr`` is each group's rate before
    :func:`lr_scale`.
    """
    head = list(model.get_classifier().parameters())
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    groups = [{"params": body, "base_lr": lr * (0.1 if pretrained else 1.0)}, {"params": head}]
    groups[1]["base_lr"] = lr
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)


def lr_scale(epoch: int, epochs: int) -> float:
    """×0.1 after 40 %, 75 % and 90 % of the epochs (80/150/180 of 200), as a closed form, so a
    run resumed with another ``--epochs`` follows the new schedule."""
    return 0.1 ** sum(epoch >= max(1, round(f * epochs)) for f in MILESTONES)


def tta_geometry(img_size: int, k: int = TTA_K) -> tuple[int, int, int]:
    """TTA ``(cell side, cells, masks)``: the paper's 8-px cells at 224² scaled, k ≤ cells."""
    patch = max(1, round(8 * img_size / 224))
    cells = math.ceil(img_size / patch) ** 2
    return patch, cells, min(k, cells)


# ------------------------------------------------------------------------------------------------
# one training run: camkit.TrainStep and one loop
# ------------------------------------------------------------------------------------------------


def train(args, method, seed, train_set, val_set, device, log) -> dict[str, Any]:
    """Train (or resume) one run; return its selected weights and what the results report."""
    use_snapmix, use_cpe = RECIPES[method]
    path = checkpoint_path(args, method, seed)
    config = {"source": "mnist", **{key: getattr(args, key) for key in SETTINGS}}
    config.update(snapmix=use_snapmix, cpe=use_cpe, seed=seed)

    torch.manual_seed(seed)
    model = create_model(args, device)
    gen = torch.Generator()  # SnapMix draws and batch order, reseeded every epoch
    step = TrainStep(
        model,
        snapmix=SnapMix(NUM_CLASSES, generator=gen, cam_source=args.snapmix_cams)
        if use_snapmix
        else None,
        cpe=ContrastivePatchLoss(
            num_patches=CPE_PATCHES, normalize=args.cpe_normalize, temperature=args.cpe_temperature
        )
        if use_cpe
        else None,
        cpe_weight=args.cpe_weight,
    )
    optimizer = make_optimizer(model, args.lr, pretrained=args.pretrained)
    size, pad = args.img_size, translate_pad(args.img_size, args.translate)
    shift = K.RandomCrop((size, size), padding=pad, fill=0.0, cropping_mode="resample")
    augment = shift.to(device) if pad > 0 else torch.nn.Identity()  # a random shift, no flips

    run = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "best_state": None, "train_seconds": 0.0}
    if path.is_file() and args.resume:
        ckpt = load_checkpoint(path, required=("config", "model", "optimizer", *run))
        written = {**IMPLIED, **ckpt["config"]}
        differs = {k: (written.get(k), v) for k, v in config.items() if written.get(k) != v}
        if differs:
            raise ValueError(
                f"--resume: {path} was written with other settings (checkpoint, now): "
                f"{differs}; use another --out or --overwrite"
            )
        if ckpt["epoch"] > args.epochs:
            raise ValueError(
                f"--resume: {path} has trained {ckpt['epoch']} epochs, more than --epochs "
                f"{args.epochs}; ask for at least {ckpt['epoch']} epochs"
            )
        model.load_state_dict(ckpt["model"])
        base_lrs = [group["base_lr"] for group in optimizer.param_groups]
        optimizer.load_state_dict(ckpt["optimizer"])  # its groups replace ours: keep our base_lr
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["base_lr"] = base_lr
        run = {key: ckpt[key] for key in run}
        log(f"  resuming {path.name} from epoch {run['epoch']}/{args.epochs}")

    images, labels = train_set
    quiet = args.quiet or not sys.stderr.isatty()
    epochs = tqdm(
        range(run["epoch"], args.epochs),
        desc=f"{method} seed {seed}",
        unit="epoch",
        initial=run["epoch"],
        total=args.epochs,
        disable=quiet,
    )
    for epoch in epochs:
        torch.manual_seed(seed * 1_000_003 + epoch)  # kornia's shifts
        gen.manual_seed(seed * 1_000_003 + epoch + 500_000)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_scale(epoch, args.epochs)
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(labels), generator=gen).to(device)
        batches = [order[i : i + args.batch_size] for i in range(0, len(labels), args.batch_size)]
        batches = [idx for idx in batches if len(idx) >= 2]  # BatchNorm needs two images
        loss_sum, mean_loss = torch.zeros((), device=device), 0.0
        bar = tqdm(batches, leave=False, unit="step", disable=quiet)
        for i, idx in enumerate(bar, 1):
            x = normalize(augment(to_unit(images[idx], size)))  # resize, shift, normalise
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = step(x, labels[idx]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            if i % args.log_every == 0 or i == len(batches):  # the only host syncs of the loop
                mean_loss = (loss_sum / i).item()
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                if not math.isfinite(mean_loss):
                    kept = f"{path} keeps epoch {run['epoch']}" if run["epoch"] else ""
                    raise SystemExit(
                        f"{method} seed {seed}: the training loss is {mean_loss} at epoch "
                        f"{epoch + 1}, step {i}; stopped, {kept or 'no checkpoint was written'}. "
                        f"Lower --lr (now {args.lr:g}) or check the data"
                    )
        run["train_seconds"] += time.perf_counter() - t0
        line = f"epoch {epoch + 1}/{args.epochs} loss {mean_loss:.4f}"
        if val_set is not None:  # the reported epoch: best validation accuracy, never test
            model.eval()
            acc = run_evaluate(args, model, *val_set)["accuracy"]
            if acc > run["best_val"]:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                run.update(best_val=acc, best_epoch=epoch + 1, best_state=state)
            line += (
                f" val acc {100 * acc:.2f} (best {100 * run['best_val']:.2f} @ {run['best_epoch']})"
            )
        run["epoch"] = epoch + 1
        atomic_save(
            {
                **run,
                "config": config,
                "epochs": args.epochs,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
            },
            path,
        )
        log(f"  {line} ({time.perf_counter() - t0:.1f}s)")
    if run["best_state"] is None:  # no validation split, or nothing trained (--epochs 0)
        run["best_state"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        run["best_epoch"] = args.epochs
    return {**run, "epochs": args.epochs}


# ------------------------------------------------------------------------------------------------
# figures (camkit.viz)
# ------------------------------------------------------------------------------------------------


def write_figures(args, tta, test, train_set, stem: str) -> list[Path]:
    """CAM grid, TTA, deletion-curve and SnapMix figures of a few digits; the written paths."""
    from camkit.tta import deletion_curve
    from camkit.viz import cam_grid, deletion_figure, save_figure, snapmix_figure, tta_figure

    style = {"class_names": args.class_names, "mean": IMAGENET_DEFAULT_MEAN}
    style["std"] = IMAGENET_DEFAULT_STD
    keep = first_n_per_class(test[1].tolist(), 1)
    x, y = normalize(to_unit(test[0][keep], args.img_size)), test[1][keep]
    with torch.no_grad():
        result = tta.predict(x)
        cams = tta.extractor.forward_frozen(x).cams
    flipped = result.flipped.nonzero()
    figures = {
        "cams": cam_grid(x, cams, labels=y, preds=result.labels, flipped=result.flipped, **style),
        "tta": tta_figure(x, result, tta, index=int(flipped[0]) if len(flipped) else 0, **style),
    }
    full = CAMMaskingTTA(
        tta.extractor,
        tta.k,
        tta.theta,
        tta.patch_size,
        early_exit=False,
        mask_value=tta.mask_value,
        rule=tta.rule,
    )
    with torch.no_grad():
        curve = deletion_curve(full.predict(x), math.ceil(args.img_size / tta.patch_size) ** 2)
    figures["deletion"] = deletion_figure(curve, title="CAM-masking deletion curves")
    images = normalize(to_unit(train_set[0][: args.batch_size], args.img_size))
    labels = train_set[1][: args.batch_size]
    with torch.no_grad():
        train_cams = tta.extractor.forward_frozen(images, labels).cams
    gen = torch.Generator(images.device).manual_seed(0)
    size = args.img_size
    params = SnapMix(NUM_CLASSES, generator=gen).sample(len(labels), size, size)
    figures["snapmix"] = snapmix_figure(images, labels, train_cams, params, **style)
    folder = args.out / "figures"
    return [save_figure(fig, folder / f"{stem}_{name}.png") for name, fig in figures.items()]


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the example; return this run's result rows (also merged into ``--out/results.json``)."""
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: tqdm.write(msg, file=sys.stdout))
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available (use cpu or auto)")
    torch.backends.cudnn.benchmark = device.type == "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in clean_stale_temps(args.out):
        log(f"removed {stale.name}, left by an interrupted write")

    grid = check_feature_grid(args)
    merge_results(args.out / "results.json", [], key=ROW_KEY)  # a foreign file fails now, not later
    patch, cells, k = tta_geometry(args.img_size)
    names = {m: [m, f"{m}+tta"] if args.tta or m == "full" else [m] for m in args.method}
    targets = ["usps", "mnistm"] if args.target == "both" else [args.target]
    log(
        f"{args.model} at {args.img_size} px on {device}: {grid[0]}×{grid[1]} feature map; "
        f"methods {', '.join(args.method)}; seeds {args.seeds}; {args.epochs} epochs; "
        f"MNIST → {', '.join(TARGET_NAMES[t] for t in targets)}"
    )
    train_set, val_set, tests = load_data(args, targets, device, log)
    mean = float(train_set[0].mean(dtype=torch.float64)) / 255  # TTA masks: the MNIST mean
    fill = [
        (mean - m) / s for m, s in zip(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, strict=True)
    ]
    log(
        f"train {len(train_set[1])} MNIST digits, val "
        f"{len(val_set[1]) if val_set else 'none (last epoch is reported)'}, "
        + ", ".join(f"test {TARGET_NAMES[t]} {len(tests[t][1])}" for t in targets)
        + f"; random shift up to {translate_pad(args.img_size, args.translate)} px, no flips"
    )
    if any(len(n) == 2 for n in names.values()):
        log(
            f"CAM-masking TTA: {patch}×{patch}-pixel cells ({math.isqrt(cells)}×"
            f"{math.isqrt(cells)} grid), k = {k} masks, θ = {args.tta_theta}, rule "
            f"{args.tta_rule}, masked cells filled "
            f"with the MNIST training mean ({', '.join(f'{v:.2f}' for v in fill)} normalised)"
        )

    settings = {key: getattr(args, key) for key in (*SETTINGS, "epochs")}
    settings.update(
        checkpoint=str(args.checkpoint) if args.checkpoint else None,
        usps_frame=args.usps_frame,
        tta=f"k={k} theta={args.tta_theta} cell={patch}px",
        tta_rule=args.tta_rule,
        tta_theta=args.tta_theta,
        device=device.type,
        torch=torch.__version__,
        timm=timm.__version__,
    )
    results: list[dict[str, Any]] = []
    trained: dict[tuple[tuple[bool, bool], int], tuple[str, dict]] = {}
    for method in args.method:
        for seed in args.seeds:
            recipe = RECIPES[method]
            if (recipe, seed) in trained:
                source, run = trained[(recipe, seed)]
                log(f"{method} seed {seed}: same training recipe as {source}, reusing its model")
                src = checkpoint_path(args, source, seed)
                if src.is_file():  # so that --resume --method full finds the run too
                    atomic_write_bytes(src.read_bytes(), checkpoint_path(args, method, seed))
            else:
                log(f"{method} seed {seed}:")
                run = train(args, method, seed, train_set, val_set, device, log)
                if any(RECIPES[m] == recipe for m in args.method[args.method.index(method) + 1 :]):
                    trained[(recipe, seed)] = (method, run)  # e.g. snapmix_cpe, then full
            model = create_model(args, device, state=run["best_state"]).eval()
            tta = CAMMaskingTTA(
                model,
                k=k,
                theta=args.tta_theta,
                patch_size=patch,
                mask_value=fill,
                rule=args.tta_rule,
            )
            rows = []
            for target in targets:
                for name in names[method]:
                    values = run_evaluate(
                        args, model, *tests[target], tta=tta if name.endswith("+tta") else None
                    )
                    row = {"dataset": TARGETS[target], "method": name, "seed": seed}
                    row.update({"settings": settings})
                    row.update({key: 100.0 * values[m] for m, key in METRICS.items()})
                    row.update({k: run[k] for k in ("train_seconds", "best_epoch", "epochs")})
                    row.update({k: v for k, v in values.items() if k.startswith("tta_")})
                    rows.append(row)
                    log(
                        f"  MNIST → {TARGET_NAMES[target]} {name}: "
                        + ", ".join(f"{key} {row[key]:.2f}" for key in METRICS.values())
                        + f" (epoch {run['best_epoch']})"
                    )
            merge_results(args.out / "results.json", rows, key=ROW_KEY)
            results += rows
            if args.figures:
                stem = f"mnist_{method}_seed{seed}"
                for path in write_figures(args, tta, tests[targets[0]], train_set, stem):
                    print(f"figure: {path}")

    selection = "best epoch on the MNIST hold-out" if val_set is not None else "last epoch"
    for target in targets:
        n_test = len(tests[target][1])
        mine = [r for r in results if r["dataset"] == TARGETS[target]]
        table: dict[str, dict[str, list[float]]] = {}
        for row in mine:
            for metric, key in METRICS.items():
                table.setdefault(row["method"], {}).setdefault(metric, []).append(row[key] / 100)
        print(
            f"\nMNIST → {TARGET_NAMES[target]}: target test set ({n_test} images), {selection}, "
            f"mean ± std over seeds {args.seeds}; precision, recall, F1 macro-averaged over "
            f"the {NUM_CLASSES} classes"
        )
        print(format_table(table, metrics=list(METRICS)))
        for name in dict.fromkeys(r["method"] for r in mine if "tta_forwards" in r):
            rows = [r for r in mine if r["method"] == name]
            forwards = sum(r["tta_forwards"] for r in rows) / len(rows)
            print(
                f"{name}: {forwards:.1f} image-forwards per test image on average (k = {k}), "
                f"labels flipped per seed: {[r['tta_flipped'] for r in rows]} of {n_test}"
            )
    print(f"\nresults: {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
