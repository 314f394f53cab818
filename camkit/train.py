"""The camkit training step: frozen CAM pass, SnapMix, one training forward, soft-target CE, CPE.

[`TrainStep`][camkit.TrainStep] is the whole step as one ``nn.Module``, so the three places people
train wrap it the way they wrap a model:

- a plain loop: ``out = step(images, labels); out.loss.backward(); opt.step()``;
- DDP: ``DDP(TrainStep(model, ...))`` — the step's forward runs inside DDP's, so every gradient
  of the training forward is all-reduced and BatchNorm buffers are broadcast as for a plain model
  (the frozen CAM pass never touches them);
- ``torch.compile(TrainStep(model, ...))``.

camkit refuses a model that is already wrapped (DDP, DataParallel, ``torch.compile``): it would
call the wrapped model's methods directly and bypass the wrapper. Wrap the step instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from camkit._checks import check_labels, check_positive, check_probability, check_tensor
from camkit.cam._extractor import CAMExtractor, refuse_wrappers
from camkit.losses import ContrastivePatchLoss
from camkit.mix import SnapMix, SnapMixParams
from camkit.mix._snapmix import _draws

__all__ = ["TrainStep", "TrainStepOutput", "soft_cross_entropy"]

SoftCriterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainStepOutput(NamedTuple):
    """What one call of [`TrainStep`][camkit.TrainStep] returns.

    Attributes:
        loss: scalar, differentiable: ``classification_loss + cpe_weight * cpe_loss``.
        logits: ``(B, K)`` logits of the training forward (on the mixed images with SnapMix).
        targets: ``(B, K)`` float soft targets the loss was computed against: the SnapMix targets,
            or one-hot labels, after label smoothing.
        classification_loss: scalar criterion value (part of ``loss``).
        cpe_loss: scalar CPE value before ``cpe_weight``, or ``None`` without CPE.
        inputs: ``(B, C, H, W)`` the images the model was trained on (the mixed batch with SnapMix,
            the given images otherwise), e.g. to draw the mix.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    classification_loss: torch.Tensor
    cpe_loss: torch.Tensor | None
    inputs: torch.Tensor


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``−Σ_k targets_k · log softmax(logits)_k``, in float32 at least.

    The same value as timm's ``SoftTargetCrossEntropy``; SnapMix targets need not sum to 1
    (``ρ_a + ρ_b ≠ 1``) and are used as they are.

    Examples:
        >>> soft_cross_entropy(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item()  # ln 2
        0.6931...
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_p = F.log_softmax(logits.to(dtype), dim=-1)
    return -(targets.to(dtype) * log_p).sum(-1).mean()


class TrainStep(nn.Module):
    """One training step of the paper's recipe as a module: ``step(images, labels).loss``.

    For a batch ``(images, labels)`` it computes, with SnapMix, the CAMs of the un-mixed batch
    for the labels in a frozen side pass
    ([`CAMExtractor.forward_frozen`][camkit.CAMExtractor.forward_frozen]: autograd off, BatchNorm
    statistics untouched), mixes the batch, then runs **one** training forward of the
    model; the loss is the criterion on the soft targets plus, with CPE, ``cpe_weight`` times the
    contrastive patch loss on that forward's features, the cells ranked by the CAM of each image's
    dominant target class. Without SnapMix the targets are the one-hot labels; with neither part
    it is a plain (soft-target) cross-entropy step.

    The optimiser step stays outside (as with timm's tasks): ``out.loss.backward()`` then
    ``optimizer.step()``. Autocast, gradient scaling, accumulation and EMA are the loop's, and
    work as they do for a plain model: the criterion and CPE are computed in float32 under
    autocast.

    Shape:
        - images: ``(B, C, H, W)`` float, the model's normalised input.
        - labels: ``(B,)`` int64 class indices in ``[0, K)``.
        - output: [`TrainStepOutput`][camkit.TrainStepOutput] with ``loss`` ``()``, ``logits``
          and ``targets`` ``(B, K)``.

    Distributed and compiled training:
        Wrap the step, never the model: ``DDP(TrainStep(model, ...))`` keeps every rank in sync
        (the training forward runs inside DDP's forward), and
        ``torch.compile(TrainStep(model, ...))`` compiles the step. Graph breaks remain where the
        step leaves tensor code on purpose: the host-side SnapMix draws (Python random numbers so
        the box is known without a device sync), the cached resize tables of the label weights
        and, for heads whose CAM is not exact, the head-gradient ``torch.autograd.grad``.

    Args:
        model: a timm classifier (unwrapped: not DDP, not compiled). With neither SnapMix nor
            CPE any classifier returning ``(B, K)`` logits works.
        snapmix: the [`SnapMix`][camkit.SnapMix] transform, or ``None``.
        cpe: the [`ContrastivePatchLoss`][camkit.ContrastivePatchLoss], or ``None``.
        criterion: ``criterion(logits, soft_targets) -> scalar`` (default
            [`soft_cross_entropy`][camkit.soft_cross_entropy], timm's ``SoftTargetCrossEntropy``).
        cpe_weight: weight ``λ ≥ 0`` of the CPE term (paper: 1).
        label_smoothing: ``ε`` in ``[0, 1)``; targets become ``(1 − ε)·t + ε/K``.

    Attributes:
        model: the model being trained (its parameters are the step's parameters, so
            ``step.parameters()``, ``step.model.state_dict()`` and an EMA of ``step.model`` are
            the model's).
        extractor: the [`CAMExtractor`][camkit.CAMExtractor] of ``model`` (``None`` with neither
            part).
        num_classes: ``K``.

    Raises:
        TypeError: ``model`` is wrapped in DistributedDataParallel, DataParallel or
            ``torch.compile`` (the message says what to wrap instead).
        ValueError: ``snapmix.num_classes`` differs from the model's class count, or an argument
            is out of range.

    Examples:
        >>> import timm, torch
        >>> from camkit import ContrastivePatchLoss, SnapMix, TrainStep
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=2)
        >>> step = TrainStep(model, snapmix=SnapMix(num_classes=2), cpe=ContrastivePatchLoss())
        >>> out = step(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 1, 0]))
        >>> out.loss.backward()
        >>> out.logits.shape, out.targets.shape
        (torch.Size([4, 2]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        model: nn.Module,
        snapmix: SnapMix | None = None,
        cpe: ContrastivePatchLoss | None = None,
        *,
        criterion: SoftCriterion | None = None,
        cpe_weight: float = 1.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        method = model.method if isinstance(model, CAMExtractor) else "cam"  # kept, like model
        if isinstance(model, CAMExtractor):  # its model is what trains
            model = model.model
        refuse_wrappers(model, "model")
        if snapmix is not None and not isinstance(snapmix, SnapMix):
            raise TypeError(f"snapmix: expected a camkit.SnapMix or None, got {type(snapmix)}")
        if cpe is not None and not isinstance(cpe, ContrastivePatchLoss):
            raise TypeError(
                f"cpe: expected a camkit.ContrastivePatchLoss or None, got {type(cpe).__name__}"
            )
        if cpe is not None and cpe.reduction != "mean":
            raise ValueError(
                f"cpe: the step needs a scalar loss, expected reduction='mean', "
                f"got {cpe.reduction!r}"
            )
        if criterion is not None and not callable(criterion):
            raise TypeError(f"criterion: expected a callable, got {type(criterion).__name__}")
        check_positive(cpe_weight, "cpe_weight", strict=False)
        check_probability(label_smoothing, "label_smoothing")
        if label_smoothing >= 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1), got {label_smoothing}")

        self.model = model
        extractor = CAMExtractor(model, method) if snapmix is not None or cpe is not None else None
        # not registered as a submodule: it shares ``model`` and would duplicate its state_dict keys
        object.__setattr__(self, "extractor", extractor)
        num_classes = extractor.num_classes if extractor is not None else None
        if num_classes is None:
            count = getattr(model, "num_classes", None)
            num_classes = int(count) if isinstance(count, int) and count > 0 else None
        if snapmix is not None and snapmix.num_classes != num_classes:
            raise ValueError(
                f"snapmix: SnapMix(num_classes={snapmix.num_classes}) does not match the model's "
                f"{num_classes} classes; create it with num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self.snapmix = snapmix
        self.cpe = cpe
        self.criterion: SoftCriterion = criterion if criterion is not None else soft_cross_entropy
        self.cpe_weight = float(cpe_weight)
        self.label_smoothing = float(label_smoothing)

    def _smooth(self, targets: torch.Tensor) -> torch.Tensor:
        if self.label_smoothing == 0.0:
            return targets
        return targets * (1.0 - self.label_smoothing) + self.label_smoothing / targets.shape[1]

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mixed_params: SnapMixParams | None = None,
    ) -> TrainStepOutput:
        """Compute the step's loss for ``images`` (B, C, H, W) and ``labels`` (B,); see the class.

        The model's mode is not changed (put it in train mode yourself); only the training
        forward updates BatchNorm statistics. ``mixed_params``: the draws with which
        [`SnapMixCollate`][camkit.SnapMixCollate] already mixed ``images`` (with
        ``SnapMix(cam_source="mixed")`` only); the step then only weighs the labels.
        """
        check_tensor(images, "images", ndim=4, floating=True)
        batch = images.shape[0]
        if self.num_classes is not None:
            check_labels(labels, "labels", self.num_classes, batch=batch)
        else:
            check_tensor(labels, "labels", shape=(batch,), floating=False)
        if mixed_params is not None and (
            self.snapmix is None or self.snapmix.cam_source != "mixed"
        ):
            raise ValueError(
                "mixed_params: images mixed in the DataLoader need a step with "
                "SnapMix(cam_source='mixed'), which weighs the labels in the training forward; "
                f"this step has snapmix={self.snapmix!r}"
            )
        # int64 for the one-hot and SnapMix scatters; non_blocking: a pageable host-to-device
        # copy would otherwise synchronise the stream
        labels = labels.to(images.device, torch.long, non_blocking=True)

        if self.snapmix is not None and self.snapmix.cam_source == "mixed":
            return self._mixed_cam_step(images, labels, mixed_params)
        if self.snapmix is not None:
            cams = self.extractor.forward_frozen(images, labels).cams
            inputs, targets = self.snapmix(images, labels, cams)
            cam_target = targets.argmax(1)
        else:
            inputs, targets, cam_target = images, None, labels

        cpe_loss = None
        if self.cpe is not None:
            out = self.extractor(inputs, target=cam_target)  # one forward: logits and CAMs
            logits = out.logits
            cpe_loss = self.cpe(out.features, out.cams)
        else:
            logits = self.model(inputs)
        if targets is None:  # one-hot by scatter: F.one_hot range-checks with a host sync on CUDA
            targets = logits.new_zeros(logits.shape, dtype=torch.float32)
            targets.scatter_(1, labels[:, None], 1.0)
        return self._loss(inputs, logits, targets, cpe_loss)

    def _mixed_cam_step(
        self, images: torch.Tensor, labels: torch.Tensor, params: SnapMixParams | None
    ) -> TrainStepOutput:
        """SnapMix without the extra forward: label weights from the training forward's CAMs."""
        if params is None:
            inputs, params = self.snapmix.mix_images(images)
        else:  # mixed in the DataLoader: only check the draws against the batch
            inputs = images
            params = _draws(self.snapmix.config, images, params, None)
        extractor = self.extractor
        extractor._check_inputs(inputs, labels)
        feats = self.model.forward_features(inputs)
        logits = self.model.forward_head(feats)
        partner = labels[params.perm.to(labels.device, non_blocking=True)]
        out_a = extractor._cams_from(feats, logits, inputs, labels)
        cams_b = extractor._cams_from(feats, logits, inputs, partner).cams
        pair = torch.stack([out_a.cams, cams_b], 1).detach().float()
        targets = self.snapmix.targets(labels, pair, params, tuple(inputs.shape[-2:]))
        cpe_loss = None
        if self.cpe is not None:  # cells ranked by the CAM of each image's dominant class
            first = targets.gather(1, labels[:, None]) >= targets.gather(1, partner[:, None])
            cams = torch.where(first[:, :, None], out_a.cams, cams_b)
            cpe_loss = self.cpe(out_a.features, cams)
        return self._loss(inputs, logits, targets, cpe_loss)

    def _loss(
        self,
        inputs: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        cpe_loss: torch.Tensor | None,
    ) -> TrainStepOutput:
        targets = self._smooth(targets.to(torch.float32))

        classification_loss = self.criterion(logits, targets)
        loss = classification_loss
        if cpe_loss is not None:
            loss = loss + self.cpe_weight * cpe_loss
        return TrainStepOutput(
            loss=loss,
            logits=logits,
            targets=targets,
            classification_loss=classification_loss,
            cpe_loss=cpe_loss,
            inputs=inputs,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, cpe_weight={self.cpe_weight}, "
            f"label_smoothing={self.label_smoothing}"
        )
