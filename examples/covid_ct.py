"""COVID-19 CT classification with camkit: SnapMix, the contrastive patch loss and CAM-masking TTA.

Trains a timm classifier on COVID-CT ("site B", default), the SARS-CoV-2 CT-scan dataset
("site A"), both jointly (evaluated per site), or COVIDx-CT (``--site X``: Normal, Pneumonia,
COVID-19), with one of five methods, and reports accuracy, precision, recall and F1 of the COVID
class (mean ± std over seeds; COVIDx-CT also each class's sensitivity and PPV)::

    baseline      soft-target cross-entropy on one-hot labels
    cpe           + contrastive patch embedding loss (paper Eq. 1)
    snapmix       SnapMix batches (CAMs of the un-mixed batch from a frozen side pass)
    snapmix_cpe   SnapMix + contrastive patch loss
    full          snapmix_cpe training + CAM-masking test-time augmentation (k=31, θ=0.2)

The script reads top to bottom: options, data, model, then :func:`train` — a
:class:`camkit.TrainStep` and one loop — and :func:`main`, which evaluates each run plainly
(``<method>``) and, with ``--tta`` (always for ``full``), with the CAM-masking TTA
(``<method>+tta``). ``full`` reuses the ``snapmix_cpe`` model when both are asked for.
Variants of a method's recipe: ``--cpe-normalize``, ``--cpe-temperature``, ``--cpe-weight`` (λ)
and ``--snapmix-cams mixed`` (label weights from the mixed images' CAMs, no extra forward) train
differently, so a resumed run must keep them. The CPE's default is the recommended form
(L2-normalised cells, τ = 0.1, λ = 1: chosen on validation data, see the docs' results page); the
paper's Eq. 1 is ``--no-cpe-normalize --cpe-temperature 1``. ``--tta-rule`` and
``--tta-theta`` only change the evaluation (a finished run can be re-evaluated with them).

Recipe (the released code's): SGD, Nesterov momentum 0.9, weight decay 1e-4, learning rate 1e-2
(with ``--pretrained`` 1e-3 for the pretrained layers), ×0.1 after 40 %, 75 % and 90 % of the
epochs, batch 64, ImageNet mean/std; train: Resize to ``round(img*256/224)`` → RandomCrop(img) →
horizontal and vertical flips; test: Resize((img, img)). The reported epoch is chosen on the
validation split (site B, COVIDx-CT; pooled with ``--site both``), or is the last one (site A).
Every image is decoded once (cached in ``--out``) and the splits stay on the device as uint8; on
CUDA the model runs in bf16 autocast and channels-last.

Examples::

    python examples/covid_ct.py --demo                  # a few minutes on a CPU, with a figure
    python examples/covid_ct.py --model resnet50 --pretrained --epochs 200 --seeds 0 1 2 \\
        --method baseline snapmix snapmix_cpe full --out runs/site_b
    python examples/covid_ct.py --site X --data-x /data/COVIDx-CT --method baseline full
    python examples/covid_ct.py --site both --data-a /data/SARS-CoV-2-CT --method full --resume

Outputs in ``--out``: ``results.json`` (``{"rows": [...]}``, one row per site, method and seed:
``dataset``, ``method``, ``seed``, ``settings`` — everything that changes a number — and the
metrics in percent, ``train_seconds``, ``best_epoch``, ``epochs``, for ``+tta`` rows
``tta_forwards`` and ``tta_flipped``; merged, so runs of other methods or seeds into the same
folder keep their rows), one checkpoint per run ``<site>_<method>_seed<k>.pt`` (written
atomically after every epoch; ``--resume`` continues it, ``--overwrite`` starts it again), the
image caches ``cache_<site>_<size>.pt``, and with ``--demo`` or ``--figures`` the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import timm
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from tqdm.auto import tqdm

from camkit import CAMExtractor, CAMMaskingTTA, ContrastivePatchLoss, SnapMix, TrainStep
from camkit.datasets import COVIDCT, COVIDxCT, SARSCoV2CT
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
CLASS_NAMES = {"X": ("Normal", "Pneumonia", "COVID-19")}  # other sites: NonCOVID, COVID
SITE_NAMES = {"A": "SARS-CoV-2 CT (site A)", "B": "COVID-CT (site B)", "X": "COVIDx-CT"}
METRICS = {"accuracy": "acc", "precision": "precision", "recall": "recall", "f1": "f1"}
CPE_PATCHES, TTA_K, TTA_THETA, TTA_RELATIVE_THETA = 2, 31, 0.2, 0.5
TTA_RULES = ("threshold", "argmax", "relative")  # CAMMaskingTTA's vote rules (threshold: paper)
ROW_KEY = ("dataset", "method", "seed", "settings")  # a result row replaces the row of equal key
MILESTONES = (0.4, 0.75, 0.9)  # lr ×0.1 after these fractions of the epochs (80/150/180 of 200)
SETTINGS = (  # what a run checkpoint must agree on to be resumed (epochs may grow)
    *("model", "pretrained", "img_size", "batch_size", "lr", "cpe_normalize", "cpe_temperature"),
    *("cpe_weight", "snapmix_cams", "train_subset", "test_subset"),
)
IMPLIED = {"cpe_weight": 1.0, "snapmix_cams": "unmixed"}  # what checkpoints without them used
DEFAULTS = {"model": "resnet18", "img_size": 224, "epochs": 200, "seeds": [0, 1, 2]}
# the CPE form of the recommended recipe (the paper's Eq. 1: cpe_normalize=False, temperature 1)
DEFAULTS.update(cpe_normalize=True, cpe_temperature=0.1, cpe_weight=1.0)
DEFAULTS.update(snapmix_cams="unmixed", tta_rule="threshold")  # exact SnapMix; the paper's vote
# the demo runs the recommended recipe: the one chosen on the validation splits of site-B and the
# digits by benchmarks/reproduce.py ("recommended" in benchmarks/results/reproduce_cpu.json; a test
# pins the two together): CPE L2-normalised, τ 0.1, weight 1, no SnapMix; the TTA vote is the
# paper's threshold rule for two classes
DEMO_METHOD = "cpe"
DEMO = {"model": "resnet18", "img_size": 112, "epochs": 16, "seeds": [0], "out": "runs/demo"}
DEMO.update(cpe_normalize=True, cpe_temperature=0.1, cpe_weight=1.0)
DEMO.update(snapmix_cams="unmixed", tta_rule="threshold")


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--site", choices=("A", "B", "both", "X"), default="B", help="data set (default B)")
    add("--data", type=Path, help="COVID-CT folder (default: <data root>/COVID-CT)")
    add("--data-a", type=Path, help="SARS-CoV-2 CT folder (default: <data root>/SARS-CoV-2-CT)")
    add("--data-x", type=Path, help="COVIDx-CT image folder (default: <data root>/COVIDx-CT)")
    add("--covidx-lists", type=Path, help="folder of the COVIDx-CT list files (default --data-x)")
    add("--covidx-version", default="3A", help="COVIDx-CT list version (default 3A)")
    add("--img-size", type=int, help="input side in pixels (default 224)")
    add("--train-subset", type=int, metavar="N", help="first N train images per class")
    add("--test-subset", type=int, metavar="N", help="first N val and test images per class")
    add("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding threads")
    add("--model", help="timm model name (default resnet18)")
    add("--pretrained", action="store_true", help="start from timm's ImageNet weights")
    add("--checkpoint", type=Path, help="state_dict or camkit run checkpoint to start from")
    add("--method", nargs="+", choices=METHODS, help="one or more (default: all five)")
    add("--tta", action="store_true", help="also evaluate with CAM-masking TTA (always for full)")
    add(
        "--cpe-normalize",
        action=argparse.BooleanOptionalAction,
        help="L2-normalise the CPE cells (default; --no-cpe-normalize: the paper's raw cells)",
    )
    add("--cpe-temperature", type=float, help="CPE temperature τ (default 0.1; paper: 1)")
    add("--cpe-weight", type=float, metavar="λ", help="weight λ ≥ 0 of the CPE term (paper: 1)")
    add(
        "--snapmix-cams",
        choices=("unmixed", "mixed"),
        help="SnapMix label weights from the CAMs of the unmixed images (default: exact SnapMix, "
        "one extra forward) or of the mixed ones (no extra forward)",
    )
    add("--tta-rule", choices=TTA_RULES, help="TTA vote rule (default threshold, the paper's)")
    add(
        "--tta-theta",
        type=float,
        metavar="θ",
        help=f"TTA vote threshold (default {TTA_THETA}; {TTA_RELATIVE_THETA} with --tta-rule "
        "relative, a fraction of the unmasked confidence; unused by argmax)",
    )
    add("--epochs", type=int, help="training epochs (default 200; 0: evaluate only)")
    add("--batch-size", type=int, default=64, help="default 64")
    add("--lr", type=float, default=1e-2, help="new layers' lr; pretrained ones get 0.1×")
    add("--seeds", type=int, nargs="+", help="one run per seed (default 0 1 2)")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add("--out", type=Path, help="results, checkpoints, caches, figures (default runs/covid_ct)")
    add("--resume", action="store_true", help="continue (or re-evaluate) the runs in --out")
    add("--overwrite", action="store_true", help="train the runs in --out again from scratch")
    add("--log-every", type=int, default=10, help="read the loss back every N steps")
    add("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    add("--figures", action="store_true", help="write every figure kind for each run")
    add(
        "--demo",
        action="store_true",
        help="preset: the recommended recipe (CPE L2-normalised, τ 0.1, weight 1; the "
        "paper's TTA vote for two classes) on resnet18, 112 px, 16 epochs, seed 0, a CAM "
        "figure, --out runs/demo "
        "(rerun: trained again)",
    )
    args = p.parse_args(argv)

    preset = DEMO if args.demo else {**DEFAULTS, "out": "runs/covid_ct"}
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, Path(value) if key == "out" else value)
    if args.method is None:
        args.method = [DEMO_METHOD] if args.demo else list(METHODS)
    args.tta = args.tta or args.demo
    args.overwrite = args.overwrite or (args.demo and not args.resume)  # the demo is a scratch run
    args.method, args.seeds = list(dict.fromkeys(args.method)), list(dict.fromkeys(args.seeds))
    for name in ("img_size", "batch_size", "log_every", "workers"):
        if getattr(args, name) < 1:
            p.error(
                f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}"
            )
    if args.batch_size < 2:
        p.error("--batch-size: BatchNorm training needs at least 2 images per batch")
    if args.epochs < 0:
        p.error(f"--epochs: expected 0 or more, got {args.epochs}")
    if not args.cpe_weight >= 0:
        p.error(f"--cpe-weight: expected 0 or more, got {args.cpe_weight}")
    if args.tta_theta is None:
        args.tta_theta = TTA_RELATIVE_THETA if args.tta_rule == "relative" else TTA_THETA
    if not 0 <= args.tta_theta <= 1:
        p.error(f"--tta-theta: expected a value in [0, 1], got {args.tta_theta}")
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected at least 1 image per class")
    if args.resume and args.overwrite and not args.demo:
        p.error("--resume and --overwrite: choose one (continue the runs, or start them again)")
    args.class_names = CLASS_NAMES.get(args.site, ("NonCOVID", "COVID"))
    args.num_classes = len(args.class_names)
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
    return args.out / f"{args.site}_{method}_seed{seed}.pt"


# ------------------------------------------------------------------------------------------------
# data: decoded once into a uint8 cache, resident on the device
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


class ImageCache:
    """Decoded, resized uint8 images in one ``.pt`` file, keyed by size, path, length and mtime."""

    def __init__(self, path: Path, log: Any = print):
        self.path, self.log, self.dirty, self.items = path, log, False, {}
        if path.is_file():
            try:
                self.items = dict(load_checkpoint(path, required=("items",))["items"])
            except ValueError as err:
                log(f"ignoring the image cache: {err}")

    def images(self, dataset: Any, indices: list[int], size: int, workers: int = 1) -> torch.Tensor:
        """``(N, 3, size, size)`` uint8 images of ``dataset`` (squashed, bilinear)."""

        def key(i: int) -> str:
            stat = os.stat(dataset.samples[i][0])
            return (
                f"{size}|{os.path.abspath(dataset.samples[i][0])}|{stat.st_size}|{stat.st_mtime_ns}"
            )

        def decode(i: int) -> torch.Tensor:
            image = dataset[i][0].resize((size, size), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

        keys = [key(i) for i in indices]
        missing = [(i, k) for i, k in zip(indices, keys, strict=True) if k not in self.items]
        with ThreadPoolExecutor(workers) as pool:
            for (_, k), image in zip(
                missing, pool.map(decode, [i for i, _ in missing]), strict=True
            ):
                self.items[k] = image.contiguous()
        self.dirty |= bool(missing)
        self.log(
            f"  {len(keys)} images at {size}×{size}: {len(keys) - len(missing)} from cache, "
            f"{len(missing)} decoded"
        )
        if not keys:
            return torch.empty(0, 3, size, size, dtype=torch.uint8)
        return torch.stack([self.items[k] for k in keys])

    def save(self) -> None:
        if self.dirty:
            atomic_save({"version": 1, "items": self.items}, self.path)


def _default_data_root() -> Path | None:
    """``CAMKIT_DATA`` if set, else the nearest ``shared/data`` above this script, else ``None``."""
    if os.environ.get("CAMKIT_DATA"):
        return Path(os.environ["CAMKIT_DATA"]).expanduser()
    found = (p / "shared" / "data" for p in Path(__file__).resolve().parents)
    return next((p for p in found if p.is_dir()), None)


def data_folder(explicit: Path | None, name: str, flag: str) -> Path:
    root = _default_data_root()
    if explicit is None and root is None:
        raise FileNotFoundError(
            f"{flag}: not given, and no shared/data folder was found above "
            f"{Path(__file__).parent} (set CAMKIT_DATA or pass {flag} PATH)"
        )
    return explicit if explicit is not None else root / name


def load_site(site: str, args: argparse.Namespace, device: torch.device, log: Any) -> dict:
    """``{split: (images uint8 (N, 3, S, S), labels (N,))}`` of one site, on ``device``."""
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
                f"--data-a: the SARS-CoV-2 CT-scan dataset (site A) is not "
                f"at {root}; download it (COVID/, non-COVID/), pass --data-a"
            )
        datasets = {s: SARSCoV2CT(root, split=s, seed=0) for s in ("train", "test")}
    log(f"site {site}: {root}")
    cache = ImageCache(args.out / f"cache_{site}_{args.img_size}.pt", log)
    splits = {}
    for name, ds in datasets.items():
        keep = first_n_per_class(
            ds.targets, args.train_subset if name == "train" else args.test_subset
        )
        size = round(args.img_size * 256 / 224) if name == "train" else args.img_size
        images = cache.images(ds, keep, size, args.workers)
        labels = torch.tensor([ds.targets[i] for i in keep], dtype=torch.long)
        splits[name] = (images.to(device), labels.to(device))
    cache.save()
    return splits


def concat(splits: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([s[0] for s in splits]), torch.cat([s[1] for s in splits])


# ------------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------------


def pretrained_weights(args: argparse.Namespace) -> dict[str, torch.Tensor] | None:
    """timm's ImageNet weights without the classifier (fetched once for all runs), or None."""
    if not args.pretrained:
        return None
    try:
        model = timm.create_model(args.model, pretrained=True, num_classes=args.num_classes)
    except Exception as err:
        raise RuntimeError(
            f"--pretrained: could not load the ImageNet weights of {args.model!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); timm "
            "downloads them from the Hugging Face Hub once (HF_HOME); offline, copy that cache "
            "over (HF_HUB_OFFLINE=1), pass --checkpoint PATH, or drop --pretrained"
        ) from err
    head = {f"{n}." for n, m in model.named_modules() if m is model.get_classifier()}
    return {k: v for k, v in model.state_dict().items() if not any(k.startswith(h) for h in head)}


