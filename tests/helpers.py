"""Small models for tests: timm-contract classifiers whose behaviour is easy to reason about."""

from __future__ import annotations

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
