"""[`CAMExtractor`][camkit.CAMExtractor] and [`CAMOutput`][camkit.CAMOutput].

Private module: the public names are re-exported by `camkit.cam` and `camkit`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from camkit._checks import (
    check_choice,
    check_finite,
    check_input_layer,
    check_input_rank,
    check_labels,
    check_tensor,
    input_ndim,
)
from camkit.cam._contract import (
    check_device,
    frozen_state,
    input_layer,
    linear_weights,
    model_name,
    num_prefix_tokens,
    probe_exact,
    refuse_wrappers,
    spatial_dims,
    to_grid,
)
from camkit.cam._methods import CAM_METHODS, CAMMethod, HeadGradient, compute_cams
from camkit.models import as_classifier

__all__ = ["CAMExtractor", "CAMOutput"]


class CAMOutput(NamedTuple):
    """What one forward of [`CAMExtractor`][camkit.CAMExtractor] returns.

    Attributes:
        logits: ``(B, K)`` class logits, identical to ``model(images)``.
        features: ``(B, C, h, w)`` final feature map in NCHW order (``(B, C, d, h, w)`` for
            volumes; prefix tokens of token models removed), part of the autograd graph when
            autograd is on.
        cams: ``(B, h, w)`` (volumes: ``(B, d, h, w)``) maps of the extractor's method for the
            requested (or predicted) class (``(B, T, h, w)`` for a ``(B, T)`` target: ``T``
            classes per image from the same forward), at the feature resolution, without
            upsampling or normalisation. For method ``"cam"`` the raw ``alpha_c · F(h, w)``: no
            bias, no ReLU; the gradient methods end with a ReLU. Differentiable with respect to
            the features; the method's weights are constants.
        target: ``(B,)`` (or ``(B, T)``) int64, the class each map belongs to.
    """

    logits: torch.Tensor
    features: torch.Tensor
    cams: torch.Tensor
    target: torch.Tensor


class CAMExtractor(nn.Module):
    """Logits, feature map and class activation maps of a classifier from one forward.

    Wraps any timm classifier without changing it (torchvision, MONAI and Hugging Face
    classifiers through their adapters, any other by its split: see
    [`as_classifier`][camkit.as_classifier]): ``forward_features`` gives the feature map
    ``F``, ``forward_head`` the logits, and the maps come from the last feature layer with no
    backward through the backbone. Works in training (autograd on, train mode): the model's mode is
    never switched. [`forward`][camkit.CAMExtractor.forward] is the model's ordinary forward
    (BatchNorm statistics update as they would under ``model(images)``);
    [`forward_frozen`][camkit.CAMExtractor.forward_frozen] is a side pass with autograd off that
    leaves every buffer untouched — the pass SnapMix needs for the CAMs of the un-mixed batch.

    The methods (``method``, one of [`CAM_METHODS`][camkit.CAM_METHODS]) all use ``G``, the
    gradient of the class logit with respect to each cell of ``F`` taken through the head only
    (the features enter ``forward_head`` as a detached leaf; for an average-pooling + linear head
    ``G = w_c / (h·w)``, written down without autograd; gradient reaching prefix tokens is spread
    evenly over the cells), and ``alpha``, the class row ``w_c`` of an exact head or
    ``sum_{h,w} G`` (the gradient at the pooled vector) for any other head:

    | method | map | ReLU |
    | --- | --- | --- |
    | ``"cam"`` (default) | ``sum_c alpha_c F_c`` | no: raw, signed |
    | ``"gradcam"`` | ``ReLU(sum_c mean_{h,w}(G_c) F_c)`` | yes |
    | ``"gradcampp"`` | ``ReLU(sum_c v_c F_c)``, ``v_c = sum_{h,w} ReLU(G_c) a_c`` | yes |
    | ``"layercam"`` | ``ReLU(sum_c ReLU(G_c(h, w)) F_c(h, w))`` | yes |

    with the Grad-CAM++ coefficients ``a_c(h, w) = G² / (2 G² + S_c G³)``, ``S_c = sum_{h,w} F_c``
    (the exponential-logit approximation of its paper's Eq. 19; 0 where ``G = 0``).

    ``"cam"`` stays raw because SnapMix's ``"distribution"`` normalisation, the CPE cell ranking
    and the TTA's masking order use the signed map of the paper (Zhou et al.'s CAM, the one the
    paper and the released SnapMix code use). The three gradient methods keep the ReLU of their
    papers (and of pytorch-grad-cam), so cells of negative evidence all read 0. On an exact head
    ``G`` is the same at every cell, so ``"gradcam"`` is ``ReLU("cam") / (h·w)``.

    Convention:
        - ``images``: ``(B, 3, H, W)`` float, the model's normalised input; ``(B, C, D, H, W)``
          volumes for a model whose input layer is a 3-D convolution (one code path: the
          cells are whatever spatial dimensions the feature map has).
        - ``features``: ``(B, C, h, w)``, NCHW whatever the model's ``output_fmt``; token models
          (ViT, DeiT, Mixer, …) drop their ``num_prefix_tokens`` and fold the patch tokens onto
          their ``patch_embed`` grid (or the square grid when the model has none).
        - ``cams``: ``(B, h, w)``, the method's map of ``target[b]``; for ``"cam"`` on an exact
          head ``cams.mean((1, 2)) + bias[target] == logits[range(B), target]``.
        - ``target=None`` means the predicted class ``logits.argmax(1)``.

    Exactness of the head is decided once, at construction, by probing ``forward_head`` of a copy
    of the model in eval mode with random features: the head is exact when its output equals
    average pooling over the patch cells followed by ``get_classifier()``'s affine map.

    Args:
        model: a timm classifier with ``num_classes > 0``, a model camkit adapts (torchvision,
            MONAI, Hugging Face; see [`as_classifier`][camkit.as_classifier]), a split (or another
            [`CAMExtractor`][camkit.CAMExtractor], which is unwrapped; its method is not
            inherited: pass ``method``).
        method: the CAM method, one of [`CAM_METHODS`][camkit.CAM_METHODS].

    Attributes:
        model: the wrapped model, or its adapter (not copied: its parameters are the ones being
            trained).
        method: the CAM method.
        exact: ``True`` only for method ``"cam"`` on an exact head (average pooling + linear),
            where the map's mean plus the bias is the logit; ``False`` for every other method and
            head.
        num_classes: number of classes ``K``.

    Raises:
        TypeError: the model is neither a timm classifier nor one camkit adapts, and is not
            given by its split (the message shows the split to write), or
            is a ``DistributedDataParallel``/``DataParallel``/``torch.compile`` wrapper (wrap
            [`TrainStep`][camkit.TrainStep] or the extractor instead; the message says how).
        ValueError: ``method`` is not one of [`CAM_METHODS`][camkit.CAM_METHODS] (the message
            lists them); the model has no classifier (``num_classes=0``) or no ``num_classes``
            attribute, its head's logits are not ``num_classes`` wide (a classifier replaced after
            creation), its features are pooled
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
        >>> CAMExtractor(model, method="layercam").exact
        False
    """

    def __init__(self, model: nn.Module, method: CAMMethod = "cam") -> None:
        super().__init__()
        check_choice(method, "method", CAM_METHODS)
        if isinstance(model, CAMExtractor):
            model = model.model
        refuse_wrappers(model, "model")
        model = as_classifier(model)
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            raise ValueError(
                f"model: {model_name(model)} has no num_classes attribute, which camkit reads "
                "as the number of logits K (timm's contract); set model.num_classes = K"
            )
        classifier = model.get_classifier()
        if not num_classes or isinstance(classifier, nn.Identity):
            raise ValueError(
                f"model: {model_name(model)} has no classifier (num_classes={num_classes}); "
                "CAMs need class weights: create it with num_classes > 0"
            )
        self.model = model
        self.num_classes = int(num_classes)
        self._method: CAMMethod = method
        exact_head, input_conv = probe_exact(model, self.num_classes)
        self._exact_head = exact_head
        # the model's input convolution, kept in a tuple so that it is not registered as a
        # submodule; set once a zero image of its channel count went through the probe
        self._input_conv: tuple[nn.Module, ...] = (input_conv,) if input_conv is not None else ()
        # the spatial rank of the input (2: images, 3: volumes) from the input layer
        layer = input_conv if input_conv is not None else input_layer(model)
        self._input_ndim: tuple[int, ...] = input_ndim(layer)

    @property
    def method(self) -> CAMMethod:
        """The CAM method, one of [`CAM_METHODS`][camkit.CAM_METHODS] (fixed at construction)."""
        return self._method

    @property
    def exact(self) -> bool:
        """``True`` only for method ``"cam"`` on an average-pooling + linear head."""
        return self._exact_head and self._method == "cam"

    def extra_repr(self) -> str:
        return f"method={self._method!r}, exact={self.exact}"

    # -- head gradient -----------------------------------------------------------------------

    def _class_rows(self, channels: int, target: torch.Tensor) -> torch.Tensor:
        weight, _ = linear_weights(self.model.get_classifier(), channels)
        return weight.detach()[target]

    def _raw_gradient(self, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``d logit_target / d feats`` through the head only, in ``feats``' own layout."""
        with torch.enable_grad():
            leaf = feats.detach().requires_grad_(True)
            with frozen_state(self.model):
                logits = self.model.forward_head(leaf)
            chosen = logits.gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(chosen, leaf)
        return grad.detach()

    def class_weights(self, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The ``(B, C)`` weight vectors ``alpha`` of each sample's target class (constants).

        The weights of method ``"cam"``. Exact heads: the class rows of the classifier. Other
        heads: ``d logit_c / d pooled``, the gradient of the class logit through the head only,
        summed over the feature positions (for an average-pooled head this is the gradient with
        respect to the pooled vector; for a class-token head, the gradient at that token). A
        head's dropout, when active, acts on this gradient as it acts on the logits.

        Args:
            feats: raw output of ``model.forward_features``.
            target: ``(B,)`` int64 class of each sample.
        """
        dims = spatial_dims(self.model, feats)
        if self._exact_head:
            channels = next(d for d in range(1, feats.ndim) if d not in dims)
            return self._class_rows(feats.shape[channels], target)
        return self._raw_gradient(feats, target).sum(dims)

    def _head_gradient(
        self, feats: torch.Tensor, grid: torch.Tensor, target: torch.Tensor
    ) -> HeadGradient:
        """Per-cell gradient ``G`` (on ``grid``'s cells) and class weights ``alpha``."""
        _, c, *cells_shape = grid.shape
        count = math.prod(cells_shape)
        if self._exact_head:
            rows = self._class_rows(c, target)
            spread = (rows / count)[(...,) + (None,) * len(cells_shape)]
            return HeadGradient(cells=spread.expand(grid.shape), alpha=rows)
        grad = self._raw_gradient(feats, target)
        alpha = grad.sum(spatial_dims(self.model, feats))
        if grad.ndim == 3:
            prefix = num_prefix_tokens(self.model)
            cells = grad[:, prefix:].transpose(1, 2).reshape(grid.shape)
            if prefix:  # prefix tokens have no cell: their share is spread evenly
                share = grad[:, :prefix].sum(1) / count
                cells = cells + share[(...,) + (None,) * len(cells_shape)]
        else:
            cells = to_grid(self.model, grad, None)
        return HeadGradient(cells=cells, alpha=alpha)

    # -- passes ------------------------------------------------------------------------------

    def check_inputs(self, images: object, target: object = None) -> None:
        """Check a batch the way every pass does, once (what ``validate_args=False`` skips).

        ``images``: ``(B, C, H, W)`` (``(B, C, D, H, W)`` for a model whose input layer is a 3-D
        convolution) float with the model's input channels and, outside
        ``torch.autocast``, its weights' dtype; ``target``: ``None`` or ``(B,)``/``(B, T)`` integer
        classes in ``[0, K)`` (on an accelerator the range check is queued with
        ``torch._assert_async``: no host sync).

        Raises:
            TypeError: a wrong type or dtype.
            ValueError: a wrong shape, channel count or class.
        """
        check_input_rank(images, "images", self._input_ndim, model_name(self.model))
        assert isinstance(images, torch.Tensor)
        check_device(self.model, images, "images")
        layer = self._input_conv[0] if self._input_conv else None  # the check every step uses
        check_input_layer(images, "images", layer, model_name(self.model))
        if target is not None:
            b = images.shape[0]
            if isinstance(target, torch.Tensor) and target.ndim == 2:
                check_tensor(target, "target", shape=(b, None), floating=False)
                check_labels(target.flatten(), "target", self.num_classes)
            else:
                check_labels(target, "target", self.num_classes, batch=b)

    def _cams_from(
        self,
        feats: torch.Tensor,
        logits: torch.Tensor,
        images: torch.Tensor,
        target: torch.Tensor | None,
    ) -> CAMOutput:
        grid = to_grid(self.model, feats, tuple(images.shape[2:]))
        cls = logits.detach().argmax(1) if target is None else target.to(logits.device).long()
        if cls.ndim == 2:  # T classes per image from the same features
            cams = torch.stack(
                [
                    compute_cams(self._method, grid, self._head_gradient(feats, grid, column))
                    for column in cls.unbind(1)
                ],
                1,
            )
        else:
            cams = compute_cams(self._method, grid, self._head_gradient(feats, grid, cls))
        return CAMOutput(logits=logits, features=grid, cams=cams, target=cls)

    def forward(
        self,
        images: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        validate_args: bool = True,
    ) -> CAMOutput:
        """One forward of the model returning logits, features and the method's CAMs.

        Args:
            images: ``(B, C, H, W)`` float input batch (``(B, C, D, H, W)`` volumes for a 3-D
                model).
            target: ``(B,)`` int64 class whose CAM to compute, or ``(B, T)`` for ``T`` maps per
                image (one forward); ``None`` for the predicted class.
            validate_args: check the inputs ([`check_inputs`][camkit.CAMExtractor.check_inputs]);
                a caller that checked them already passes False.

        Returns:
            [`CAMOutput`][camkit.CAMOutput] with ``logits`` identical to ``model(images)``.

        Raises:
            TypeError: ``images`` is not floating point, or (outside ``torch.autocast``) its
                dtype differs from the model's weights; ``target`` is not an integer tensor.
            ValueError: ``images`` has another rank than the model's input layer takes (4-D
                images, 5-D volumes) or another channel count; ``target`` is not ``(B,)`` or
                has a class outside ``[0, K)`` (on an accelerator the range check is queued with
                ``torch._assert_async`` and fails at the next synchronisation instead).
        """
        if validate_args:
            self.check_inputs(images, target)
            check_finite(images, "images")  # NaN in, NaN maps out: refused (no sync on CUDA)
        feats = self.model.forward_features(images)
        logits = self.model.forward_head(feats)
        return self._cams_from(feats, logits, images, target)

    @torch.no_grad()
    def forward_frozen(
        self,
        images: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        validate_args: bool = True,
    ) -> CAMOutput:
        """A side pass with autograd off that leaves the model exactly as it was.

        Runs in the model's current mode (train mode keeps batch statistics, as the training
        forward does) inside [`frozen_state`][camkit.frozen_state], so BatchNorm running
        statistics and every other buffer are unchanged and ``model.training`` is never touched.
        SnapMix uses it for the CAMs of the un-mixed batch; the TTA for its prediction pass.

        Args:
            images: ``(B, C, H, W)`` float input batch (``(B, C, D, H, W)`` volumes).
            target: ``(B,)`` (or ``(B, T)``) int64 classes whose CAMs to compute; ``None`` for
                the predicted class.
            validate_args: check the inputs (as for `forward`).

        Returns:
            [`CAMOutput`][camkit.CAMOutput]; nothing in it requires grad.

        Raises:
            TypeError: as [`forward`][camkit.CAMExtractor.forward].
            ValueError: as [`forward`][camkit.CAMExtractor.forward].
        """
        if validate_args:
            self.check_inputs(images, target)
            check_finite(images, "images")  # NaN in, NaN maps out: refused (no sync on CUDA)
        with frozen_state(self.model):
            feats = self.model.forward_features(images)
            logits = self.model.forward_head(feats)
        return self._cams_from(feats, logits, images, target)
