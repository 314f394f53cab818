"""The input checks of [`TrainStep`][camkit.TrainStep], in one place for every variant of it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from camkit._checks import (
    _describe,
    check_finite,
    check_input_layer,
    check_input_rank,
    check_labels,
    check_tensor,
    input_ndim,
)
from camkit.cam._contract import check_device, model_name

if TYPE_CHECKING:
    from camkit.train import TrainStep


def check_step_inputs(
    step: TrainStep, images: object, labels: object, mixed_params: object
) -> None:
    """Everything the parts of ``step`` (a [`TrainStep`][camkit.TrainStep]) would check, once,
    the same way for every variant of the step."""
    if step.extractor is not None:
        step.extractor.check_inputs(images, None)
    else:
        owner = model_name(step.model)
        check_input_rank(images, "images", input_ndim(step._input_layer), owner)
        check_device(step.model, images, "images")
        check_input_layer(images, "images", step._input_layer, model_name(step.model))
    if images.ndim == 5 and step.mix is not None and not step.mix.volumes:
        raise ValueError(
            f"mix: {type(step.mix).__name__} mixes (B, C, H, W) images and does not take volumes "
            f"yet, got images of shape {tuple(images.shape)}; camkit's mixes (or no mix) train "
            "on volumes"
        )
    batch = images.shape[0]
    if batch == 0:
        raise ValueError(
            f"images: expected a batch of at least 1 image, got a {_describe(images)} (the "
            "loss of an empty batch is NaN)"
        )
    if step.check_finite:
        check_finite(images, "images")
    if isinstance(labels, torch.Tensor) and labels.device.type not in (
        "cpu",
        images.device.type,
    ):
        raise ValueError(
            f"labels: on {labels.device}, expected the images' device ({images.device}) or the host"
        )
    if not step.model.training and not step._warned_eval:
        step._warned_eval = True
        warnings.warn(
            "TrainStep: the model is in eval mode, so BatchNorm uses (and keeps) its running "
            "statistics and dropout is off; call model.train() before training (as timm's "
            "train.py does)",
            UserWarning,
            stacklevel=3,
        )
    classes = step.num_classes if step.mix is None else step.mix.num_classes
    if classes is not None:
        check_labels(labels, "labels", classes, batch=batch)
    else:  # the class count is known once the logits are: checked then
        check_tensor(labels, "labels", shape=(batch,), floating=False)
    if mixed_params is not None:
        if step.mix is None or step.mix.needs_cams == "unmixed":
            raise ValueError(
                "mixed_params: images mixed in the DataLoader (camkit.MixCollate) need a step "
                "whose mix needs no model to mix (needs_cams 'none' or 'mixed', e.g. CutMix, "
                f"Mixup or SnapMix(cam_source='mixed')); this step has mix={step.mix!r}"
            )
        step.mix.check_params(mixed_params, batch, tuple(images.shape[2:]))


def train_forward(step: TrainStep, forward: Callable, inputs: torch.Tensor, **kwargs: Any) -> Any:
    """A forward of the step's model in train mode (the training forward, or the frozen CAM
    pass); train-mode BatchNorm's refusal of a batch of one is explained."""
    try:
        return forward(inputs, **kwargs)
    except ValueError as err:
        if "Expected more than 1 value per channel when training" not in str(err):
            raise
        raise ValueError(
            f"images: a batch of {inputs.shape[0]} reaches a BatchNorm layer of "
            f"{model_name(step.model)} in train mode with one value per channel ({err}); "
            "train on batches of at least 2 images (e.g. DataLoader(..., drop_last=True)) "
            "or on larger images"
        ) from err
