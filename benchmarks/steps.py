"""The training-step variants compared by the benchmarks, on one model, batch and optimizer.

The camkit steps are :class:`camkit.TrainStep` (the one training step the library, README and
examples use) with the CPE in the paper's form (Eq. 1, ``normalize=False, temperature=1``: the form
``perf_cpu.json`` was measured with; the L2-normalised default was not timed separately);
``ce`` = cross-entropy, SGD with Nesterov momentum:

- ``plain``: ``loss = ce(model(x), y)``
- ``cpe``: ``TrainStep(model, cpe=ContrastivePatchLoss())(x, y).loss``
- ``snapmix``: ``TrainStep(model, mix=SnapMix(2))(x, y).loss``
- ``full``: ``TrainStep(model, mix=SnapMix(2), cpe=ContrastivePatchLoss())(x, y).loss``
- ``full_fast``: ``TrainStep(model, mix=SnapMix(2, cam_source="mixed"), cpe=...)``: SnapMix
  without the extra forward (label weights from the training forward's CAMs of the mixed batch)
- ``full_fast_collated``: the same step given a batch mixed beforehand (as by
  ``camkit.MixCollate`` in a DataLoader worker): ``step(xm, y, mixed_params=params)``; the
  host paste is not timed, as it runs in the workers
- ``full_hand``: the same step written by hand from the parts, as the README did before
  ``TrainStep`` existed (``cams = ext.forward_frozen(x, y).cams; xm, soft = mix(x, y, cams);
  out = ext(xm, soft.argmax(1)); loss = soft_ce(out.logits, soft) + cpe(out.features,
  out.cams)``): ``TrainStep`` must cost no more than this
- ``timm_cutmix`` (the peer): ``xm, soft = Mixup(mixup_alpha=0, cutmix_alpha=1.0, prob=1.0,
  num_classes=2)(x, y); loss = soft_ce(model(xm), soft)`` — timm mixes in place, so it gets a copy
  of the shared batch (one copy of the batch, < 1 ms here, included in its time).

each followed by ``zero_grad(set_to_none=True)``, ``backward()``, ``step()``. Three further entries
time parts of the SnapMix steps alone (no backward), to decompose their overhead:
``frozen_fwd`` (``ext.forward_frozen(x, y)``), ``nograd_fwd`` (``model(x)`` under ``no_grad``, the
cheapest possible extra forward) and ``snapmix_op`` (``mix(x, y, cams)`` with given CAMs).

The finiteness check of the step's images (``perf.py --only finite``) is timed on the plain
``TrainStep(model)``: ``checked`` (the default) against ``unchecked``
(``TrainStep(model, check_finite=False)``), and the check alone (``check_alone``:
``check_finite(x, "images")``, what the step adds).
"""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from camkit import CAMExtractor, ContrastivePatchLoss, MixCollate, SnapMix, TrainStep
from camkit._checks import check_finite

STEP_VARIANTS = (
    "plain",
    "cpe",
    "snapmix",
    "full",
    "full_fast",
    "full_fast_collated",
    "full_hand",
    "timm_cutmix",
)
PART_VARIANTS = ("frozen_fwd", "nograd_fwd", "snapmix_op")
FINITE_VARIANTS = ("unchecked", "checked", "check_alone")


