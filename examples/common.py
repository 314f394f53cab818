"""Helpers shared by the camkit example scripts (not part of the library).

Everything here is plumbing around the training step: device choice, decoding images once into a
uint8 tensor cache, the on-device augmentation pipeline, the released recipe's optimiser and
learning-rate schedule, evaluation with :mod:`camkit.metrics`, atomic checkpoint files and random
number generator states, and :func:`train_run`, the one training loop both examples use (the
camkit training step is in it, in plain sight).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchmetrics import MetricCollection

from camkit import CAMMaskingTTA, ContrastivePatchLoss, SnapMix, TrainStep
from camkit.metrics import classification_metrics

__all__ = [
    "ImageCache",
    "RunResult",
    "add_run_arguments",
    "atomic_copy",
    "atomic_save",
    "autocast",
    "capture_rng",
    "check_run_arguments",
    "evaluate",
    "first_n_per_class",
    "make_optimizer",
    "make_scheduler",
    "normalizer",
    "progress",
    "resolve_device",
    "restore_rng",
    "run_config",
    "step_milestones",
    "train_augmentation",
    "train_resize",
    "train_run",
    "tta_geometry",
    "write_line",
]

STEP_FRACTIONS: tuple[float, ...] = (0.4, 0.75, 0.9)
"""Where the released recipe divides the learning rate by 10: epochs 80/150/180 of 200."""


# ------------------------------------------------------------------------------------------------
# device, files, randomness
# ------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` fails clearly without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; a no-op elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def atomic_save(obj: object, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the target folder, then ``os.replace`` it in place.

    A reader (or a run interrupted mid-write) sees either the previous file or the new one, never
    a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy ``src`` to ``dst`` through a temporary file and ``os.replace``."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random state a run depends on, in a form ``torch.load(weights_only=True)`` accepts.

    Python's ``random``, NumPy's global generator, torch's CPU generator (kornia draws its
    augmentation parameters from it), all CUDA generators when CUDA is initialised, and the named
    explicit generators.
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "generators": {name: gen.get_state() for name, gen in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, gen in generators.items():
        gen.set_state(state["generators"][key])


def _as_tuple(value: object) -> object:
    """Lists back to tuples (``random.setstate`` wants the exact nested-tuple form)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def write_line(message: str) -> None:
    """Print a line to stdout without breaking an active progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def progress(iterable: Iterable[Any], *, quiet: bool, **kwargs: Any) -> Iterator[Any]:
    """A tqdm bar on an interactive terminal, the bare iterable otherwise (or with ``quiet``)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True, **kwargs)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def first_n_per_class(targets: Sequence[int], n: int | None) -> list[int]:
    """Indices of the first ``n`` samples of every class, in dataset order (all when ``n`` is None).

    Example:
        >>> first_n_per_class([0, 1, 0, 0, 1, 1], 2)
        [0, 1, 2, 4]
    """
    if n is None:
        return list(range(len(targets)))
    if n < 1:
        raise ValueError(f"subset: expected at least 1 image per class, got {n}")
    seen: dict[int, int] = {}
    keep = []
    for i, label in enumerate(targets):
        if seen.get(label, 0) < n:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return keep


def train_resize(img_size: int) -> int:
    """Side of the square training resize: 256 for 224 (the recipe's Resize(256)), scaled."""
    return round(img_size * 256 / 224)


