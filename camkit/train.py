"""The camkit training step: a mix (with its CAM pass), one training forward, soft-target CE, CPE.

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

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from camkit._checks import check_choice, check_labels, check_positive, check_probability
from camkit._step_checks import check_step_inputs, train_forward
from camkit.cam import CAM_METHODS, CAMExtractor
from camkit.cam._contract import input_layer, model_name, refuse_wrappers
from camkit.losses import ContrastivePatchLoss, soft_cross_entropy
from camkit.mix import Mix
from camkit.models import source_model, unwrap_logits
from camkit.models._resolve import resolve

__all__ = ["TrainStep", "TrainStepOutput", "soft_cross_entropy"]

SoftCriterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainStepOutput(NamedTuple):
    """What one call of [`TrainStep`][camkit.TrainStep] returns.

    Attributes:
        loss: scalar, differentiable: ``classification_loss + cpe_weight * cpe_loss``.
        logits: ``(B, K)`` logits of the training forward (on the mixed images with a mix).
        targets: ``(B, K)`` float soft targets the loss was computed against: the mix's targets,
            or one-hot labels, after label smoothing.
        classification_loss: scalar criterion value (part of ``loss``).
        cpe_loss: scalar CPE value before ``cpe_weight``, or ``None`` without CPE.
        inputs: ``(B, C, H, W)`` (volumes: ``(B, C, D, H, W)``) the images the model was trained
            on (the mixed batch with a mix, the given images otherwise), e.g. to draw the mix.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    classification_loss: torch.Tensor
    cpe_loss: torch.Tensor | None
    inputs: torch.Tensor


