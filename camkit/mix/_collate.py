"""SnapMix in the DataLoader: the paste on the host, the label weights later in the step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

from camkit.mix._ops import paste
from camkit.mix._snapmix import SnapMix, SnapMixParams, _sample_snapmix_params


class SnapMixCollate:
    """A DataLoader ``collate_fn`` that mixes each batch on the host (like timm's collate mixup).

    With ``cam_source="mixed"`` SnapMix needs no model to mix: the partner permutation, the boxes
    and the paste are pure data, and the label weights come from the CAMs of the training forward.
    This collate does the first part in the DataLoader's workers and hands the step the draws,
    so the device only runs the training forward and the weights:

        loader = DataLoader(ds, batch_size=64, collate_fn=SnapMixCollate(mix), num_workers=8)
        for mixed, labels, params in loader:
            out = step(mixed, labels, mixed_params=params)

    The same draws give the same mixed images and targets as [`TrainStep`][camkit.TrainStep]
    mixing in the step (`tests/test_snapmix_fast.py` pins it).

    Random draws: in a worker process they come from the worker's torch random state, which the
    DataLoader seeds differently per worker and per epoch (its ``generator=`` makes a run
    reproducible); the SnapMix's own ``generator`` is used only when the collate runs in the main
    process (``num_workers=0``): a generator copied into every worker would repeat its draws in
    each of them.

    Args:
        snapmix: a [`SnapMix`][camkit.SnapMix] with ``cam_source="mixed"``.
        collate_fn: how samples become ``(images (B, C, H, W), labels (B,))`` first (default:
            torch's ``default_collate``).

    Shape:
        - Input: a list of ``(image (C, H, W), label)`` samples.
        - Output: ``(mixed (B, C, H, W), labels (B,) int64, params)``, params a
          [`SnapMixParams`][camkit.SnapMixParams] on the host.
    """

    def __init__(
        self, snapmix: SnapMix, collate_fn: Callable[[Sequence[Any]], Any] = default_collate
    ) -> None:
        if not isinstance(snapmix, SnapMix):
            raise TypeError(f"snapmix: expected a camkit.SnapMix, got {type(snapmix).__name__}")
        if snapmix.cam_source != "mixed":
            raise ValueError(
                "snapmix: expected SnapMix(cam_source='mixed') (its label weights come from the "
                f"training forward), got cam_source={snapmix.cam_source!r}, whose weights need "
                "the model's CAMs of the un-mixed batch: mix in the step (camkit.TrainStep)"
            )
        if not callable(collate_fn):
            raise TypeError(f"collate_fn: expected a callable, got {type(collate_fn).__name__}")
        self.snapmix = snapmix
        self.collate_fn = collate_fn

    def __call__(self, samples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, SnapMixParams]:
        images, labels = self.collate_fn(samples)
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(
                "collate_fn: expected (images (B, C, H, W), labels (B,)), got images of type "
                f"{type(images).__name__}"
                + (f" and shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else "")
            )
        labels = torch.as_tensor(labels).long()
        generator = self.snapmix.generator if get_worker_info() is None else None
        if generator is not None and generator.device.type != "cpu":
            generator = None
        b, _, h, w = images.shape
        params = _sample_snapmix_params(
            self.snapmix.config, b, h, w, generator, torch.device("cpu")
        )
        return paste(images, params), labels, params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.snapmix!r})"