def _decode(dataset: Any, index: int, size: int) -> torch.Tensor:
    image, _ = dataset[index]  # PIL RGB, decoded by the library's dataset class
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class ImageCache:
    """Decoded, resized uint8 images, kept in one ``.pt`` file so that reruns skip decoding.

    Entries are keyed by the target side and by the file's absolute path, size and modification
    time, so a changed file is decoded again. Only the images a run asks for are decoded (a
    ``--train-subset`` run decodes its subset); later runs add to the same file. The file is
    written atomically by :meth:`save`.
    """

    def __init__(self, path: str | os.PathLike[str] | None, log: Callable[[str], None] = print):
        self.path = Path(path) if path is not None else None
        self.items: dict[str, torch.Tensor] = {}
        self.dirty = False
        self.log = log
        if self.path is not None and self.path.is_file():
            try:
                loaded = torch.load(self.path, map_location="cpu", weights_only=True)
                self.items = dict(loaded["items"])
            except Exception as err:
                log(f"ignoring unreadable image cache {self.path} ({type(err).__name__}: {err})")

    @staticmethod
    def key(path: str | os.PathLike[str], size: int) -> str:
        stat = os.stat(path)
        return f"{size}|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"

    def images(
        self, dataset: Any, indices: Sequence[int], size: int, workers: int = 1
    ) -> torch.Tensor:
        """``(N, 3, size, size)`` uint8 images ``dataset[i]`` for ``i`` in ``indices``, resized.

        ``dataset`` is a camkit image dataset (``samples`` holds ``(path, label)`` pairs and
        ``dataset[i]`` returns ``(PIL RGB image, label)``); images are squashed to a square
        ``size × size`` (bilinear), as ``Resize((size, size))`` does.
        """
        keys = [self.key(dataset.samples[i][0], size) for i in indices]
        missing = [(i, k) for i, k in zip(indices, keys, strict=True) if k not in self.items]
        if missing:
            with ThreadPoolExecutor(max(1, workers)) as pool:
                decoded = pool.map(lambda item: _decode(dataset, item[0], size), missing)
                for (_, k), image in zip(missing, decoded, strict=True):
                    self.items[k] = image
            self.dirty = True
        self.log(
            f"  {len(keys)} images at {size}×{size}: {len(keys) - len(missing)} from cache, "
            f"{len(missing)} decoded"
        )
        if not keys:
            return torch.empty(0, 3, size, size, dtype=torch.uint8)
        return torch.stack([self.items[k] for k in keys])

    def save(self) -> None:
        if self.path is not None and self.dirty:
            atomic_save({"version": 1, "items": self.items}, self.path)
            self.dirty = False


def normalizer() -> nn.Module:
    """ImageNet mean/std normalisation of ``[0, 1]`` float batches (kornia)."""
    return K.Normalize(
        mean=torch.tensor(IMAGENET_DEFAULT_MEAN), std=torch.tensor(IMAGENET_DEFAULT_STD)
    )


def train_augmentation(img_size: int) -> nn.Module:
    """The recipe's training augmentation after the resize, batched on the device (kornia).

    Random ``img_size`` crop (one offset per image, sampled as a batched integer translation, so
    no per-image Python loop), horizontal and vertical flips with probability 0.5 each, ImageNet
    normalisation. Input: ``(B, 3, S, S)`` float in ``[0, 1]``.
    """
    return nn.Sequential(
        K.RandomCrop((img_size, img_size), cropping_mode="resample"),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
        normalizer(),
    )


# ------------------------------------------------------------------------------------------------
# optimisation
# ------------------------------------------------------------------------------------------------


def step_milestones(epochs: int, fractions: Sequence[float] = STEP_FRACTIONS) -> list[int]:
    """Epochs after which the learning rate is multiplied by 0.1.

    Example:
        >>> step_milestones(200)
        [80, 150, 180]
    """
    return [max(1, round(f * epochs)) for f in fractions]