class StepBench:
    """One model (train mode), one batch, one optimizer, and a callable per step variant."""

    def __init__(
        self,
        arch: str,
        size: int,
        batch: int,
        device: torch.device,
        *,
        num_classes: int = 2,
        seed: int = 0,
    ) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        self.model.to(device).train()
        self.ext = CAMExtractor(self.model)
        self.mix = SnapMix(num_classes)
        self.cpe = ContrastivePatchLoss(normalize=False, temperature=1.0)  # Eq. 1, as measured
        self.ce = nn.CrossEntropyLoss()
        self.soft_ce = SoftTargetCrossEntropy()
        self.steps = {
            "cpe": TrainStep(self.model, cpe=self.cpe),
            "snapmix": TrainStep(self.model, mix=self.mix),
            "full": TrainStep(self.model, mix=self.mix, cpe=self.cpe),
            "full_fast": TrainStep(
                self.model, mix=SnapMix(num_classes, cam_source="mixed"), cpe=self.cpe
            ),
            "checked": TrainStep(self.model),
            "unchecked": TrainStep(self.model, check_finite=False),
        }
        self.timm_mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, num_classes=num_classes)
        # small lr: the weights barely move over a benchmark's steps on random data
        self.opt = torch.optim.SGD(
            self.model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4
        )
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        self.y = (torch.arange(batch) % num_classes)[torch.randperm(batch, generator=gen)].to(
            device
        )
        # a batch mixed beforehand for `full_fast_collated` (what MixCollate hands the step)
        collate = MixCollate(SnapMix(num_classes, cam_source="mixed"))
        xm, ym, self.premixed_params = collate(list(zip(self.x.cpu(), self.y.cpu(), strict=True)))
        self.premixed = (xm.to(device), ym.to(device))
        # given CAMs for `snapmix_op`, at the model's feature resolution
        grid = self.ext.forward_frozen(self.x, self.y).cams.shape[-2:]
        self.cams = torch.randn(batch, *grid, generator=gen).to(device)

    def _update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    # -- the steps ------------------------------------------------------------------------------

    def plain(self) -> None:
        x, y = self.x, self.y
        loss = self.ce(self.model(x), y)
        self._update(loss)

    def cpe_step(self) -> None:
        self._update(self.steps["cpe"](self.x, self.y).loss)

    def snapmix(self) -> None:
        self._update(self.steps["snapmix"](self.x, self.y).loss)

    def full(self) -> None:
        self._update(self.steps["full"](self.x, self.y).loss)

    def full_fast(self) -> None:
        self._update(self.steps["full_fast"](self.x, self.y).loss)

    def full_fast_collated(self) -> None:
        xm, ym = self.premixed
        out = self.steps["full_fast"](xm, ym, mixed_params=self.premixed_params)
        self._update(out.loss)

    def full_hand(self) -> None:
        x, y = self.x, self.y
        cams = self.ext.forward_frozen(x, y).cams
        xm, soft = self.mix(x, y, cams)
        out = self.ext(xm, soft.argmax(1))
        loss = self.soft_ce(out.logits, soft) + self.cpe(out.features, out.cams)
        self._update(loss)

    def timm_cutmix(self) -> None:
        xm, soft = self.timm_mix(self.x.clone(), self.y)
        loss = self.soft_ce(self.model(xm), soft)
        self._update(loss)

    def checked(self) -> None:
        self._update(self.steps["checked"](self.x, self.y).loss)

    def unchecked(self) -> None:
        self._update(self.steps["unchecked"](self.x, self.y).loss)

    # -- parts ----------------------------------------------------------------------------------

    def check_alone(self) -> None:
        check_finite(self.x, "images")

    def frozen_fwd(self) -> None:
        self.ext.forward_frozen(self.x, self.y)

    def nograd_fwd(self) -> None:
        with torch.no_grad():
            self.model(self.x)

    def snapmix_op(self) -> None:
        self.mix(self.x, self.y, self.cams)

    def callables(self, names: tuple[str, ...]) -> dict[str, Callable[[], None]]:
        table = {
            "plain": self.plain,
            "cpe": self.cpe_step,
            "snapmix": self.snapmix,
            "full": self.full,
            "full_fast": self.full_fast,
            "full_fast_collated": self.full_fast_collated,
            "full_hand": self.full_hand,
            "timm_cutmix": self.timm_cutmix,
            "frozen_fwd": self.frozen_fwd,
            "nograd_fwd": self.nograd_fwd,
            "snapmix_op": self.snapmix_op,
            "checked": self.checked,
            "unchecked": self.unchecked,
            "check_alone": self.check_alone,
        }
        return {name: table[name] for name in names}
