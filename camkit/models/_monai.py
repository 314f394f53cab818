"""MONAI classifiers through timm's contract, in 2-D and 3-D (``spatial_dims=2`` or ``3``).

Each adapter replays the network's ``forward`` cut at the final feature map, with the same
operations in the same order: the logits equal the network's bit for bit
(``tests/test_adapters.py``). A subclass that overrides ``forward`` is not recognised.
"""

from __future__ import annotations

import torch
from monai.networks.nets import SENet, ViT
from monai.networks.nets.densenet import DenseNet
from monai.networks.nets.efficientnet import EfficientNet
from monai.networks.nets.resnet import ResNet
from torch import nn

from camkit.models._base import ClassifierAdapter, PatchGrid, cube_side

__all__ = ["adapt"]


class _MonaiAdapter(ClassifierAdapter):
    family = "monai"
    sources: tuple[type, ...] = ()


class _DenseNet(_MonaiAdapter):
    """DenseNet121/169/201/264: ``class_layers.relu(features)`` → the other class layers."""

    sources = (DenseNet,)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.module.class_layers
        return layers[0](self.module.features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        for layer in list(self.module.class_layers)[1:]:
            x = layer(x)
        return x

    def get_classifier(self) -> nn.Module:
        return self.module.class_layers[-1]


class _EfficientNet(_MonaiAdapter):
    """EfficientNetBN: the head convolution's activations → avg-pool, flatten, dropout, ``_fc``."""

    sources = (EfficientNet,)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = m._swish(m._bn0(m._conv_stem(m._conv_stem_padding(x))))
        x = m._conv_head(m._conv_head_padding(m._blocks(x)))
        return m._swish(m._bn1(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        return m._fc(m._dropout(m._avg_pooling(x).flatten(start_dim=1)))

    def get_classifier(self) -> nn.Module:
        return self.module._fc


class _SENet(_MonaiAdapter):
    """SENet154, SEResNet50/101/152, SEResNext50/101: ``features`` → ``logits``."""

    sources = (SENet,)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.logits(x)

    def get_classifier(self) -> nn.Module:
        return self.module.last_linear


class _ResNet(_MonaiAdapter):
    """ResNet (``resnet10`` … ``resnet200``): ``layer4`` → avgpool → flatten → ``fc``."""

    sources = (ResNet,)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = m.act(m.bn1(m.conv1(x)))
        if not m.no_max_pool:
            x = m.maxpool(x)
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.module.avgpool(x)
        return self.module.fc(x.view(x.size(0), -1))

    def get_classifier(self) -> nn.Module:
        return self.module.fc


class _ViT(_MonaiAdapter):
    """ViT with ``classification=True``: tokens after ``norm`` → ``classification_head`` on the
    class token (a linear layer, with MONAI's default ``Tanh`` after it)."""

    sources = (ViT,)
    tensor_output = False  # MONAI's ViT returns (logits, hidden states)
    num_prefix_tokens = 1

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        proj = model.patch_embedding.patch_embeddings
        if isinstance(proj, (nn.Conv2d, nn.Conv3d)):
            rank = proj.weight.ndim - 2
            side = cube_side(int(model.patch_embedding.n_patches), rank)
            self.patch_embed = PatchGrid(proj.kernel_size, (side,) * rank)

    def probe_size(self, rank: int) -> tuple[int, ...]:
        grid = getattr(self, "patch_embed", None)
        proj = self.module.patch_embedding.patch_embeddings
        if grid is None and isinstance(proj, (nn.Conv2d, nn.Conv3d)):
            side = cube_side(int(self.module.patch_embedding.n_patches), rank)
            return tuple(side * p for p in proj.kernel_size)
        return super().probe_size(rank)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        x = m.patch_embedding(x)
        x = torch.cat((m.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for block in m.blocks:
            x = block(x)
        return m.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.classification_head(x[:, 0])

    def get_classifier(self) -> nn.Module:
        head = self.module.classification_head
        return head[0] if isinstance(head, nn.Sequential) and len(head) == 1 else head


_ADAPTERS: tuple[type[_MonaiAdapter], ...] = (_DenseNet, _EfficientNet, _SENet, _ResNet, _ViT)


def _own_forward(model: nn.Module, source: type) -> bool:
    cls = type(model)
    return all(
        getattr(cls, name, None) is getattr(source, name, None)
        for name in ("forward", "features", "logits")
    )


def adapt(model: nn.Module) -> ClassifierAdapter | None:
    """The MONAI adapter of ``model``, or ``None`` when no adapter replays its forward.

    Raises:
        ValueError: a ``ViT`` without ``classification=True`` or a ``ResNet`` without its
            ``fc`` layer (``feed_forward=False``): the network has no classifier.
    """
    for adapter in _ADAPTERS:
        for source in adapter.sources:
            if isinstance(model, source) and _own_forward(model, source):
                if adapter is _ViT and not hasattr(model, "classification_head"):
                    raise ValueError(
                        "model: a MONAI ViT without a classifier; create it with "
                        "classification=True (and num_classes=K)"
                    )
                if adapter is _ResNet and model.fc is None:
                    raise ValueError(
                        "model: a MONAI ResNet without its fc layer; create it with "
                        "feed_forward=True (and num_classes=K)"
                    )
                return adapter(model)
    return None