def make_optimizer(
    model: nn.Module,
    lr: float,
    *,
    pretrained: bool,
    pretrained_lr_scale: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
) -> torch.optim.SGD:
    """The released recipe: SGD with Nesterov momentum 0.9 and weight decay 1e-4.

    The classifier (``model.get_classifier()``) always learns at ``lr``. With ``pretrained``
    the other (pretrained) layers learn at ``lr * pretrained_lr_scale`` (1e-3 against 1e-2);
    otherwise every layer learns at ``lr``. Group 0 is the backbone, group 1 the classifier.
    """
    head = {id(p) for p in model.get_classifier().parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head]
    groups = [
        {"params": backbone, "lr": lr * (pretrained_lr_scale if pretrained else 1.0)},
        {"params": list(model.get_classifier().parameters()), "lr": lr},
    ]
    return torch.optim.SGD(
        groups, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, epochs: int, gamma: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Step decay ×``gamma`` at :func:`step_milestones` (stepped once per epoch).

    A closed form of the epoch (``LambdaLR``), so a run resumed with a different ``--epochs``
    follows the new schedule from where it stands.
    """
    milestones = step_milestones(epochs)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: gamma ** sum(epoch >= m for m in milestones)
    )


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------


def tta_geometry(img_size: int, k: int = 31, patch_at_224: int = 8) -> tuple[int, int, int]:
    """CAM-masking TTA cell size and number of masks at ``img_size``: ``(patch, cells, k)``.

    The paper's 8-pixel cells at 224² (a 28×28 grid) scale with the image side; ``k`` is capped at
    the number of cells.

    Example:
        >>> tta_geometry(224), tta_geometry(112)
        ((8, 784, 31), (4, 784, 31))
    """
    patch = max(1, round(patch_at_224 * img_size / 224))
    cells = math.ceil(img_size / patch) ** 2
    return patch, cells, min(k, cells)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    class_names: Sequence[str] = (),
    tta: CAMMaskingTTA | None = None,
    channels_last: bool = False,
    metrics: MetricCollection | None = None,
    to_unit: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Accuracy, precision, recall and F1 (of the last class) of ``model`` on a resident test set.

    Args:
        model: the classifier, in eval mode.
        images: ``(N, 3, H, W)`` uint8 images on the model's device (already at the test size).
        labels: ``(N,)`` int64 labels on the same device.
        batch_size: images per forward.
        class_names: class names for :func:`camkit.metrics.classification_metrics`.
        tta: evaluate with this CAM-masking TTA instead of a plain forward.
        channels_last: feed channels-last batches.
        metrics: the collection to fill (default: :func:`camkit.metrics.classification_metrics`
            over ``class_names``, the last of them, COVID, as the positive class).
        to_unit: maps a uint8 batch to the float ``[0, 1]`` model input before normalisation
            (default: ``/ 255``, for images already at the test size).

    Returns:
        The metrics as fractions (``accuracy``, ``precision``, ``recall``, ``f1``, per-class
        ``sensitivity_*``/``ppv_*``); with ``tta`` also ``tta_forwards`` (mean image-forwards per
        test image, from :attr:`camkit.TTAResult.forwards`) and ``tta_flipped`` (labels the vote
        flipped).
    """
    device = images.device
    if metrics is None:
        num_classes = max(2, len(class_names))  # the positive class is the last one (COVID)
        metrics = classification_metrics(
            num_classes, positive_class=num_classes - 1, class_names=list(class_names) or None
        )
    metrics = metrics.to(device)
    if to_unit is None:
        to_unit = lambda batch: batch.float().div_(255)  # noqa: E731
    normalize = normalizer().to(device)
    forwards = torch.zeros((), dtype=torch.long, device=device)
    flipped = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, images.shape[0], batch_size):
        x = normalize(to_unit(images[start : start + batch_size]))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            if tta is not None:
                result = tta.predict(x)
                probs = result.probs
                forwards += result.forwards.sum()
                flipped += result.flipped.sum()
            else:
                probs = model(x).float().softmax(1)
        metrics.update(probs, labels[start : start + batch_size])
    values = {name: float(value) for name, value in metrics.compute().items()}
    if tta is not None:
        values["tta_forwards"] = float(forwards) / max(1, images.shape[0])
        values["tta_flipped"] = int(flipped)
    return values


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    methods: Sequence[str],
    epochs: int,
    batch_size: int,
    lr: float,
    out: Path,
    out_help: str,
) -> argparse._ArgumentGroup:
    """Add the model, method and training options both examples share; return the training group.

    ``epochs`` only documents the default (the example fills ``None`` options from its presets);
    the others are argparse defaults.
    """
    model = parser.add_argument_group("model and method")
    model.add_argument("--model", help="timm model name (default resnet18)")
    model.add_argument(
        "--pretrained",
        action="store_true",
        help="start from timm's ImageNet weights (downloaded once, then cached)",
    )
    model.add_argument(
        "--checkpoint",
        type=Path,
        help="state_dict (or a camkit run checkpoint) loaded before training/eval",
    )
    model.add_argument(
        "--method",
        nargs="+",
        choices=methods,
        metavar="METHOD",
        help=f"one or more of {', '.join(methods)} (default: all five)",
    )
    model.add_argument(
        "--tta",
        action="store_true",
        help="also evaluate every method with CAM-masking TTA (always on for full)",
    )
    model.add_argument(
        "--cpe-normalize",
        action="store_true",
        help="L2-normalise the CPE cell vectors (paper: raw dot products)",
    )
    model.add_argument(
        "--cpe-temperature", type=float, default=1.0, help="CPE temperature τ (paper: 1)"
    )

    train = parser.add_argument_group("training")
    train.add_argument(
        "--epochs", type=int, help=f"training epochs (default {epochs}; 0: evaluate only)"
    )
    train.add_argument("--batch-size", type=int, default=batch_size, help=f"default {batch_size}")
    train.add_argument(
        "--lr",
        type=float,
        default=lr,
        help=f"learning rate of new layers; pretrained layers get 0.1× (default {lr:g})",
    )
    train.add_argument("--seeds", type=int, nargs="+", help="one run per seed (default 0 1 2)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--out", type=Path, default=out, help=out_help)
    train.add_argument(
        "--resume", action="store_true", help="continue each run from its checkpoint in --out"
    )
    train.add_argument(
        "--log-every", type=int, default=10, help="read the loss back from the device every N steps"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return train


def check_run_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, positive: Sequence[str] = ()
) -> None:
    """Deduplicate ``--method``/``--seeds`` and reject impossible values of the shared options.

    ``positive`` names further options that must be ≥ 1.
    """
    args.method = list(dict.fromkeys(args.method))
    args.seeds = list(dict.fromkeys(args.seeds))
    for name in ("img_size", "batch_size", "log_every", *positive):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive int")
    if args.batch_size < 2:
        parser.error("--batch-size: BatchNorm training needs at least 2 images per batch")
    if args.epochs < 0:
        parser.error("--epochs: expected 0 or more")
    for name in ("train_subset", "test_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: expected at least 1 image per class")


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


