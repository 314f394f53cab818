"""The adapter base class and the helpers every family shares.

Private module: the public names are re-exported by `camkit.models` and `camkit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

__all__ = ["ClassifierAdapter", "PatchGrid", "input_conv", "last_linear", "unwrap_logits"]


def unwrap_logits(output: object) -> torch.Tensor:
    """The ``(B, K)`` logits of a model's output: the tensor itself, or its ``.logits``.

    Hugging Face classifiers return an ``ImageClassifierOutput`` whose ``logits`` field holds
    the tensor; every other output camkit accepts is the tensor.

    Raises:
        TypeError: ``output`` is neither a tensor nor an object with a ``logits`` tensor.

    Examples:
        >>> import torch
        >>> from camkit.models import unwrap_logits
        >>> unwrap_logits(torch.zeros(2, 3)).shape
        torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(
        f"model: returned a {type(output).__name__}, expected a (B, K) logits tensor (or an "
        "output with a .logits tensor, as Hugging Face classifiers return); present the model "
        "through camkit.models.as_classifier(model, features=..., head=...)"
    )


def input_conv(model: nn.Module) -> nn.Conv2d | nn.Conv3d | None:
    """The first 2-D or 3-D convolution of ``model`` (its input layer for the CNNs camkit
    adapts), or ``None``."""
    return next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)


def last_linear(module: object) -> nn.Module | None:
    """The last ``nn.Linear`` (or 1×1 convolution) inside ``module``, or ``None``."""
    if not isinstance(module, nn.Module):
        return None
    found = None
    for m in module.modules():
        if isinstance(m, nn.Linear) or (
            isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and set(m.kernel_size) == {1}
        ):
            found = m
    return found


class PatchGrid:
    """The patch grid of a token model, in the form timm's ``patch_embed`` offers it.

    camkit folds the patch tokens of ``forward_features`` onto ``dynamic_feat_size(image_size)``
    (timm's ``PatchEmbed`` method); an adapter of a token model sets one as its ``patch_embed``.

    Args:
        patch_size: the patch side(s) in pixels, one per spatial dimension.
        grid_size: the grid of the model's fixed input size.
        stride_of: the grid side of an image side, when it is not ``side // patch``.
    """

    def __init__(
        self,
        patch_size: Sequence[int],
        grid_size: Sequence[int],
        stride_of: object = None,
    ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        self.grid_size = tuple(int(g) for g in grid_size)
        self._side = stride_of

    def dynamic_feat_size(self, image_size: Sequence[int]) -> tuple[int, ...]:
        """The token grid of an input of spatial size ``image_size``."""
        if callable(self._side):
            return tuple(
                self._side(int(s), int(p))
                for s, p in zip(image_size, self.patch_size, strict=False)
            )
        return tuple(int(s) // p for s, p in zip(image_size, self.patch_size, strict=False))


class ClassifierAdapter(nn.Module):
    """A model presented through timm's classifier contract, without copying it.

    camkit reads one contract: ``forward_features(x)`` gives the final feature map (or tokens),
    ``forward_head(features)`` the ``(B, K)`` logits, ``get_classifier()`` the class layer,
    ``num_classes`` the class count, and, for token models, ``num_prefix_tokens`` and a
    ``patch_embed`` grid. An adapter holds the user's model as ``module`` and calls its modules:
    its parameters *are* the model's (an optimiser built on the model trains it), its output is
    the model's logits, bit for bit, and nothing in the model is changed.

    Subclasses implement `forward_features`, `forward_head` and `get_classifier`; the
    constructor reads ``num_classes`` from the class layer (the last linear layer of
    ``get_classifier()``).

    Args:
        model: the model to present.
        num_classes: the class count; ``None`` reads it from the classifier.

    Attributes:
        module: the user's model (named as DDP and timm's EMA name what they wrap, so
            ``timm.utils.unwrap_model`` of an adapter is the model).
        num_classes: ``K``.
        tensor_output: whether ``module(x)`` already returns the logits tensor (``False`` for
            Hugging Face outputs and MONAI's ViT tuple).
        pretrained_cfg: what camkit's messages and its construction-time probe read:
            ``architecture`` (a name) and ``input_size`` (a ``(C, *spatial)`` input the model
            accepts).

    Raises:
        ValueError: ``num_classes`` is ``None`` and the classifier has no linear layer to read
            it from.
    """

    family: ClassVar[str] = "custom"
    tensor_output: ClassVar[bool] = True
    output_fmt: str = "NCHW"
    num_prefix_tokens: int = 0

    def __init__(self, model: nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        self.module = model
        self._finish(num_classes)

    def _finish(self, num_classes: int | None) -> None:
        """Read ``num_classes`` and the probe's input size once ``module`` is set."""
        model = self.module
        if num_classes is None:
            layer = last_linear(self.get_classifier())
            if layer is None:
                raise ValueError(
                    f"model: cannot read the class count of {type(model).__name__}: its "
                    f"classifier {type(self.get_classifier()).__name__} has no linear layer; "
                    "pass num_classes="
                )
            num_classes = getattr(layer, "out_features", None) or layer.out_channels
        self.num_classes = int(num_classes)
        conv = input_conv(model)
        rank = conv.weight.ndim - 2 if conv is not None else 2
        channels = conv.in_channels if conv is not None else 3
        self.pretrained_cfg = {
            "architecture": f"{self.family} {type(model).__name__}",
            "input_size": (channels, *self.probe_size(rank)),
        }

    def probe_size(self, rank: int) -> tuple[int, ...]:
        """A spatial input size the model accepts (64 a side for 2-D, 32 for 3-D CNNs)."""
        return (64,) * rank if rank == 2 else (32,) * rank

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The model's final feature map (or tokens) of ``x``."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(B, K)`` logits of the features ``x``, through the model's own head."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        """The model's class layer (the whole head module when it is more than a linear)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_head(forward_features(x))``: the model's logits, as a tensor."""
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"family={self.family!r}, num_classes={self.num_classes}"


def cube_side(count: int, rank: int) -> int:
    """The side of a ``rank``-dimensional cube of ``count`` cells (rounded)."""
    return round(count ** (1.0 / rank)) if count > 0 else 0
