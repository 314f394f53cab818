"""torchvision classifiers through timm's contract: each adapter replays the model's forward.

Every ``forward_features``/``forward_head`` pair below is the model's own ``forward`` cut where
the final feature map is, with the same operations in the same order, so the logits equal
``model(x)`` bit for bit (``tests/test_adapters.py`` checks each family). A model whose class
overrides ``forward`` is not recognised (its forward is no longer the one replayed here) and is
refused with the split to write instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from camkit.models._base import ClassifierAdapter, PatchGrid

__all__ = ["adapt"]


class _TorchvisionAdapter(ClassifierAdapter):
    family = "torchvision"
    sources: tuple[type, ...] = ()


class _ResNet(_TorchvisionAdapter):
    """ResNet, ResNeXt, Wide ResNet: ``layer4`` → avgpool → flatten → ``fc``."""

    sources = (tvm.ResNet,)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.fc(torch.flatten(self.module.avgpool(x), 1))

    def get_classifier(self) -> nn.Module:
        return self.module.fc


class _DenseNet(_TorchvisionAdapter):
    """DenseNet: ``relu(features)`` → adaptive avg-pool → flatten → ``classifier``."""

    sources = (tvm.DenseNet,)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.module.features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))

    def get_classifier(self) -> nn.Module:
        return self.module.classifier


class _PooledSequential(_TorchvisionAdapter):
    """EfficientNet v1/v2, MobileNet v3: ``features`` → avgpool → flatten → ``classifier``."""

    sources = (tvm.EfficientNet, tvm.MobileNetV3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.classifier(torch.flatten(self.module.avgpool(x), 1))

    def get_classifier(self) -> nn.Module:
        head = self.module.classifier
        linear = [m for m in head if isinstance(m, nn.Linear)]
        return linear[0] if len(linear) == 1 else head


class _MobileNetV2(_PooledSequential):
    """MobileNet v2: ``features`` → adaptive avg-pool → flatten → ``classifier``."""

    sources = (tvm.MobileNetV2,)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.classifier(torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class _ConvNeXt(_PooledSequential):
    """ConvNeXt: ``features`` → avgpool → ``classifier`` (LayerNorm2d, flatten, linear)."""

    sources = (tvm.ConvNeXt,)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.classifier(self.module.avgpool(x))


class _RegNet(_TorchvisionAdapter):
    """RegNet: ``trunk_output(stem)`` → avgpool → flatten → ``fc``."""

    sources = (tvm.RegNet,)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.trunk_output(self.module.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.fc(self.module.avgpool(x).flatten(start_dim=1))

    def get_classifier(self) -> nn.Module:
        return self.module.fc


class _ViT(_TorchvisionAdapter):
    """VisionTransformer: the encoder's tokens (class token first) → ``heads`` on the class
    token."""

    sources = (tvm.VisionTransformer,)
    num_prefix_tokens = 1

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        side = model.image_size // model.patch_size
        self.patch_embed = PatchGrid((model.patch_size,) * 2, (side, side))

    def probe_size(self, rank: int) -> tuple[int, ...]:
        return (self.module.image_size,) * 2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = m._process_input(x)
        token = m.class_token.expand(x.shape[0], -1, -1)
        return m.encoder(torch.cat([token, x], dim=1))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.heads(x[:, 0])

    def get_classifier(self) -> nn.Module:
        heads = self.module.heads
        return heads.head if len(heads) == 1 else heads


class _Swin(_TorchvisionAdapter):
    """SwinTransformer: ``norm(features)`` (NHWC) → permute → avgpool → flatten → ``head``."""

    sources = (tvm.SwinTransformer,)
    output_fmt = "NHWC"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.norm(self.module.features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        return m.head(m.flatten(m.avgpool(m.permute(x))))

    def get_classifier(self) -> nn.Module:
        return self.module.head


_ADAPTERS: tuple[type[_TorchvisionAdapter], ...] = (
    _ResNet,
    _DenseNet,
    _MobileNetV2,
    _ConvNeXt,
    _PooledSequential,
    _RegNet,
    _ViT,
    _Swin,
)


def _own_forward(model: nn.Module, source: type) -> bool:
    """``model``'s class runs ``source``'s forward (it did not override it)."""
    cls = type(model)
    return all(
        getattr(cls, name, None) is getattr(source, name, None)
        for name in ("forward", "_forward_impl", "_process_input")
    )


def adapt(model: nn.Module) -> ClassifierAdapter | None:
    """The torchvision adapter of ``model``, or ``None`` when no adapter replays its forward."""
    for adapter in _ADAPTERS:
        for source in adapter.sources:
            if isinstance(model, source) and _own_forward(model, source):
                return adapter(model)
    return None
