"""Class activation maps for any timm classifier, and the map reductions camkit builds on.

A class activation map (CAM, Zhou et al. 2016) of class ``c`` is the class's weight vector
applied at every cell of the final feature map ``F``::

    M_c(h, w) = alpha_c · F[:, h, w]

For a head that average-pools ``F`` and applies a linear layer, ``alpha_c`` is the class row
``w_c`` of that layer and ``mean_{h,w} M_c + b_c`` is exactly the class logit: the CAM is *exact*.
For any other head (a norm or an MLP after pooling, a class token, a convolutional pre-logits block)
camkit uses the *head-gradient* weights ``alpha_c = d logit_c / d pooled``, the gradient of the
class logit with respect to the pooled feature vector, computed through the head only (the
features enter the head as a detached leaf, so no backbone backward is needed). On an exact head
both definitions coincide; elsewhere the map is an approximation and :attr:`CAMExtractor.exact`
is ``False``.

Everything goes through timm's model contract — ``forward_features``, ``forward_head``,
``get_classifier``, ``output_fmt``, ``num_prefix_tokens`` and ``patch_embed`` grids — never
through hooks or hand-named layers.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from camkit._checks import _describe, check_labels, check_tensor

__all__ = [
    "CAMExtractor",
    "CAMOutput",
    "cell_sums",
    "frozen_state",
    "normalize_cams",
    "upsample_cams",
]

CAMNormalization = Literal["raw", "minmax", "distribution"]


class CAMOutput(NamedTuple):
    """What one forward of :class:`CAMExtractor` returns.

    Attributes:
        logits: ``(B, K)`` class logits, identical to ``model(images)``.
        features: ``(B, C, h, w)`` final feature map in NCHW order (prefix tokens of token models
            removed), part of the autograd graph when autograd is on.
        cams: ``(B, h, w)`` raw class activation maps ``alpha_c · F(h, w)`` of the requested (or
            predicted) class: no bias, no ReLU, no normalisation. Differentiable with respect to
            the features; the class weights ``alpha`` are constants.
        target: ``(B,)`` int64, the class each map belongs to.
    """

    logits: torch.Tensor
    features: torch.Tensor
    cams: torch.Tensor
    target: torch.Tensor


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
        >>> import timm
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
            "step = DDP(camkit.TrainStep(model, snapmix=..., cpe=...)), then step(images, labels); "
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


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"{type(model).__name__}" + (f" ({arch})" if arch else "")


def _linear_weights(
    classifier: object, num_features: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W (K, C), b (K,))`` of a linear or 1×1-convolution classifier, else ``None``."""
    if isinstance(classifier, nn.Linear) and classifier.in_features == num_features:
        weight = classifier.weight
    elif (
        isinstance(classifier, nn.Conv2d)
        and classifier.kernel_size == (1, 1)
        and classifier.groups == 1
        and classifier.in_channels == num_features
    ):
        weight = classifier.weight.flatten(1)
    else:
        return None
    bias = classifier.bias if classifier.bias is not None else weight.new_zeros(weight.shape[0])
    return weight, bias


