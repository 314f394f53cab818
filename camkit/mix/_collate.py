"""Mixing in the DataLoader: the draws and the paste on the host, the label weights in the step."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate, get_worker_info

from camkit._checks import check_finite, check_tensor
from camkit.mix._base import Mix


class MixCollate:
    """A DataLoader ``collate_fn`` that mixes each batch on the host (like timm's collate mixup).

    A mix that needs no model to mix — ``needs_cams`` ``"none"`` (CutMix, Mixup) or ``"mixed"``
    (``SnapMix(cam_source="mixed")``, whose label weights come from the training forward) — draws
    its parameters and pastes in the DataLoader's workers, and hands the step the draws, so the
    device only runs the training forward and the label weights:

        loader = DataLoader(ds, batch_size=64, collate_fn=MixCollate(mix), num_workers=8)
        for mixed, labels, params in loader:
            out = step(mixed, labels, mixed_params=params)

    The same draws give the same mixed images and targets as [`TrainStep`][camkit.TrainStep]
    mixing in the step (`tests/test_snapmix_fast.py` pins it).

    Random draws: in a worker process they come from the worker's torch random state, which the
    DataLoader seeds differently per worker and per epoch (its ``generator=`` makes a run
    reproducible); the mix's own ``generator`` is used only when the collate runs in the main
    process (``num_workers=0``): a generator copied into every worker would repeat its draws in
    each of them.

    Args:
        mix: a [`Mix`][camkit.Mix] whose ``needs_cams`` is ``"none"`` or ``"mixed"``.
        collate_fn: how samples become ``(images (B, C, H, W), labels (B,))`` first (default:
            torch's ``default_collate``).

    Shape:
        - Input: a list of ``(image (C, H, W), label)`` samples (``(C, D, H, W)`` volumes for a
          mix that takes them: CutMix, Mixup, ``SnapMix(cam_source="mixed")``).
        - Output: ``(mixed (B, C, H, W), labels (B,) int64, params)``, the params on the host
          (``mixed`` of the batch's shape for volumes).
    """

    def __init__(
        self, mix: Mix, collate_fn: Callable[[Sequence[Any]], Any] = default_collate
    ) -> None:
        if not isinstance(mix, Mix):
            raise TypeError(f"mix: expected a camkit.Mix, got {type(mix).__name__}")
        if mix.needs_cams == "unmixed":
            raise ValueError(
                f"mix: {type(mix).__name__} needs the model's CAMs of the un-mixed batch "
                f"(needs_cams='unmixed'), which a DataLoader does not have: mix in the step "
                "(camkit.TrainStep), or use SnapMix(cam_source='mixed')"
            )
        if not callable(collate_fn):
            raise TypeError(f"collate_fn: expected a callable, got {type(collate_fn).__name__}")
        self.mix = mix
        self.collate_fn = collate_fn

    def __call__(self, samples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        images, labels = self.collate_fn(samples)
        ranks = (4, 5) if self.mix.volumes else (4,)
        if not isinstance(images, torch.Tensor) or images.ndim not in ranks:
            volumes = " or (B, C, D, H, W)" if self.mix.volumes else ""
            raise ValueError(
                f"collate_fn: expected (images (B, C, H, W){volumes}, labels (B,)), got images of "
                "type "
                f"{type(images).__name__}"
                + (f" and shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else "")
            )
        labels = _class_indices(labels, images.shape[0])
        if images.is_floating_point():
            check_finite(images, "images")  # the host's check: the step then gets a clean batch
        generator = self.mix.generator if get_worker_info() is None else None
        if generator is not None and generator.device.type != "cpu":
            generator = None
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        depth = images.shape[2] if images.ndim == 5 else None  # volumes
        params = self.mix._draw_for(b, h, w, None, torch.device("cpu"), generator, depth)
        return self.mix._apply(images, params), labels, params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mix!r})"


def _class_indices(labels: object, batch: int) -> torch.Tensor:
    """The batch's labels as ``(B,)`` int64, refusing what ``.long()`` would truncate."""
    labels = torch.as_tensor(labels)
    check_tensor(labels, "labels", shape=(batch,))
    if labels.is_floating_point() or labels.is_complex():
        whole = torch.isfinite(labels) & (labels == labels.round())
        if not bool(whole.all()):
            bad = labels[~whole][:5].tolist()
            raise ValueError(
                f"labels: expected integer class indices, got {int((~whole).sum())} that are "
                f"not whole numbers (e.g. {bad}) among the samples' labels of dtype "
                f"{labels.dtype}; MixCollate does not round soft labels: give class indices"
            )
    elif labels.dtype == torch.bool:
        raise TypeError("labels: expected integer class indices, got bool labels")
    return labels.long()


class SnapMixCollate(MixCollate):
    """Deprecated name of [`MixCollate`][camkit.MixCollate] (kept for one release).

    Args:
        snapmix: the mix (any mix [`MixCollate`][camkit.MixCollate] takes).
        collate_fn: as for `MixCollate`.
    """

    def __init__(
        self, snapmix: Mix, collate_fn: Callable[[Sequence[Any]], Any] = default_collate
    ) -> None:
        warnings.warn(
            "SnapMixCollate is deprecated: use camkit.MixCollate, which takes any mix that needs "
            "no model (CutMix, Mixup, SnapMix(cam_source='mixed'))",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(snapmix, collate_fn)