class TrainStep(nn.Module):
    """One training step as a module: ``step(images, labels).loss``; any mix, CE, CPE.

    For a batch ``(images, labels)`` the step asks its [`Mix`][camkit.Mix] what it needs
    (``mix.needs_cams``):

    - ``"none"`` (CutMix, Mixup): draw, mix, one training forward;
    - ``"unmixed"`` (SnapMix, Attentive CutMix): the CAMs of the un-mixed batch for the labels in a
      frozen side pass ([`CAMExtractor.forward_frozen`][camkit.CAMExtractor.forward_frozen]:
      autograd off, BatchNorm statistics untouched), then draw (given the CAMs when the draws
      depend on them), mix, one training forward;
    - ``"mixed"`` (``SnapMix(cam_source="mixed")``): draw, mix, one training forward whose CAMs of
      the mixed images for both labels weigh the targets (no extra forward).

    The loss is the criterion on the soft targets plus, with CPE, ``cpe_weight`` times the
    contrastive patch loss on the training forward's features, the cells ranked by the CAM of each
    image's dominant target class. Without a mix the targets are the one-hot labels; with neither
    a mix nor CPE it is a plain (soft-target) cross-entropy step. The inputs are checked once, at
    the step's entry, the same way for every variant (a tensor ``(B, C, H, W)`` with ``B ≥ 1``, on
    the model's device, with the channels and dtype of the model's first convolution, labels in
    ``[0, K)``, finite pixels, and ``mixed_params`` that are the mix's draws for the batch); the
    parts are then called with ``validate_args=False``.

    Finiteness: a NaN or infinite pixel would train on NaN targets and losses, so the step
    refuses it, without a host sync: on the CPU at once (the message counts the bad values), on
    an accelerator with ``torch._assert_async`` (a device-side assert: the step returns at once
    and the error surfaces at the next synchronisation, e.g. ``loss.item()``; on CUDA a failed
    device assert ends the process's CUDA context, as any device-side assert does). The check
    reads the batch once; its measured cost is in the benchmarks (``finite`` rows of
    ``perf.py``). ``check_finite=False`` skips it.

    Two recipes are named throughout the docs: the recommended recipe,
    ``TrainStep(model, cpe=ContrastivePatchLoss())`` (chosen on validation data, see the results
    page), and the paper's recipe,
    ``TrainStep(model, mix=SnapMix(num_classes=2), cpe=ContrastivePatchLoss.paper())``.

    The optimiser step stays outside (as with timm's tasks): ``out.loss.backward()`` then
    ``optimizer.step()``. Autocast, gradient scaling, accumulation and EMA are the loop's, and
    work as they do for a plain model: the criterion and CPE are computed in float32 under
    autocast. Put the model in train mode yourself (``model.train()``, as timm's ``train.py``
    does): the step never switches modes, and warns once when it is called on a model in eval
    mode (BatchNorm would then train on frozen running statistics).

    Shape:
        - images: ``(B, C, H, W)`` float, the model's normalised input; ``(B, C, D, H, W)``
          volumes for a model whose input layer is a 3-D convolution (without a mix or with any
          of camkit's: SnapMix and CutMix take cuboids, Attentive CutMix 3-D cells; with the
          CPE).
        - labels: ``(B,)`` int64 class indices in ``[0, K)``.
        - output: [`TrainStepOutput`][camkit.TrainStepOutput] with ``loss`` ``()``, ``logits``
          and ``targets`` ``(B, K)``, ``inputs`` ``(B, C, H, W)``.

    Distributed and compiled training:
        Wrap the step, never the model: ``DDP(TrainStep(model, ...))`` keeps every rank in sync
        (the training forward runs inside DDP's forward), and
        ``torch.compile(TrainStep(model, ...))`` compiles the step. Graph breaks remain where the
        step leaves tensor code on purpose: the host-side draws of the mixes (Python random
        numbers so the box is known without a device sync), the cached resize tables of SnapMix's
        label weights and, for heads whose CAM is not exact, the head-gradient
        ``torch.autograd.grad``.

    Args:
        model: a timm classifier (unwrapped: not DDP, not compiled), or a
            [`CAMExtractor`][camkit.CAMExtractor] of one. With neither a mix that needs CAMs nor
            CPE any classifier returning ``(B, K)`` logits (or a Hugging Face output with
            ``.logits``) works; torchvision, MONAI and Hugging Face classifiers are read through
            their adapters (`camkit.models`).
        mix: a [`Mix`][camkit.Mix] (``SnapMix``, ``CutMix``, ``Mixup``, ``AttentiveCutMix``, …),
            or ``None``.
        cpe: the [`ContrastivePatchLoss`][camkit.ContrastivePatchLoss], or ``None``
            (``ContrastivePatchLoss.paper()`` is the paper's Eq. 1).
        cam_method: the CAM method of the step's maps, one of
            [`CAM_METHODS`][camkit.CAM_METHODS] (default ``"cam"``, the paper's); a
            ``CAMExtractor`` passed as ``model`` must have this method.
        criterion: ``criterion(logits, soft_targets) -> scalar`` (default
            [`soft_cross_entropy`][camkit.soft_cross_entropy], timm's ``SoftTargetCrossEntropy``).
        cpe_weight: weight ``λ ≥ 0`` of the CPE term (paper: 1).
        label_smoothing: ``ε`` in ``[0, 1)``; targets become ``(1 − ε)·t + ε/K``.
        check_finite: refuse NaN or infinite images (default; see above).
        snapmix: deprecated name of ``mix`` (kept for one release; warns).

    Attributes:
        model: the model being trained (its parameters are the step's parameters, so
            ``step.parameters()``, ``step.model.state_dict()`` and an EMA of ``step.model`` are
            the model's).
        mix: the mix, or ``None``.
        extractor: the [`CAMExtractor`][camkit.CAMExtractor] of ``model`` (``None`` when nothing
            needs CAMs).
        num_classes: ``K``.

    Raises:
        TypeError: ``model`` is wrapped in DistributedDataParallel, DataParallel or
            ``torch.compile`` (the message says what to wrap instead), or ``mix``/``cpe`` is of
            the wrong type.
        ValueError: ``mix.num_classes`` differs from the model's class count, ``cam_method``
            differs from a passed extractor's, an argument is out of range, or CAMs or CPE are
            asked of a model on the ``meta`` device. A call raises ``ValueError`` for an empty
            batch, NaN or infinite images, labels outside ``[0, K)``, draws that are not the
            mix's for the batch, or a batch of one that train-mode BatchNorm cannot normalise.

    Examples:
        >>> import timm, torch
        >>> from camkit import ContrastivePatchLoss, CutMix, SnapMix, TrainStep
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=2)
        >>> step = TrainStep(model, mix=SnapMix(num_classes=2), cpe=ContrastivePatchLoss())
        >>> out = step(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 1, 0]))
        >>> out.loss.backward()
        >>> out.logits.shape, out.targets.shape
        (torch.Size([4, 2]), torch.Size([4, 2]))
        >>> TrainStep(model, mix=CutMix(num_classes=2))(torch.randn(4, 3, 64, 64),
        ...                                             torch.tensor([0, 1, 1, 0])).inputs.shape
        torch.Size([4, 3, 64, 64])
    """

    def __init__(
        self,
        model: nn.Module,
        mix: Mix | None = None,
        cpe: ContrastivePatchLoss | None = None,
        *,
        cam_method: str = "cam",
        criterion: SoftCriterion | None = None,
        cpe_weight: float = 1.0,
        label_smoothing: float = 0.0,
        check_finite: bool = True,
        snapmix: Mix | None = None,
    ) -> None:
        super().__init__()
        if snapmix is not None:
            if mix is not None:
                raise TypeError("snapmix: give the mix once, as mix= (snapmix= is its old name)")
            warnings.warn(
                "TrainStep(snapmix=...) is deprecated: pass the mix as mix= (any camkit.Mix)",
                DeprecationWarning,
                stacklevel=2,
            )
            mix = snapmix
        check_choice(cam_method, "cam_method", CAM_METHODS)
        if isinstance(model, CAMExtractor):  # its model is what trains
            if model.method != cam_method:
                raise ValueError(
                    f"cam_method: the CAMExtractor passed as model computes {model.method!r} maps "
                    f"but cam_method={cam_method!r}; pass cam_method={model.method!r} (or the "
                    "plain model)"
                )
            model = model.model
        refuse_wrappers(model, "model")
        # what the step calls: the model, or its adapter (camkit.models); self.model stays the
        # user's model, so state_dict keys, EMA and checkpoints are the model's own
        classifier = resolve(model, required=False)
        model = source_model(model)
        if mix is not None and not isinstance(mix, Mix):
            raise TypeError(
                f"mix: expected a camkit.Mix (SnapMix, CutMix, Mixup, ...) or None, "
                f"got {type(mix).__name__}"
            )
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
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite: expected a bool, got {type(check_finite).__name__}")

        self.model = model
        needs_maps = cpe is not None or (mix is not None and mix.needs_cams != "none")
        param = next(model.parameters(), None)
        if needs_maps and param is not None and param.device.type == "meta":
            raise ValueError(
                f"model: the parameters of {model_name(model)} are on the meta device (shapes "
                "without values); CAMs and CPE need real weights: materialise them first "
                "(model.to_empty(device=...) then load a state dict)"
            )
        extractor = CAMExtractor(classifier, cam_method) if needs_maps else None
        # not registered as a submodule: it shares ``model`` and would duplicate its state_dict keys
        object.__setattr__(self, "extractor", extractor)
        object.__setattr__(self, "_classifier", classifier)
        # the input layer whose channels and dtype a CAM-free step checks (the extractor checks
        # its own): the model's first convolution, as the extractor's
        object.__setattr__(self, "_input_layer", input_layer(model) if extractor is None else None)
        num_classes = extractor.num_classes if extractor is not None else None
        if num_classes is None:
            count = getattr(classifier, "num_classes", None)
            num_classes = int(count) if isinstance(count, int) and count > 0 else None
        if mix is not None and num_classes is not None and mix.num_classes != num_classes:
            name = type(mix).__name__
            raise ValueError(
                f"mix: {name}(num_classes={mix.num_classes}) does not match the model's "
                f"{num_classes} classes; create it with num_classes={num_classes}"
            )
        self.num_classes = num_classes
        self.cam_method = cam_method
        self.mix = mix
        self.cpe = cpe
        self.criterion: SoftCriterion = criterion if criterion is not None else soft_cross_entropy
        self.cpe_weight = float(cpe_weight)
        self.label_smoothing = float(label_smoothing)
        self.check_finite = check_finite
        self._warned_eval = False

    @property
    def snapmix(self) -> Mix | None:
        """Deprecated name of ``mix`` (read-only)."""
        return self.mix

    def _smooth(self, targets: torch.Tensor) -> torch.Tensor:
        if self.label_smoothing == 0.0:
            return targets
        return targets * (1.0 - self.label_smoothing) + self.label_smoothing / targets.shape[1]

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mixed_params: object = None,
    ) -> TrainStepOutput:
        """Compute the step's loss for ``images`` (B, C, H, W) (or volumes) and ``labels`` (B,).

        The model's mode is not changed (put it in train mode yourself); only the training
        forward updates BatchNorm statistics. ``mixed_params``: the draws with which
        [`MixCollate`][camkit.MixCollate] already mixed ``images`` (a mix with ``needs_cams``
        ``"none"`` or ``"mixed"``); the step then only weighs the labels.
        """
        check_step_inputs(self, images, labels, mixed_params)
        # int64 for the one-hot and the mixes' scatters; non_blocking: a pageable host-to-device
        # copy would otherwise synchronise the stream
        labels = labels.to(images.device, torch.long, non_blocking=True)
        mix, size = self.mix, tuple(images.shape[2:])
        if mix is not None and mix.needs_cams == "mixed":
            return self._mixed_cam_step(images, labels, mixed_params)
        if mix is None:
            inputs, targets, cam_target = images, None, labels
        else:
            cams = None
            if mix.needs_cams == "unmixed":
                frozen = self.extractor.forward_frozen
                cams = train_forward(self, frozen, images, target=labels, validate_args=False).cams
            if mixed_params is None:
                inputs, params = mix.mix_images(images, cams=cams, validate_args=False)
            else:
                inputs, params = images, mixed_params
            targets = mix.targets(labels, cams, params, size, validate_args=False)
            cam_target = targets.argmax(1)

        cpe_loss = None
        if self.cpe is not None:  # one forward: logits and CAMs
            out = train_forward(
                self, self.extractor, inputs, target=cam_target, validate_args=False
            )
            logits = out.logits
            cpe_loss = self.cpe(out.features, out.cams, validate_args=False)
        else:
            logits = unwrap_logits(train_forward(self, self._classifier, inputs))
        if targets is None and self.num_classes is None:  # a model without num_classes
            check_labels(labels, "labels", logits.shape[-1])
        if targets is None:  # one-hot by scatter: F.one_hot range-checks with a host sync on CUDA
            targets = logits.new_zeros(logits.shape, dtype=torch.float32)
            targets.scatter_(1, labels[:, None], 1.0)
        return self._loss(inputs, logits, targets, cpe_loss)

    def _mixed_cam_step(
        self, images: torch.Tensor, labels: torch.Tensor, params: object
    ) -> TrainStepOutput:
        """The label weights from the training forward's CAMs of the mixed batch (one forward)."""
        mix = self.mix
        if params is None:
            inputs, params = mix.mix_images(images, validate_args=False)
        else:  # mixed in the DataLoader
            inputs = images
        partner = labels[params.perm.to(labels.device, non_blocking=True)]
        both = torch.stack([labels, partner], 1)
        out = train_forward(self, self.extractor, inputs, target=both, validate_args=False)
        pair = out.cams.detach().float()
        targets = mix.targets(labels, pair, params, tuple(inputs.shape[2:]), validate_args=False)
        cpe_loss = None
        if self.cpe is not None:  # cells ranked by the CAM of each image's dominant class
            first = targets.gather(1, labels[:, None]) >= targets.gather(1, partner[:, None])
            first = first.view(-1, *(1,) * (out.cams.ndim - 2))  # (B, 1, 1), volumes (B, 1, 1, 1)
            cams = torch.where(first, out.cams[:, 0], out.cams[:, 1])
            cpe_loss = self.cpe(out.features, cams, validate_args=False)
        return self._loss(inputs, out.logits, targets, cpe_loss)

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
            f"num_classes={self.num_classes}, cam_method={self.cam_method!r}, "
            f"cpe_weight={self.cpe_weight}, label_smoothing={self.label_smoothing}"
            + ("" if self.check_finite else ", check_finite=False")
        )
