"""The runner's methods, chosen by name: which mix and which CPE the training step gets.

Each method is a `Method`: a mix (a name in `MIXES`, built for the dataset's class count with the
run's generator) and a CPE form (a name in `CPE_FORMS`), and whether its rows are evaluated with
the CAM-masking TTA. Methods that train the same way share one trained model (``training``), so
``full`` (SnapMix + Eq. 1, evaluated with the TTA) reuses ``snapmix_cpe``'s run. Adding a method
is one line in `METHODS`; adding a mix, a camkit ``Mix`` and one line in `MIXES`.

The peers a user compares with are timm's ``Mixup`` and CutMix, run as camkit's `CutMix` and
`Mixup` (equal to timm's on the same draws, ``tests/test_mix.py``) through the same step, α = 1
as in timm's ``Mixup`` defaults and the CutMix paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from camkit import (
    AttentiveCutMix,
    ContrastivePatchLoss,
    CutMix,
    Mix,
    Mixup,
    SnapMix,
    TrainStep,
)

MIXES: dict[str, Callable[[int, torch.Generator], Mix]] = {
    "snapmix": lambda k, gen: SnapMix(k, generator=gen),
    "snapmix_mixed": lambda k, gen: SnapMix(k, generator=gen, cam_source="mixed"),
    "cutmix": lambda k, gen: CutMix(k, generator=gen),
    "mixup": lambda k, gen: Mixup(k, generator=gen),
    "attentive_cutmix": lambda k, gen: AttentiveCutMix(k, generator=gen),
}

# (normalize, temperature, weight λ)
CPE_FORMS: dict[str, tuple[bool, float, float]] = {
    "paper": (False, 1.0, 1.0),  # the paper's Eq. 1
    "norm": (True, 0.1, 1.0),  # camkit's default form: L2-normalised cells, τ = 0.1
    "norm_w01": (True, 0.1, 0.1),
}


@dataclass(frozen=True)
class Method:
    """A method: its mix and CPE form by name, the training it shares, its TTA rows."""

    mix: str | None = None
    cpe: str | None = None
    tta: bool = False  # evaluate with the CAM-masking TTA (its rows are "<name>")
    training: str | None = None  # the method whose trained model this one reuses

    def settings(self) -> dict:
        form = CPE_FORMS[self.cpe] if self.cpe else None
        return {
            "mix": self.mix,
            "cpe_form": self.cpe,
            "cpe_normalize": form[0] if form else None,
            "cpe_temperature": form[1] if form else None,
            "cpe_weight": form[2] if form else None,
        }


METHODS: dict[str, Method] = {
    "baseline": Method(),
    "cutmix": Method(mix="cutmix"),
    "mixup": Method(mix="mixup"),
    "snapmix": Method(mix="snapmix"),
    "snapmix_fast": Method(mix="snapmix_mixed"),
    "attentive_cutmix": Method(mix="attentive_cutmix"),
    "cpe": Method(cpe="paper"),
    "cpe_norm": Method(cpe="norm"),
    "cpe_norm_w01": Method(cpe="norm_w01"),
    "snapmix_cpe": Method(mix="snapmix", cpe="paper"),
    "snapmix_cpe_norm": Method(mix="snapmix", cpe="norm"),
    "snapmix_cpe_norm_w01": Method(mix="snapmix", cpe="norm_w01"),
    "full": Method(mix="snapmix", cpe="paper", tta=True, training="snapmix_cpe"),
    "full_norm": Method(mix="snapmix", cpe="norm", tta=True, training="snapmix_cpe_norm"),
    "full_norm_w01": Method(
        mix="snapmix", cpe="norm_w01", tta=True, training="snapmix_cpe_norm_w01"
    ),
}


def training_name(name: str) -> str:
    """The method whose trained model ``name`` uses (itself, or the one it reuses)."""
    return METHODS[name].training or name


def build_step(
    name: str, model: torch.nn.Module, num_classes: int, generator: torch.Generator, recipe
) -> TrainStep:
    """The training step of method ``name``."""
    method = METHODS[name]
    mix = MIXES[method.mix](num_classes, generator) if method.mix else None
    cpe, weight = None, 1.0
    if method.cpe:
        normalize, temperature, weight = CPE_FORMS[method.cpe]
        cpe = ContrastivePatchLoss(recipe.cpe_patches, normalize=normalize, temperature=temperature)
    return TrainStep(model, mix=mix, cpe=cpe, cpe_weight=weight)
