"""Small models for tests: timm-contract classifiers whose behaviour is easy to reason about.

Also `data_root`, where the staged data is (the lookup of the examples and benchmarks).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """A timm-contract classifier: strided conv features, average pooling, linear head."""

    def __init__(self, num_classes: int = 2, channels: int = 6, stride: int = 4, bn: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = channels
        self.conv = nn.Conv2d(3, channels, kernel_size=stride, stride=stride)
        self.bn = nn.BatchNorm2d(channels) if bn else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def tiny_timm(arch: str = "resnet18", **kwargs) -> nn.Module:
    """A 2-class timm model, seeded, in train mode (pretrained=False)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(arch, pretrained=False, num_classes=2, **kwargs).train()


def fixed_batch(size: int = 64, b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random batch ``(b, 3, size, size)`` with labels 0, 1, 1, 0."""
    gen = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, size, size, generator=gen), torch.tensor([0, 1, 1, 0][:b])


def nest(rows: list[dict]) -> dict:
    """Result rows as ``{dataset: {method: {key: [value per seed]}}}`` (settings left out)."""
    out: dict = {}
    for row in rows:
        entry = out.setdefault(row["dataset"], {}).setdefault(row["method"], {})
        for key, value in row.items():
            if key not in ("dataset", "method", "settings"):
                entry.setdefault(key, []).append(value)
    return out


def data_root() -> Path | None:
    """``CAMKIT_DATA`` if set, else the nearest ``shared/data`` above the repository, else ``None``.

    The lookup of ``examples/*.py`` and ``benchmarks/data.py``: from ``/work/main`` it finds
    ``/work/main/shared/data`` or the sibling ``/work/shared/data``.
    """
    if os.environ.get("CAMKIT_DATA"):
        return Path(os.environ["CAMKIT_DATA"]).expanduser()
    found = (p / "shared" / "data" for p in Path(__file__).resolve().parents)
    return next((p for p in found if p.is_dir()), None)
