"""[`as_classifier`][camkit.as_classifier]: a model as camkit reads it, by family or by split.

The families are listed once, in `_FAMILIES`: the top-level package a model's class comes from
and the private module of its adapters (imported only when such a model is met, so camkit never
imports torchvision, MONAI or transformers itself). A new family is one module with an
``adapt(model)`` function and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from torch import nn

from camkit.models._base import ClassifierAdapter
from camkit.models._split import Part, SplitClassifier, check_split

__all__ = ["as_classifier", "eval_module", "resolve", "source_model"]

_FAMILIES = {
    "torchvision": "camkit.models._torchvision",
    "monai": "camkit.models._monai",
    "transformers": "camkit.models._hf",
}
_CONTRACT = ("forward_features", "forward_head", "get_classifier")


def _has_contract(model: object) -> bool:
    return all(callable(getattr(model, name, None)) for name in _CONTRACT)


def _family_adapter(model: nn.Module) -> ClassifierAdapter | None:
    roots = {cls.__module__.split(".")[0] for cls in type(model).__mro__}
    for root, module in _FAMILIES.items():
        if root in roots:
            adapter = importlib.import_module(module).adapt(model)
            if adapter is not None:
                return adapter
    return None


_HEAD_TYPES = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.Flatten,
    nn.Dropout,
    nn.Linear,
)


def _split_hint(model: nn.Module) -> str:
    children = list(model.named_children())
    listed = ", ".join(f"{n} ({type(m).__name__})" for n, m in children[:8]) or "none"
    cut = len(children)
    while cut > 1 and (
        isinstance(children[cut - 1][1], _HEAD_TYPES)
        or any(isinstance(m, nn.Linear) for m in children[cut - 1][1].modules())
    ):
        cut -= 1
    names = [n for n, _ in children]
    features = names[:cut] if 0 < cut < len(names) else ["<feature extractor>"]
    head = names[cut:] if 0 < cut < len(names) else ["<head>"]
    shown = [features[0] if len(features) == 1 else features, head[0] if len(head) == 1 else head]
    return (
        f"its children: {listed}. Name the split: camkit.as_classifier(model, "
        f"features={shown[0]!r}, head={shown[1]!r}), where features maps the images to the "
        "final feature map (B, C, h, w) and head maps that to the (B, K) logits (a step may "
        "also be a function, e.g. torch.relu)"
    )


def resolve(model: nn.Module, required: bool = True) -> nn.Module:
    """``model`` if it has timm's contract, else its family adapter; else raise (or, when not
    ``required``, return ``model``)."""
    if _has_contract(model):
        return model
    adapter = _family_adapter(model)
    if adapter is not None or not required:
        return adapter if adapter is not None else model
    raise TypeError(
        f"model: {type(model).__name__} is neither a timm classifier (forward_features, "
        "forward_head, get_classifier) nor a model camkit adapts (torchvision, MONAI, Hugging "
        f"Face *ForImageClassification; see the page 'Your model'); {_split_hint(model)}"
    )


def as_classifier(
    model: nn.Module,
    features: Part | None = None,
    head: Part | None = None,
    *,
    classifier: str | nn.Module | None = None,
    num_classes: int | None = None,
    num_prefix_tokens: int = 0,
    patch_size: int | Sequence[int] | None = None,
    input_size: Sequence[int] | None = None,
    check: bool = True,
) -> nn.Module:
    """``model`` presented through timm's classifier contract, the one camkit reads.

    Every part of camkit calls this on the model it is given; call it yourself only to name a
    split. Without ``features``/``head``:

    - a model with ``forward_features``, ``forward_head`` and ``get_classifier`` (every timm
      classifier, or an adapter written by hand) is returned as it is;
    - a torchvision, MONAI or Hugging Face classifier of a family camkit knows is returned in
      its adapter (see the page "Your model" for the list);
    - any other model is refused with the split to write.

    With ``features`` and ``head``, any classifier: ``features`` maps the images to the final
    feature map, ``head`` maps that to the logits. The split is checked once against the
    model's own forward on a zero input (on copies in eval mode; ``check=False`` skips it).

    The adapter holds the model, not a copy: its parameters are the model's, and its logits are
    ``model(x)``'s (``.logits`` for Hugging Face outputs).

    Args:
        model: the classifier.
        features: the feature extractor: a module, a dotted submodule name, a function, or a
            sequence of them run in order (``["conv1", "bn1", ..., "layer4"]``).
        head: the head, from the feature map to the ``(B, K)`` logits, in the same forms.
        classifier: the class layer of the split (default: the head's last linear layer).
        num_classes: ``K`` of the split (default: the classifier's output size).
        num_prefix_tokens: of a split whose features are tokens ``(B, N, C)``.
        patch_size: of a split whose features are tokens, for non-square inputs.
        input_size: ``(C, H, W)`` (or ``(C, D, H, W)``) of the zero input the split is checked
            on (default: the input layer's channels, 64 a side; 32 for 3-D).
        check: check the split against the model's forward.

    Returns:
        The model or its adapter ([`ClassifierAdapter`][camkit.ClassifierAdapter]).

    Raises:
        TypeError: a model camkit does not know, without a split (the message shows the split
            to write), or only one of ``features``/``head``.
        ValueError: the split names no submodule, or does not reproduce the model's logits.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from camkit import CAMExtractor, as_classifier
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 2))
        >>> model = as_classifier(net, features=["0", "1"], head=["2", "3", "4"])
        >>> ext = CAMExtractor(model)
        >>> ext.exact, ext(torch.randn(2, 3, 16, 16)).cams.shape
        (True, torch.Size([2, 14, 14]))
    """
    if isinstance(model, ClassifierAdapter) and features is None and head is None:
        return model
    if features is None and head is None:
        return resolve(model)
    if features is None or head is None:
        raise TypeError(
            "features/head: a split needs both the feature extractor and the head, got "
            f"features={features!r}, head={head!r}"
        )
    split = SplitClassifier(
        model,
        features,
        head,
        classifier=classifier,
        num_classes=num_classes,
        num_prefix_tokens=num_prefix_tokens,
        patch_size=patch_size,
    )
    if check:
        check_split(model, split, input_size)
    return split


def source_model(model: nn.Module) -> nn.Module:
    """The user's model behind an adapter (``model`` itself when it is not one)."""
    return model.module if isinstance(model, ClassifierAdapter) else model


def eval_module(model: nn.Module) -> nn.Module:
    """A module whose ``forward`` returns the ``(B, K)`` logits tensor: the model itself where
    its forward already does, else its adapter (Hugging Face, MONAI's ViT)."""
    adapted = resolve(model, required=False)
    if isinstance(adapted, ClassifierAdapter) and not adapted.tensor_output:
        return adapted
    return source_model(model)