def create_model(args: argparse.Namespace, device: torch.device, backbone=None, state=None):
    """A model on ``device``: ``state`` if given, else the pretrained backbone and --checkpoint."""
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
    if state is not None:
        model.load_state_dict(state)
    elif backbone is not None:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        if unexpected or len(missing) != len(list(model.get_classifier().parameters())):
            raise RuntimeError(f"--pretrained: weights do not fit {args.model}: {missing=}")
    if state is None and args.checkpoint is not None:
        ckpt = load_checkpoint(args.checkpoint)
        if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):  # a run checkpoint
            ckpt = ckpt.get("best_state") or ckpt["model"]
        try:
            model.load_state_dict(ckpt)
        except RuntimeError as err:
            raise RuntimeError(
                f"--checkpoint {args.checkpoint}: not a state_dict of "
                f"{args.model} with {args.num_classes} classes ({err})"
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


def normalize(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] → ImageNet-normalised model input (channels-last on CUDA)."""
    mean = x.new_tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    x = (x - mean) / x.new_tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, S, S)`` images at the test size → the model input."""
    return normalize(images.float() / 255)


def run_evaluate(args, model, images, labels, tta=None) -> dict[str, float]:
    k = args.num_classes
    names = list(args.class_names)
    metrics = classification_metrics(k, positive_class=k - 1, class_names=names)  # COVID last
    return evaluate(
        model,
        images,
        labels,
        metrics,
        batch_size=args.batch_size,
        transform=to_input,
        tta=tta,
        amp=images.is_cuda,
    )


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


def train(args, method, seed, train_set, val_set, backbone, device, log) -> dict[str, Any]:
    """Train (or resume) one run; return its selected weights and what the results report."""
    use_snapmix, use_cpe = RECIPES[method]
    path = checkpoint_path(args, method, seed)
    config = {"site": args.site, **{key: getattr(args, key) for key in SETTINGS}}
    config.update(snapmix=use_snapmix, cpe=use_cpe, seed=seed)

    torch.manual_seed(seed)
    model = create_model(args, device, backbone)
    gen = torch.Generator()  # SnapMix draws and batch order, reseeded every epoch
    step = TrainStep(
        model,
        snapmix=SnapMix(args.num_classes, generator=gen, cam_source=args.snapmix_cams)
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
    augment = torch.nn.Sequential(
        K.RandomCrop((args.img_size, args.img_size), cropping_mode="resample"),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
    ).to(device)

    run = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "best_state": None, "train_seconds": 0.0}
    if path.is_file() and args.resume:
        ckpt = load_checkpoint(path, required=("config", "model", "optimizer", *run))
        written = {**IMPLIED, **ckpt["config"]}
        differs = {k: (written.get(k), v) for k, v in config.items() if written.get(k) != v}
        if differs:
            raise ValueError(
                f"--resume: {path} was written with other settings (checkpoint, "
                f"now): {differs}; use another --out or --overwrite"
            )
        if ckpt["epoch"] > args.epochs:
            raise ValueError(
                f"--resume: {path} has trained {ckpt['epoch']} epochs, more than "
                f"--epochs {args.epochs}; ask for at least {ckpt['epoch']} epochs"
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
        torch.manual_seed(seed * 1_000_003 + epoch)  # kornia's crops and flips
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
            x = normalize(augment(images[idx].float() / 255))  # crop, flip, normalise
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


def write_figures(args, tta, test, train_set, stem: str, every_kind: bool) -> list[Path]:
    """A CAM grid of a few test images (label, prediction, TTA flip); with ``every_kind`` also
    the SnapMix, TTA and deletion-curve figures. Returns the written paths."""
    from camkit.tta import deletion_curve
    from camkit.viz import cam_grid, deletion_figure, save_figure, snapmix_figure, tta_figure

    style = {
        "class_names": args.class_names,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
    }
    keep = first_n_per_class(test[1].tolist(), 4)
    x, y = to_input(test[0][keep]), test[1][keep]
    with torch.no_grad():
        result = tta.predict(x)
        cams = tta.extractor.forward_frozen(x).cams
    figures = {
        "cams": cam_grid(x, cams, labels=y, preds=result.labels, flipped=result.flipped, **style)
    }
    if every_kind:
        flipped = result.flipped.nonzero()
        index = int(flipped[0]) if len(flipped) else 0
        figures["tta"] = tta_figure(x, result, tta, index=index, **style)
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
        size = args.img_size
        images = normalize(train_set[0][: args.batch_size, :, :size, :size].float() / 255)
        labels = train_set[1][: args.batch_size]
        with torch.no_grad():
            train_cams = tta.extractor.forward_frozen(images, labels).cams
        gen = torch.Generator(images.device).manual_seed(0)
        params = SnapMix(args.num_classes, generator=gen).sample(len(labels), size, size)
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
    device = torch.device(
        args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    )
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
    log(
        f"{args.model} at {args.img_size} px on {device}: {grid[0]}×{grid[1]} feature map; "
        f"methods {', '.join(args.method)}; seeds {args.seeds}; {args.epochs} epochs"
    )
    if any(len(n) == 2 for n in names.values()):
        log(
            f"CAM-masking TTA: {patch}×{patch}-pixel cells ({math.isqrt(cells)}×"
            f"{math.isqrt(cells)} grid), k = {k} masks, θ = {args.tta_theta}, "
            f"rule {args.tta_rule}"
        )
    backbone = pretrained_weights(args)

    sites = ["A", "B"] if args.site == "both" else [args.site]
    data = {site: load_site(site, args, device, log) for site in sites}
    train_set = concat([data[s]["train"] for s in sites])
    vals = [data[s]["val"] for s in sites if "val" in data[s]]
    val_set = concat(vals) if vals else None
    log(
        f"train {len(train_set[1])} images, val "
        f"{len(val_set[1]) if val_set else 'none (last epoch is reported)'}, "
        + ", ".join(f"test {s} {len(data[s]['test'][1])}" for s in sites)
    )

    settings = {key: getattr(args, key) for key in (*SETTINGS, "epochs")}
    settings.update(
        train_site=args.site,
        checkpoint=str(args.checkpoint or "") or None,
        tta=f"k={k} theta={args.tta_theta} cell={patch}px",
        tta_rule=args.tta_rule,
        tta_theta=args.tta_theta,
        device=device.type,
        torch=torch.__version__,
        timm=timm.__version__,
    )
    per_class = [f"{m}_{c}" for c in args.class_names for m in ("sensitivity", "ppv")]
    keys = {**METRICS, **({m: m for m in per_class} if args.site == "X" else {})}
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
                run = train(args, method, seed, train_set, val_set, backbone, device, log)
                if any(RECIPES[m] == recipe for m in args.method[args.method.index(method) + 1 :]):
                    trained[(recipe, seed)] = (method, run)  # e.g. snapmix_cpe, then full
            model = create_model(args, device, state=run["best_state"]).eval()
            tta = CAMMaskingTTA(
                model, k=k, theta=args.tta_theta, patch_size=patch, rule=args.tta_rule
            )
            rows = []
            for site in sites:
                for name in names[method]:
                    values = run_evaluate(
                        args, model, *data[site]["test"], tta=tta if name.endswith("+tta") else None
                    )
                    row = {"dataset": site, "method": name, "seed": seed, "settings": settings}
                    row.update({key: 100.0 * values[m] for m, key in keys.items()})
                    row.update({k: run[k] for k in ("train_seconds", "best_epoch", "epochs")})
                    if val_set is not None:  # what the recipe is chosen on (never test)
                        row["val_acc"] = 100.0 * run["best_val"]
                    row.update({k: v for k, v in values.items() if k.startswith("tta_")})
                    rows.append(row)
                    log(
                        f"  site {site} {name}: "
                        + ", ".join(f"{key} {row[key]:.2f}" for key in METRICS.values())
                        + f" (epoch {run['best_epoch']})"
                    )
            merge_results(args.out / "results.json", rows, key=ROW_KEY)
            results += rows
            if args.figures or (args.demo and (method, seed) == (args.method[0], args.seeds[0])):
                test, stem = data[sites[-1]]["test"], f"{args.site}_{method}_seed{seed}"
                paths = write_figures(args, tta, test, train_set, stem, every_kind=args.figures)
                print("\n".join(f"figure: {path}" for path in paths))

    selection = "best validation epoch" if val_set is not None else "last epoch"
    for site in sites:
        n_test = len(data[site]["test"][1])
        table: dict[str, dict[str, list[float]]] = {}
        for row in (r for r in results if r["dataset"] == site):
            for metric, key in keys.items():
                table.setdefault(row["method"], {}).setdefault(metric, []).append(row[key] / 100)
        print(
            f"\n{SITE_NAMES[site]}: test set ({n_test} images), {selection}, "
            f"mean ± std over seeds {args.seeds}"
        )
        print(format_table(table, metrics=list(keys)))
        for name in dict.fromkeys(r["method"] for r in results if "tta_forwards" in r):
            rows = [r for r in results if r["dataset"] == site and r["method"] == name]
            forwards = sum(r["tta_forwards"] for r in rows) / len(rows)
            print(
                f"{name}: {forwards:.1f} image-forwards per test image on average (k = {k}), "
                f"labels flipped per seed: {[r['tta_flipped'] for r in rows]} of {n_test}"
            )
    print(f"\nresults: {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
