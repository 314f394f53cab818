"""timm's model contract as camkit reads it, and the model-state guards of every CAM pass.

Everything goes through timm's contract — ``forward_features``, ``forward_head``,
``get_classifier``, ``output_fmt``, ``num_prefix_tokens`` and ``patch_embed`` grids — never
through hooks or hand-named layers. Private module: the public names are re-exported by
`camkit.cam` (here only [`frozen_state`][camkit.frozen_state]).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "check_device",
    "check_head",
    "frozen_state",
    "input_layer",
    "linear_weights",
    "model_name",
    "num_prefix_tokens",
    "probe_exact",
    "refuse_wrappers",
    "spatial_dims",
    "to_grid",
]


@contextlib.contextmanager
def frozen_state(model: nn.Module) -> Iterator[None]:
    """Within the block, forwards of ``model`` leave every buffer as it was.

    In training mode BatchNorm layers update their running statistics on each forward. Inside this
    block they are told not to track them (``track_running_stats=False``, which in training mode
    normalises with the batch statistics exactly as before, so the output is bit-identical), and
    any other buffer (an InstanceNorm's statistics, an EvoNorm's running variance, ...) is
    snapshotted and copied back on exit. The mode (``model.training``) is never switched; in eval
    mode nothing is done. The switch is undone on exit, also when the block raises.

    Examples:
        >>> import timm, torch
        >>> from camkit import frozen_state
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=2).train()
        >>> before = model.bn1.running_mean.clone()
        >>> with frozen_state(model), torch.no_grad():
        ...     _ = model(torch.randn(2, 3, 32, 32))
        >>> torch.equal(model.bn1.running_mean, before), model.bn1.track_running_stats
        (True, True)
    """
    if not model.training:
        yield
        return
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    tracked = {id(t) for m in norms for t in (m.running_mean, m.running_var, m.num_batches_tracked)}
    others = [b for b in model.buffers() if id(b) not in tracked]
    saved = [b.clone() for b in others]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True
        if others:
            # through ``.data`` so the restore does not bump the version counter of a buffer an
            # autograd graph of the block (the head-gradient pass) may have saved
            torch._foreach_copy_([b.data for b in others], saved)


def refuse_wrappers(model: object, where: str) -> None:
    """Raise when ``model`` is a wrapper whose methods camkit would bypass.

    camkit calls ``forward_features``/``forward_head`` on the model itself. Through a
    ``DistributedDataParallel`` wrapper that call would skip DDP's gradient all-reduce (the ranks
    drift apart silently); through ``torch.compile``'s ``OptimizedModule`` it would run the
    uncompiled model. Both are refused with the recipe that works.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        raise TypeError(
            f"{where}: got a DistributedDataParallel model; camkit would call the wrapped model's "
            "forward_features/forward_head directly, bypassing DDP's gradient all-reduce, and the "
            "ranks would silently drift apart. Wrap the training step instead: "
            "step = DDP(camkit.TrainStep(model, mix=..., cpe=...)), then step(images, labels); "
            "for CAMs alone (no training) pass ddp_model.module"
        )
    fsdp = type(model).__name__ in ("FullyShardedDataParallel", "FSDPModule") or any(
        type(base).__name__ == "FSDPModule" for base in type(model).__mro__
    )
    if fsdp:
        raise TypeError(
            f"{where}: got an FSDP-sharded model; camkit would call forward_features/"
            "forward_head without FSDP's unsharding. Wrap the step, not the model: "
            "DDP(camkit.TrainStep(model, ...)) is the tested recipe (sharding the step with "
            "FSDP is untested)"
        )
    if isinstance(model, DataParallel):
        raise TypeError(
            f"{where}: got a DataParallel model; camkit would run only the wrapped module on one "
            "device. Wrap the step instead (DataParallel(camkit.TrainStep(model, ...))) or, "
            "better, use DistributedDataParallel as torch recommends"
        )
    if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
        raise TypeError(
            f"{where}: got a torch.compile'd model (OptimizedModule); camkit calls "
            "forward_features/forward_head of the original module, which would run uncompiled. "
            "Pass the uncompiled model and compile the camkit module around it instead: "
            "torch.compile(camkit.TrainStep(model, ...)) for training, "
            "torch.compile(CAMExtractor(model)) for CAMs"
        )


def check_device(model: nn.Module, x: torch.Tensor, name: str) -> None:
    """Refuse a tensor on another device than the model's parameters, naming both."""
    param = next(model.parameters(), None)
    if param is not None and x.device != param.device:
        raise ValueError(
            f"{name}: on {x.device}, but the parameters of {model_name(model)} are on "
            f"{param.device}; move the batch (or the model) to one device"
        )


