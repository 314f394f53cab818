"""Hugging Face ``*ForImageClassification`` models through timm's contract.

The features are the base model's ``last_hidden_state`` (what ``model.base_model(x)`` returns);
the head replays what the classification model does with it. The logits equal
``model(x).logits`` bit for bit (``tests/test_adapters.py``). Models are used as they are:
``pixel_values`` of the model's configured size (ViT, Swin) and no ``interpolate_pos_encoding``.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn

from camkit.models._base import ClassifierAdapter, PatchGrid

__all__ = ["adapt"]


class _HFAdapter(ClassifierAdapter):
    family = "transformers"
    tensor_output = False  # an ImageClassifierOutput: the logits are its .logits
    source_names: tuple[str, ...] = ()

    def probe_size(self, rank: int) -> tuple[int, ...]:
        size = getattr(self.module.config, "image_size", None)
        if size is None or not self.fixed_size:
            return super().probe_size(rank)
        return tuple(size) if isinstance(size, (tuple, list)) else (int(size),) * 2

    fixed_size = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module.base_model(x)
        # a ModelOutput, or its tuple form (config.return_dict=False): the first entry
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def get_classifier(self) -> nn.Module:
        head = self.module.classifier
        if isinstance(head, nn.Sequential):
            linear = [m for m in head if isinstance(m, nn.Linear)]
            return linear[0] if len(linear) == 1 else head
        return head


class _ResNet(_HFAdapter):
    """ResNet (and RegNet): ``pooler`` (avg-pool) → ``classifier`` (flatten, linear)."""

    source_names = ("ResNetForImageClassification", "RegNetForImageClassification")

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.classifier(self.module.base_model.pooler(x))


class _ConvNext(_HFAdapter):
    """ConvNeXt v1/v2: mean over cells → ``layernorm`` → ``classifier``."""

    source_names = ("ConvNextForImageClassification", "ConvNextV2ForImageClassification")

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.module.base_model.layernorm(x.mean([-2, -1]))
        return self.module.classifier(pooled)


class _ViT(_HFAdapter):
    """ViT: tokens after ``layernorm`` (class token first) → ``classifier`` on the class token."""

    source_names = ("ViTForImageClassification",)
    num_prefix_tokens = 1
    fixed_size = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        size, patch = self.probe_size(2), model.config.patch_size
        patch = tuple(patch) if isinstance(patch, (tuple, list)) else (int(patch),) * 2
        self.patch_embed = PatchGrid(patch, tuple(s // p for s, p in zip(size, patch, strict=True)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.classifier(x[:, 0, :])


class _Swin(_HFAdapter):
    """Swin: tokens after ``layernorm`` → ``pooler`` (token average) → ``classifier``."""

    source_names = ("SwinForImageClassification",)
    fixed_size = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        patch = model.config.patch_size
        patch = tuple(patch) if isinstance(patch, (tuple, list)) else (int(patch),) * 2
        merges = len(model.config.depths) - 1

        def side(pixels: int, patch_side: int) -> int:
            cells = -(-pixels // patch_side)  # the embedding pads to whole patches
            for _ in range(merges):
                cells = (cells + 1) // 2
            return cells

        size = self.probe_size(2)
        grid = tuple(side(s, p) for s, p in zip(size, patch, strict=True))
        self.patch_embed = PatchGrid(patch, grid, stride_of=side)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.module.base_model.pooler(x.transpose(1, 2))
        return self.module.classifier(torch.flatten(pooled, 1))


_ADAPTERS: tuple[type[_HFAdapter], ...] = (_ResNet, _ConvNext, _ViT, _Swin)


def adapt(model: nn.Module) -> ClassifierAdapter | None:
    """The Hugging Face adapter of ``model``, or ``None`` when none replays its forward."""
    for adapter in _ADAPTERS:
        for name in adapter.source_names:
            source = getattr(transformers, name, None)
            if (
                source is not None
                and isinstance(model, source)
                and type(model).forward is source.forward
            ):
                return adapter(model)
    return None