def run_config(
    args: Any, recipe: tuple[bool, bool], seed: int, **specific: object
) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed (``epochs`` may grow): the settings both
    examples share, the method's ``(snapmix, cpe)`` recipe, and the example's ``specific`` ones."""
    snap, use_cpe = recipe
    return {
        **specific,
        "model": args.model,
        "pretrained": args.pretrained,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "snapmix": snap,
        "cpe": use_cpe,
        "cpe_normalize": args.cpe_normalize,
        "cpe_temperature": args.cpe_temperature,
        "train_subset": args.train_subset,
        "test_subset": args.test_subset,
        "seed": seed,
    }


@dataclass
class RunResult:
    state: dict[str, torch.Tensor]  # the selected weights (best validation epoch, or the last)
    best_epoch: int
    epochs: int
    train_seconds: float
    resumed_from: int


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train_run(
    args: Any,
    model: nn.Module,
    *,
    use_snapmix: bool,
    use_cpe: bool,
    num_classes: int,
    num_train: int,
    batch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    val_accuracy: Callable[[nn.Module], float] | None,
    ckpt_path: Path,
    config: dict[str, Any],
    seed: int,
    device: torch.device,
    log: Callable[[str], None],
    desc: str,
    cpe_patches: int = 2,
) -> RunResult:
    """Train one (method, seed) run, resuming and checkpointing; return the selected weights.

    ``batch(idx)`` returns the augmented, normalised ``(images, labels)`` of the training samples
    ``idx`` (on ``device``); ``val_accuracy(model)`` the validation accuracy that selects the
    reported epoch (``None``: the last epoch). ``args`` carries the run's settings: ``epochs``,
    ``batch_size``, ``lr``, ``pretrained``, ``resume``, ``quiet``, ``log_every``,
    ``cpe_normalize`` and ``cpe_temperature``. A checkpoint is written atomically after every
    epoch; with ``args.resume`` a checkpoint whose ``config`` matches is continued.
    """
    gen = torch.Generator().manual_seed(seed)  # SnapMix draws: on the host in batch mode
    order = torch.Generator().manual_seed(seed)  # batch order
    mix = SnapMix(num_classes=num_classes, alpha=1.0, prob=1.0, generator=gen)
    cpe = ContrastivePatchLoss(
        num_patches=cpe_patches, normalize=args.cpe_normalize, temperature=args.cpe_temperature
    )
    train_step = TrainStep(
        model, snapmix=mix if use_snapmix else None, cpe=cpe if use_cpe else None
    )
    optimizer = make_optimizer(model, args.lr, pretrained=args.pretrained)
    scheduler = make_scheduler(optimizer, args.epochs)
    channels_last = device.type == "cuda"

    start_epoch, best_val, best_epoch, best_state, train_seconds = 0, -1.0, 0, None, 0.0
    if args.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        differs = {
            k: (ckpt["config"].get(k), v) for k, v in config.items() if ckpt["config"].get(k) != v
        }
        if differs:
            raise ValueError(
                f"--resume: {ckpt_path} was written with other settings "
                f"(checkpoint, now): {differs}; use another --out or drop --resume"
            )
        if ckpt["epoch"] > args.epochs:
            raise ValueError(
                f"--resume: {ckpt_path} has trained {ckpt['epoch']} epochs, more than "
                f"--epochs {args.epochs}; ask for at least {ckpt['epoch']} epochs"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        restore_rng(ckpt["rng"], {"snapmix": gen, "order": order})
        start_epoch, best_val, best_epoch = ckpt["epoch"], ckpt["best_val"], ckpt["best_epoch"]
        best_state, train_seconds = ckpt["best_state"], ckpt["train_seconds"]
        log(f"  resuming {ckpt_path.name} from epoch {start_epoch}/{args.epochs}")
    elif ckpt_path.is_file():
        log(f"  {ckpt_path.name} exists: starting afresh (pass --resume to continue it)")
    # the schedule is a closed form of the epoch: re-derive the lr for the (maybe new) --epochs
    for group, base, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(scheduler.last_epoch)

    bs = args.batch_size
    bars = progress(
        range(start_epoch, args.epochs),
        quiet=args.quiet,
        total=args.epochs,
        initial=start_epoch,
        desc=desc,
        unit="epoch",
    )
    for epoch in bars:
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(num_train, generator=order).to(device)
        batches = [perm[i : i + bs] for i in range(0, num_train, bs) if num_train - i >= 2]
        loss_sum = torch.zeros((), device=device)
        steps = progress(batches, quiet=args.quiet, leave=False, unit="step")
        for step, idx in enumerate(steps, 1):
            # -------------------------------- the training step --------------------------------
            images, labels = batch(idx)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                loss = train_step(images, labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # ------------------------------------------------------------------------------------
            loss_sum += loss.detach()
            if step % args.log_every == 0:
                steps.set_postfix(loss=f"{(loss_sum / step).item():.4f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - t0
        scheduler.step()
        mean_loss = (loss_sum / max(1, len(batches))).item()

        line = f"epoch {epoch + 1}/{args.epochs} loss {mean_loss:.4f}"
        if val_accuracy is not None:
            model.eval()
            val_acc = val_accuracy(model)
            if val_acc > best_val:
                best_val, best_epoch, best_state = val_acc, epoch + 1, _cpu_state(model)
            line += f" val acc {100 * val_acc:.2f} (best {100 * best_val:.2f} @ {best_epoch})"
        else:
            best_epoch = epoch + 1  # no validation split: the last epoch is reported
        atomic_save(
            {
                "config": config,
                "epoch": epoch + 1,
                "epochs": args.epochs,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "best_state": best_state,
                "best_val": best_val,
                "best_epoch": best_epoch,
                "train_seconds": train_seconds,
                "rng": capture_rng({"snapmix": gen, "order": order}),
            },
            ckpt_path,
        )
        bars.set_postfix_str(line.split(" ", 2)[2])
        log(f"  {line} ({time.perf_counter() - t0:.1f}s)")

    if best_state is None:  # no validation split, or no epoch trained (--epochs 0)
        best_state, best_epoch = _cpu_state(model), args.epochs
    return RunResult(best_state, best_epoch, args.epochs, train_seconds, start_epoch)