def model_name(model: nn.Module) -> str:
    """The model's class name, with its timm architecture when it has one (for messages)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"{type(model).__name__}" + (f" ({arch})" if arch else "")


def linear_weights(
    classifier: object, num_features: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W (K, C), b (K,))`` of a linear or 1×1(×1)-convolution classifier, else ``None``."""
    if isinstance(classifier, nn.Linear) and classifier.in_features == num_features:
        weight = classifier.weight
    elif (
        isinstance(classifier, (nn.Conv2d, nn.Conv3d))
        and set(classifier.kernel_size) == {1}
        and classifier.groups == 1
        and classifier.in_channels == num_features
    ):
        weight = classifier.weight.flatten(1)
    else:
        return None
    bias = classifier.bias if classifier.bias is not None else weight.new_zeros(weight.shape[0])
    return weight, bias


def _output_fmt(model: nn.Module) -> str:
    fmt = getattr(model, "output_fmt", "NCHW")
    return str(getattr(fmt, "value", fmt)).upper()


def num_prefix_tokens(model: nn.Module) -> int:
    """Class/distillation/register tokens ahead of the patch tokens (0 for CNNs)."""
    return int(getattr(model, "num_prefix_tokens", 0) or 0)


def _token_grid(
    model: nn.Module, num_tokens: int, image_size: tuple[int, ...] | None
) -> tuple[int, ...]:
    patch_embed = getattr(model, "patch_embed", None)
    candidates: list[tuple[int, ...]] = []
    if patch_embed is not None:
        if image_size is not None and callable(getattr(patch_embed, "dynamic_feat_size", None)):
            try:
                candidates.append(tuple(int(g) for g in patch_embed.dynamic_feat_size(image_size)))
            except Exception:
                pass
        grid = getattr(patch_embed, "grid_size", None)
        if grid is not None:
            candidates.append(tuple(int(g) for g in grid))
    rank = len(image_size) if image_size is not None else 2
    side = round(num_tokens ** (1.0 / rank))
    candidates.append((side,) * rank)
    for grid in candidates:
        if math.prod(grid) == num_tokens and (image_size is None or len(grid) == rank):
            return grid
    shape = "square" if rank == 2 else "cube"
    raise ValueError(
        f"model: cannot fold {num_tokens} patch tokens of {model_name(model)} onto a grid "
        f"(patch_embed grid {candidates[:-1] or 'absent'}, not a {shape} either); "
        "set model.num_prefix_tokens correctly or use a model with a patch grid"
    )


def to_grid(model: nn.Module, feats: object, image_size: tuple[int, ...] | None) -> torch.Tensor:
    """``model.forward_features``' output (or a tensor of its layout) channels-first
    (``(B, C, h, w)``, ``(B, C, d, h, w)`` for volumes), prefix tokens dropped.

    ``image_size``: the spatial size of the input (2 or 3 sides), which fixes the token grid.
    """
    if not isinstance(feats, torch.Tensor):
        raise ValueError(
            f"model: {model_name(model)}.forward_features returned a "
            f"{type(feats).__name__}, expected one tensor (a spatial feature map)"
        )
    if feats.ndim == 4:
        return feats.permute(0, 3, 1, 2) if _output_fmt(model) == "NHWC" else feats
    if feats.ndim == 5:
        return feats.permute(0, 4, 1, 2, 3) if _output_fmt(model) == "NDHWC" else feats
    if feats.ndim == 3:
        tokens = feats[:, num_prefix_tokens(model) :]
        grid = _token_grid(model, tokens.shape[1], image_size)
        return tokens.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], *grid)
    raise ValueError(
        f"model: {model_name(model)}.forward_features returned shape "
        f"{tuple(feats.shape)}; CAMs need a spatial map (B, C, h, w), (B, h, w, C), "
        "(B, C, d, h, w) or tokens (B, N, C), not features pooled inside the model"
    )


def spatial_dims(model: nn.Module, feats: torch.Tensor) -> tuple[int, ...]:
    """The dimensions of ``forward_features``' output that index positions (cells, tokens)."""
    if feats.ndim == 3:
        return (1,)
    if _output_fmt(model) in ("NHWC", "NDHWC"):
        return tuple(range(1, feats.ndim - 1))
    return tuple(range(2, feats.ndim))