class CAMExtractor(nn.Module):
    """Logits, feature map and class activation maps of a timm classifier from one forward.

    Wraps any timm classifier without changing it: ``forward_features`` gives the feature map,
    ``forward_head`` the logits, and the class weights come from ``get_classifier()`` (exact heads)
    or from the head gradient (all others). Works in training (autograd on, train mode): the model's
    mode is never switched. :meth:`forward` is the model's ordinary forward (BatchNorm statistics
    update as they would under ``model(images)``); :meth:`forward_frozen` is a side pass with
    autograd off that leaves every buffer untouched — the pass SnapMix needs for the CAMs of the
    un-mixed batch.

    Convention:
        - ``images``: ``(B, 3, H, W)`` float, the model's normalised input.
        - ``features``: ``(B, C, h, w)``, NCHW whatever the model's ``output_fmt``; token models
          (ViT, DeiT, Mixer, …) drop their ``num_prefix_tokens`` and fold the patch tokens onto
          their ``patch_embed`` grid (or the square grid when the model has none).
        - ``cams``: ``(B, h, w)``, ``cams[b] = alpha[target[b]] · features[b]``; for exact heads
          ``cams.mean((1, 2)) + bias[target] == logits[range(B), target]``.
        - ``target=None`` means the predicted class ``logits.argmax(1)``.

    Exactness is decided once, at construction, by probing ``forward_head`` of a copy of the
    model in eval mode with random features: the head is exact when its output equals average
    pooling over the patch cells followed by ``get_classifier()``'s affine map.

    Args:
        model: a timm classifier with ``num_classes > 0`` (or another :class:`CAMExtractor`,
            which is unwrapped).

    Attributes:
        model: the wrapped model (not copied: its parameters are the ones being trained).
        exact: ``True`` when the CAM is exact (average pooling + linear head).
        num_classes: number of classes ``K``.

    Raises:
        TypeError: the model lacks ``forward_features``/``forward_head``/``get_classifier``, or
            is a ``DistributedDataParallel``/``DataParallel``/``torch.compile`` wrapper (wrap
            :class:`camkit.TrainStep` or the extractor instead; the message says how).
        ValueError: the model has no classifier (``num_classes=0``), its features are pooled
            already or otherwise not a spatial map, or its head does not pool them into
            ``(B, K)`` logits (a model created with ``global_pool=''``).

    Examples:
        >>> import timm, torch
        >>> from camkit import CAMExtractor
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=2)
        >>> ext = CAMExtractor(model)
        >>> out = ext(torch.randn(2, 3, 64, 64))
        >>> out.logits.shape, out.features.shape, out.cams.shape, ext.exact
        (torch.Size([2, 2]), torch.Size([2, 512, 2, 2]), torch.Size([2, 2, 2]), True)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if isinstance(model, CAMExtractor):
            model = model.model
        refuse_wrappers(model, "model")
        for method in ("forward_features", "forward_head", "get_classifier"):
            if not callable(getattr(model, method, None)):
                raise TypeError(
                    f"model: expected a timm classifier with forward_features, forward_head and "
                    f"get_classifier; {_model_name(model)} has no {method}()"
                )
        num_classes = getattr(model, "num_classes", None)
        classifier = model.get_classifier()
        if not num_classes or isinstance(classifier, nn.Identity):
            raise ValueError(
                f"model: {_model_name(model)} has no classifier (num_classes={num_classes}); "
                "CAMs need class weights: create it with num_classes > 0"
            )
        self.model = model
        self.num_classes = int(num_classes)
        # the model's input convolution, kept in a tuple so that it is not registered as a
        # submodule; set by the probe once a zero image of its channel count went through
        self._input_conv: tuple[nn.Conv2d, ...] = ()
        self.exact = self._probe_exact()

    # -- structure -------------------------------------------------------------------------

    def _output_fmt(self) -> str:
        fmt = getattr(self.model, "output_fmt", "NCHW")
        return str(getattr(fmt, "value", fmt)).upper()

    def _num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 0) or 0)

    def _token_grid(self, num_tokens: int, image_size: tuple[int, int] | None) -> tuple[int, int]:
        patch_embed = getattr(self.model, "patch_embed", None)
        candidates: list[tuple[int, int]] = []
        if patch_embed is not None:
            if image_size is not None and callable(getattr(patch_embed, "dynamic_feat_size", None)):
                try:
                    candidates.append(tuple(patch_embed.dynamic_feat_size(image_size)))
                except Exception:
                    pass
            grid = getattr(patch_embed, "grid_size", None)
            if grid is not None:
                candidates.append((int(grid[0]), int(grid[1])))
        side = round(num_tokens**0.5)
        candidates.append((side, side))
        for h, w in candidates:
            if h * w == num_tokens:
                return int(h), int(w)
        raise ValueError(
            f"model: cannot fold {num_tokens} patch tokens of {_model_name(self.model)} onto a "
            "grid "
            f"(patch_embed grid {candidates[:-1] or 'absent'}, not a square either); "
            "set model.num_prefix_tokens correctly or use a model with a patch grid"
        )

    def _to_grid(self, feats: object, image_size: tuple[int, int] | None) -> torch.Tensor:
        """The feature map in NCHW order, prefix tokens dropped."""
        if not isinstance(feats, torch.Tensor):
            raise ValueError(
                f"model: {_model_name(self.model)}.forward_features returned a "
                f"{type(feats).__name__}, expected one tensor (a spatial feature map)"
            )
        if feats.ndim == 4:
            return feats.permute(0, 3, 1, 2) if self._output_fmt() == "NHWC" else feats
        if feats.ndim == 3:
            prefix = self._num_prefix_tokens()
            tokens = feats[:, prefix:]
            h, w = self._token_grid(tokens.shape[1], image_size)
            return tokens.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], h, w)
        raise ValueError(
            f"model: {_model_name(self.model)}.forward_features returned shape "
            f"{tuple(feats.shape)}; CAMs need a spatial map (B, C, h, w), (B, h, w, C) or tokens "
            "(B, N, C), not features pooled inside the model"
        )

    def _spatial_dims(self, feats: torch.Tensor) -> tuple[int, ...]:
        if feats.ndim == 3:
            return (1,)
        return (1, 2) if self._output_fmt() == "NHWC" else (2, 3)

    def _dummy_input(self, model: nn.Module) -> torch.Tensor:
        """A small zero image the model accepts: its channels, its fixed size if it has one."""
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
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
        return torch.zeros(
            1, channels, int(size[0]), int(size[1]), device=param.device, dtype=param.dtype
        )

    @torch.no_grad()
    def _probe_exact(self) -> bool:
        """Does ``forward_head`` equal average pooling followed by ``get_classifier()``?

        Runs on a copy of the model in eval mode (the user's model is not touched): one forward of
        a zero image gives the feature layout, then random features of that layout go through the
        head and are compared with ``mean over cells`` → classifier.
        """
        probe_model = copy.deepcopy(self.model).eval()
        try:
            feats = probe_model.forward_features(self._dummy_input(probe_model))
        except Exception:  # no usable dummy input: the head-gradient CAM stays valid
            return False
        # the zero image had the first convolution's channel count and the model accepted it:
        # that convolution is the input layer whose channels and dtype the passes check
        first_conv = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        self._input_conv = (first_conv,) if first_conv is not None else ()
        grid = self._to_grid(feats, None)
        self._check_head(probe_model, feats)
        if _linear_weights(probe_model.get_classifier(), grid.shape[1]) is None:
            return False
        gen = torch.Generator().manual_seed(0)
        # random class weights in the copy: a zero-initialised head would match any pooling
        classifier = probe_model.get_classifier()
        for param in (classifier.weight, classifier.bias):
            if param is not None:
                param.copy_(torch.randn(param.shape, generator=gen))
        weight, bias = _linear_weights(classifier, grid.shape[1])
        feats = torch.randn(feats.shape, generator=gen).to(feats)
        logits = probe_model.forward_head(feats)
        expected = self._to_grid(feats, None).mean((2, 3)) @ weight.T + bias
        if not isinstance(logits, torch.Tensor) or logits.shape != expected.shape:
            return False
        scale = float(expected.abs().max())
        return bool(torch.allclose(logits.float(), expected.float(), rtol=1e-4, atol=1e-4 * scale))

    def _check_head(self, probe_model: nn.Module, feats: torch.Tensor) -> None:
        """Raise unless ``forward_head`` turns the features into ``(B, K)`` logits.

        A timm model created with ``global_pool=''`` keeps its classifier but not its pooling:
        the head then fails on the feature map (a linear layer on flattened cells) or returns
        per-cell or per-token scores that are not logits.
        """
        want = (feats.shape[0], self.num_classes)
        cause: Exception | None = None
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
        raise ValueError(
            f"model: {_model_name(self.model)}.forward_head does not pool its features of shape "
            f"{tuple(feats.shape)} into {want} logits (it {got}); CAMExtractor needs a model with "
            "a pooling head: create it with timm's default global_pool ('avg' for CNNs, 'token' "
            "for ViTs), not global_pool=''"
        ) from cause

    # -- class weights -----------------------------------------------------------------------

    def class_weights(self, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The ``(B, C)`` weight vectors ``alpha`` of each sample's target class (constants).

        Exact heads: the class rows of the classifier. Other heads: ``d logit_c / d pooled``,
        the gradient of the class logit through the head only, summed over the feature positions
        (for an average-pooled head this is the gradient with respect to the pooled vector; for a
        class-token head, the gradient at that token). A head's dropout, when active, acts on this
        gradient as it acts on the logits.

        Args:
            feats: raw output of ``model.forward_features``.
            target: ``(B,)`` int64 class of each sample.
        """
        if self.exact:
            channels = (
                feats.shape[1]
                if feats.ndim == 4 and self._output_fmt() != "NHWC"
                else feats.shape[-1]
            )
            weight, _ = _linear_weights(self.model.get_classifier(), channels)
            return weight.detach()[target]
        with torch.enable_grad():
            leaf = feats.detach().requires_grad_(True)
            with frozen_state(self.model):
                logits = self.model.forward_head(leaf)
            chosen = logits.gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(chosen, leaf)
        return grad.sum(self._spatial_dims(feats)).detach()

    # -- passes ------------------------------------------------------------------------------

    def _check_inputs(self, images: torch.Tensor, target: torch.Tensor | None) -> None:
        # metadata only, plus a range check of ``target`` that is queued (no host sync) on CUDA
        check_tensor(images, "images", ndim=4, floating=True)
        if self._input_conv:
            conv = self._input_conv[0]
            if images.shape[1] != conv.in_channels:
                raise ValueError(
                    f"images: expected {conv.in_channels} channels (the input layer of "
                    f"{_model_name(self.model)}), got a {_describe(images)}"
                )
            weight_dtype = conv.weight.dtype
            if images.dtype != weight_dtype and not torch.is_autocast_enabled(images.device.type):
                raise TypeError(
                    f"images: expected dtype {weight_dtype} (the model's weights; cast the images "
                    f"or run under torch.autocast), got a {_describe(images)}"
                )
        if target is not None:
            check_labels(target, "target", self.num_classes, batch=images.shape[0])

    def _cams_from(
        self,
        feats: torch.Tensor,
        logits: torch.Tensor,
        images: torch.Tensor,
        target: torch.Tensor | None,
    ) -> CAMOutput:
        grid = self._to_grid(feats, (images.shape[-2], images.shape[-1]))
        cls = logits.detach().argmax(1) if target is None else target.to(logits.device).long()
        alpha = self.class_weights(feats, cls)
        cams = torch.einsum("bc,bchw->bhw", alpha.to(grid.dtype), grid)
        return CAMOutput(logits=logits, features=grid, cams=cams, target=cls)

    def forward(self, images: torch.Tensor, target: torch.Tensor | None = None) -> CAMOutput:
        """One forward of the model returning logits, features and CAMs.

        Args:
            images: ``(B, 3, H, W)`` float input batch.
            target: ``(B,)`` int64 class whose CAM to compute; ``None`` for the predicted class.

        Returns:
            :class:`CAMOutput` with ``logits`` identical to ``model(images)``.

        Raises:
            TypeError: ``images`` is not floating point, or (outside ``torch.autocast``) its
                dtype differs from the model's weights; ``target`` is not an integer tensor.
            ValueError: ``images`` is not 4-D or has a channel count other than the model's
                input layer's; ``target`` is not ``(B,)`` or has a class outside ``[0, K)`` (on
                an accelerator the range check is queued with ``torch._assert_async`` and
                fails at the next synchronisation instead).
        """
        self._check_inputs(images, target)
        feats = self.model.forward_features(images)
        logits = self.model.forward_head(feats)
        return self._cams_from(feats, logits, images, target)

    @torch.no_grad()
    def forward_frozen(self, images: torch.Tensor, target: torch.Tensor | None = None) -> CAMOutput:
        """A side pass with autograd off that leaves the model exactly as it was.

        Runs in the model's current mode (train mode keeps batch statistics, as the training
        forward does) inside :func:`frozen_state`, so BatchNorm running statistics and every other
        buffer are unchanged and ``model.training`` is never touched. SnapMix uses it for the CAMs
        of the un-mixed batch; the TTA for its prediction pass.

        Args:
            images: ``(B, 3, H, W)`` float input batch.
            target: ``(B,)`` int64 class whose CAM to compute; ``None`` for the predicted class.

        Returns:
            :class:`CAMOutput`; nothing in it requires grad.

        Raises:
            TypeError: as :meth:`forward`.
            ValueError: as :meth:`forward`.
        """
        self._check_inputs(images, target)
        with frozen_state(self.model):
            feats = self.model.forward_features(images)
            logits = self.model.forward_head(feats)
        return self._cams_from(feats, logits, images, target)


def normalize_cams(cams: torch.Tensor, mode: CAMNormalization = "distribution") -> torch.Tensor:
    """Normalise each map of a batch independently.

    Convention:
        - ``"raw"``: unchanged.
        - ``"minmax"``: ``(M - min) / (max - min)`` in [0, 1]; a constant map gives zeros.
        - ``"distribution"``: ``(M - min) / sum(M - min)``, a spatial distribution summing to 1
          (the SnapMix normalisation, no ReLU); a constant map gives the uniform distribution,
          so box shares fall back to area ratios.

    Args:
        cams: ``(B, h, w)`` float maps.
        mode: one of ``"raw"``, ``"minmax"``, ``"distribution"``.

    Returns:
        ``(B, h, w)`` maps in ``cams.dtype``; never NaN for finite input.

    Examples:
        >>> normalize_cams(torch.tensor([[[1.0, 3.0]]])).tolist()
        [[[0.0, 1.0]]]
    """
    check_tensor(cams, "cams", ndim=3, floating=True)
    if mode == "raw":
        return cams
    if mode not in ("minmax", "distribution"):
        raise ValueError(f"mode: expected 'raw', 'minmax' or 'distribution', got {mode!r}")
    flat = cams.flatten(1)
    shifted = flat - flat.amin(1, keepdim=True)
    denom = shifted.amax(1, keepdim=True) if mode == "minmax" else shifted.sum(1, keepdim=True)
    if mode == "minmax":
        out = torch.where(denom > 0, shifted / denom.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    else:
        uniform = torch.full_like(shifted, 1.0 / shifted.shape[1])
        out = torch.where(
            denom > 0, shifted / denom.clamp_min(torch.finfo(flat.dtype).tiny), uniform
        )
    return out.view_as(cams)


def upsample_cams(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(B, h, w)`` maps to ``size = (H, W)`` bilinearly (``align_corners=False``).

    Examples:
        >>> upsample_cams(torch.zeros(2, 7, 7), (224, 224)).shape
        torch.Size([2, 224, 224])
    """
    check_tensor(cams, "cams", ndim=3, floating=True)
    if tuple(cams.shape[-2:]) == tuple(size):
        return cams
    return F.interpolate(cams[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def cell_sums(maps: torch.Tensor, cell_size: int) -> torch.Tensor:
    """Sum ``(B, H, W)`` maps over non-overlapping ``cell_size × cell_size`` pixel cells.

    Convention:
        Cell ``(i, j)`` covers rows ``i*s … i*s+s-1`` and columns ``j*s … j*s+s-1`` (``s`` =
        ``cell_size``); when ``H`` or ``W`` is not a multiple of ``s`` the last row/column of cells
        is partial. The grid is ``(ceil(H/s), ceil(W/s))``; pixel ``(y, x)`` lies in cell
        ``(y // s, x // s)``.

    Args:
        maps: ``(B, H, W)`` float maps.
        cell_size: side of a cell in pixels, ≥ 1.

    Returns:
        ``(B, ceil(H/s), ceil(W/s))`` sums.

    Examples:
        >>> cell_sums(torch.ones(1, 4, 4), 2).tolist()
        [[[4.0, 4.0], [4.0, 4.0]]]
    """
    check_tensor(maps, "maps", ndim=3, floating=True)
    if isinstance(cell_size, bool) or not isinstance(cell_size, int) or cell_size < 1:
        raise ValueError(f"cell_size: expected an int >= 1, got {cell_size!r}")
    if cell_size == 1:
        return maps
    return F.avg_pool2d(
        maps[:, None], cell_size, stride=cell_size, ceil_mode=True, divisor_override=1
    )[:, 0]
