"""Small models for tests: timm-contract classifiers whose behaviour is easy to reason about.

Also `data_root` (the runner's: where the staged data is), `data_marker`, and the `one_thread`
fixture.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.runner.data import data_root

__all__ = ["data_root"]  # re-exported for the tests


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


def data_marker(present: bool, reason: str) -> Callable:
    """A decorator: mark a test as using the staged data (``-m data``), skip it unless ``present``.

    ``reason`` is the skip message (what data the test needs and where it looks).
    """
    skip = pytest.mark.skipif(not present, reason=reason)

    def needs_data(test):
        return pytest.mark.data(skip(test))

    return needs_data


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one thread, and do not stall when other jobs share the CPU.

    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")`` after
    importing it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DATA = data_root()
needs_site_b = data_marker(
    DATA is not None and (DATA / "COVID-CT").is_dir(),
    "needs COVID-CT in shared/data above the repository (or CAMKIT_DATA); not found",
)
needs_digits = data_marker(
    DATA is not None and all((DATA / n).exists() for n in ("mnist.npz", "usps.npz", "BSDS500")),
    "needs mnist.npz, usps.npz and BSDS500 in shared/data (or CAMKIT_DATA); not found",
)
needs_site_a = data_marker(
    DATA is not None and (DATA / "SARS-CoV-2-CT").is_dir(),
    "needs SARS-CoV-2-CT in shared/data above the repository (or CAMKIT_DATA); not found",
)
needs_medmnist = data_marker(
    DATA is not None
    and all(
        (DATA / "MedMNIST" / n).is_file()
        for n in (
            "adrenalmnist3d.npz",
            "adrenalmnist3d_64.npz",
            "vesselmnist3d.npz",
            "pneumoniamnist.npz",
        )
    ),
    "needs the four MedMNIST .npz files in shared/data/MedMNIST (or CAMKIT_DATA); not found",
)