def input_layer(model: nn.Module) -> nn.Conv2d | nn.Conv3d | None:
    """The model's first 2-D or 3-D convolution (its input layer for CNNs and patch models)."""
    return next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)


def _dummy_input(model: nn.Module) -> torch.Tensor:
    """A small zero image the model accepts: its channels, its fixed size if it has one."""
    first_conv = input_layer(model)
    channels = first_conv.in_channels if first_conv is not None else 3
    # a fixed-size patch embedding (timm's PatchEmbed, wherever the model keeps it) wins
    size = next(
        (
            m.img_size
            for m in model.modules()
            if hasattr(m, "patch_size") and getattr(m, "img_size", None)
        ),
        None,
    )
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = tuple(cfg.get("input_size", (channels, 224, 224)))[1:]
    param = next(model.parameters())
    return torch.zeros(1, channels, *(int(s) for s in size), device=param.device, dtype=param.dtype)


@torch.no_grad()
def probe_exact(model: nn.Module, num_classes: int) -> tuple[bool, nn.Conv2d | None]:
    """Does ``forward_head`` equal average pooling followed by ``get_classifier()``?

    Runs on a copy of the model in eval mode (the user's model is not touched): one forward of
    a zero image gives the feature layout, then random features of that layout go through the
    head and are compared with ``mean over cells`` → classifier.

    Returns:
        ``(exact, input_conv)``: ``input_conv`` is the model's first convolution once a zero image
        of its channel count went through (the input layer whose channels and dtype the passes
        check), else ``None``.
    """
    probe_model = copy.deepcopy(model).eval()
    try:
        feats = probe_model.forward_features(_dummy_input(probe_model))
    except Exception:  # no usable dummy input: the head-gradient CAM stays valid
        return False, None
    input_conv = input_layer(model)
    grid = to_grid(model, feats, None)
    check_head(model, probe_model, feats, num_classes)
    if linear_weights(probe_model.get_classifier(), grid.shape[1]) is None:
        return False, input_conv
    gen = torch.Generator().manual_seed(0)
    # random class weights in the copy: a zero-initialised head would match any pooling
    classifier = probe_model.get_classifier()
    for param in (classifier.weight, classifier.bias):
        if param is not None:
            param.copy_(torch.randn(param.shape, generator=gen))
    weight, bias = linear_weights(classifier, grid.shape[1])
    feats = torch.randn(feats.shape, generator=gen).to(feats)
    logits = probe_model.forward_head(feats)
    grid = to_grid(model, feats, None)
    expected = grid.mean(tuple(range(2, grid.ndim))) @ weight.T + bias
    if not isinstance(logits, torch.Tensor) or logits.shape != expected.shape:
        return False, input_conv
    scale = float(expected.abs().max())
    exact = torch.allclose(logits.float(), expected.float(), rtol=1e-4, atol=1e-4 * scale)
    return bool(exact), input_conv


def check_head(
    model: nn.Module, probe_model: nn.Module, feats: torch.Tensor, num_classes: int
) -> None:
    """Raise unless ``forward_head`` turns the features into ``(B, K)`` logits.

    A timm model created with ``global_pool=''`` keeps its classifier but not its pooling:
    the head then fails on the feature map (a linear layer on flattened cells) or returns
    per-cell or per-token scores that are not logits.
    """
    want = (feats.shape[0], num_classes)
    cause: Exception | None = None
    logits = None
    try:
        logits = probe_model.forward_head(feats)
    except Exception as err:
        cause = err
        got = f"raised {type(err).__name__}: {err}"
    else:
        if isinstance(logits, torch.Tensor) and tuple(logits.shape) == want:
            return
        got = (
            f"returned shape {tuple(logits.shape)}"
            if isinstance(logits, torch.Tensor)
            else f"returned a {type(logits).__name__}"
        )
    if isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.shape[0] == want[0]:
        raise ValueError(
            f"model: {model_name(model)}.forward_head returns {logits.shape[1]} logits but "
            f"model.num_classes is {num_classes}: was the classifier replaced after the model "
            f"was created? Set model.num_classes = {logits.shape[1]} (or create the model with "
            f"num_classes={logits.shape[1]} before replacing the classifier)"
        )
    raise ValueError(
        f"model: {model_name(model)}.forward_head does not pool its features of shape "
        f"{tuple(feats.shape)} into {want} logits (it {got}); CAMExtractor needs a model with "
        "a pooling head: create it with timm's default global_pool ('avg' for CNNs, 'token' "
        "for ViTs), not global_pool=''"
    ) from cause
