"""Any classifier by an explicit split: its feature extractor and its head.

Private module: the public names are re-exported by `camkit.models` and `camkit`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from camkit.models._base import ClassifierAdapter, PatchGrid, last_linear, unwrap_logits

__all__ = ["Part", "SplitClassifier"]

Part = str | nn.Module | Callable | Sequence[str | nn.Module | Callable]
"""A part of a split: a module, a dotted submodule name (``"backbone.body"``), a function
(``torch.relu``), or a sequence of them run in order."""


def _steps(model: nn.Module, part: Part, name: str) -> tuple[Callable, ...]:
    """``part`` as a tuple of callables, each a submodule of ``model`` or parameter-free."""
    items = [part] if isinstance(part, (str, nn.Module)) or callable(part) else list(part)
    if not items:
        raise ValueError(
            f"{name}: expected a module, a submodule name or a sequence of them, "
            "got an empty sequence"
        )
    own = {id(m) for m in model.modules()}
    steps: list[Callable] = []
    for item in items:
        if isinstance(item, str):
            try:
                item = model.get_submodule(item)
            except AttributeError as err:
                children = ", ".join(n for n, _ in model.named_children()) or "none"
                raise ValueError(
                    f"{name}: {type(model).__name__} has no submodule {item!r} (its children: "
                    f"{children})"
                ) from err
        elif isinstance(item, nn.Module):
            if id(item) not in own and next(item.parameters(), None) is not None:
                raise ValueError(
                    f"{name}: the {type(item).__name__} given is not a submodule of "
                    f"{type(model).__name__} and has parameters of its own, which would not "
                    "train with the model; pass the model's own submodule (or its name)"
                )
        elif not callable(item):
            raise TypeError(
                f"{name}: expected modules, submodule names or functions, got {type(item).__name__}"
            )
        steps.append(item)
    return tuple(steps)


class SplitClassifier(ClassifierAdapter):
    """A classifier given as feature extractor + head (built by
    [`as_classifier`][camkit.as_classifier]).

    ``forward_features(x)`` runs the ``features`` steps in order, ``forward_head`` the ``head``
    steps; the steps are the model's own submodules (or parameter-free functions), so the
    adapter's parameters are the model's.

    Args:
        model: the classifier.
        features: the steps from the image to the final feature map ``(B, C, *cells)`` (or
            tokens ``(B, N, C)``).
        head: the steps from that map to the ``(B, K)`` logits.
        classifier: the class layer (module or submodule name); default: the head's last
            linear layer (or 1×1 convolution), else the head's last step.
        num_classes: ``K``; default: read from the classifier's output size.
        num_prefix_tokens: tokens ahead of the patch tokens when the features are tokens.
        patch_size: the patch side(s) of a token model, to fold its tokens on non-square
            inputs.

    Raises:
        ValueError: a name is not a submodule, or a module with parameters is not the model's.
        TypeError: a step is neither a module, a name nor a function.
    """

    family = "split"

    def __init__(
        self,
        model: nn.Module,
        features: Part,
        head: Part,
        *,
        classifier: str | nn.Module | None = None,
        num_classes: int | None = None,
        num_prefix_tokens: int = 0,
        patch_size: int | Sequence[int] | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.module = model
        # plain tuples: the steps are (parts of) ``module``, registered there once
        self._features = _steps(model, features, "features")
        self._head = _steps(model, head, "head")
        if isinstance(classifier, str):
            classifier = _steps(model, classifier, "classifier")[0]
        if classifier is None:
            found = [last_linear(s) for s in self._head]
            found = [m for m in found if m is not None]
            classifier = found[-1] if found else self._head[-1]
        self._classifier = (classifier,)
        self.num_prefix_tokens = int(num_prefix_tokens)
        if patch_size is not None:
            sides = (patch_size,) * 2 if isinstance(patch_size, int) else tuple(patch_size)
            self.patch_embed = PatchGrid(sides, (0,) * len(sides))
        self._finish(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._features:
            x = step(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._head:
            x = step(x)
        return x

    def get_classifier(self) -> nn.Module:
        return self._classifier[0]


@torch.no_grad()
def check_split(model: nn.Module, split: ClassifierAdapter, input_size: Sequence[int] | None):
    """Raise unless the split's logits equal ``model(x)`` on a zero input (copies, eval mode)."""

    pair = copy.deepcopy(nn.ModuleList([model, split])).eval()
    original, adapted = pair[0], pair[1]
    if input_size is None:
        input_size = split.pretrained_cfg["input_size"]
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_size)
    if param is not None:
        x = x.to(param)
    try:
        expected = unwrap_logits(original(x))
    except Exception as err:
        raise ValueError(
            f"input_size: {type(model).__name__} does not accept a zero input of shape "
            f"{tuple(x.shape)} ({type(err).__name__}: {err}); pass input_size=(C, H, W) (or "
            "(C, D, H, W)) of an input it accepts, or check=False"
        ) from err
    try:
        got = adapted(x)
    except Exception as err:
        raise ValueError(
            f"features/head: the split of {type(model).__name__} fails on a zero input of shape "
            f"{tuple(x.shape)} ({type(err).__name__}: {err}); features must end at the final "
            "feature map and head must turn it into the logits, with every reshape the "
            "model's forward does (e.g. head=['pool', nn.Flatten(1), 'fc'])"
        ) from err
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise ValueError(
            f"head: the split of {type(model).__name__} gives {shape} where the model gives "
            f"logits of shape {tuple(expected.shape)}; features must end at the final feature "
            "map and head must turn it into the logits"
        )
    diff = float((got.float() - expected.float()).abs().max())
    scale = float(expected.float().abs().max())
    if diff > 1e-4 * max(scale, 1.0):
        raise ValueError(
            f"features/head: the split of {type(model).__name__} does not reproduce its logits "
            f"(max difference {diff:.3g} on a zero input); the model's forward does something "
            "the split leaves out (a functional activation, a pooling, a reshape): add it as a "
            "step, e.g. features=['backbone', torch.relu]"
        )
