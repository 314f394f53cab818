"""Real data and a trained model for the TTA benchmark (COVID-CT, "site B").

Without ``--checkpoint``, :func:`train_classifier` trains a timm ResNet-18 from scratch on the
site-B train split (no pretrained weights: the benchmark machine has no network). This is a short
CPU training, only meant to give the TTA a model whose predictions and CAMs are those of a real
classifier on real images; its accuracy is reported, not tuned:

- images ``Resize((S, S))`` (S = 112 by default), ImageNet mean/std, held in memory;
- batch 32, random horizontal and vertical flips per image, plain cross-entropy;
- SGD (Nesterov, momentum 0.9, weight decay 5e-4), lr 0.05 with a per-step cosine decay;
- a fixed number of epochs (``--tta-epochs``), the last epoch's weights are used (no selection on
  the test split).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import timm
import torch
from torch import nn

from camkit import TrainStep

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def data_root() -> Path | None:
    """``CAMKIT_DATA`` if set, else the nearest ``shared/data`` above the repository, else ``None``.

    The one data-root lookup of the benchmarks (the examples have their own, the same).
    """
    if os.environ.get("CAMKIT_DATA"):
        return Path(os.environ["CAMKIT_DATA"]).expanduser()
    found = (p / "shared" / "data" for p in Path(__file__).resolve().parents)
    return next((p for p in found if p.is_dir()), None)


def covid_ct_root() -> Path | None:
    """``data_root() / "COVID-CT"`` when it exists, else ``None``."""
    root = data_root()
    if root is None or not (root / "COVID-CT").is_dir():
        return None
    return root / "COVID-CT"


def load_split(
    root: Path, split: str, size: int, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A COVID-CT split as normalised ``(N, 3, size, size)`` float images and ``(N,)`` labels.

    ``limit`` keeps an evenly spaced subset (both classes: the split is ordered by class).
    """
    import torchvision.transforms as T

    from camkit.datasets import COVIDCT

    transform = T.Compose(
        [T.Resize((size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    dataset = COVIDCT(root, split, transform=transform)
    indices = list(range(len(dataset)))
    if limit is not None and limit < len(indices):
        step = len(indices) / limit
        indices = [int(i * step) for i in range(limit)]
    images, labels = zip(*(dataset[i] for i in indices), strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _flip(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    coins = torch.rand(2, images.shape[0], generator=gen) < 0.5
    images = torch.where(coins[0].view(-1, 1, 1, 1), images.flip(3), images)
    return torch.where(coins[1].view(-1, 1, 1, 1), images.flip(2), images)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    arch: str = "resnet18",
    epochs: int = 12,
    batch_size: int = 32,
    lr: float = 0.05,
    device: torch.device | str = "cpu",
    seed: int = 0,
    log: bool = True,
) -> tuple[nn.Module, dict[str, float]]:
    """Train ``arch`` from scratch on in-memory images (see the module doc for the recipe).

    Returns:
        the model in eval mode, and ``{"train_seconds", "epochs", "final_train_loss"}``.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=int(labels.max()) + 1)
    model.to(device).train()
    step = TrainStep(model)  # the plain step: cross-entropy on the one-hot labels
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))
    )
    start = time.perf_counter()
    loss_value = float("nan")
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        running, seen = 0.0, 0
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            x = _flip(images[idx], gen).to(device)
            y = labels[idx].to(device)
            loss = step(x, y).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
        loss_value = running / seen
        if log:
            print(
                f"  [tta model] epoch {epoch + 1}/{epochs} loss {loss_value:.3f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return model.eval(), {
        "train_seconds": time.perf_counter() - start,
        "epochs": float(epochs),
        "final_train_loss": loss_value,
    }


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on in-memory images."""
    device = next(model.parameters()).device
    preds = torch.cat(
        [model(images[i : i + 64].to(device)).argmax(1).cpu() for i in range(0, len(images), 64)]
    )
    return float((preds == labels).float().mean())
