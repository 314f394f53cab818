"""Batch mixes behind one protocol ([`Mix`][camkit.Mix]): SnapMix, CutMix, Mixup, Attentive CutMix.

A mix says which CAMs it needs (``needs_cams``: none, the un-mixed batch's, or the mixed
batch's), draws its parameters (``sample``, given the CAMs when its draws depend on them),
applies them (``apply``) and weighs the labels (``targets``); [`TrainStep`][camkit.TrainStep] and
[`MixCollate`][camkit.MixCollate] call nothing else, so every mix trains through the same step:

| mix | needs_cams | draws from the CAMs | label weights |
| --- | --- | --- | --- |
| [`SnapMix`][camkit.SnapMix] | ``"unmixed"`` | no | CAM mass of each box |
| ``SnapMix(cam_source="mixed")`` | ``"mixed"`` | no | CAM mass in the mixed image |
| [`CutMix`][camkit.CutMix] | ``"none"`` | no | box area (timm's ``Mixup(cutmix_alpha=…)``) |
| [`Mixup`][camkit.Mixup] | ``"none"`` | no | blend weight (timm's ``Mixup(mixup_alpha=…)``) |
| [`AttentiveCutMix`][camkit.AttentiveCutMix] | ``"unmixed"`` | yes: top cells | area |

SnapMix (Huang et al., AAAI 2021), in detail:

Each image ``a`` receives, in a box A, the content of a box B of its partner ``b`` (a random
permutation of the batch), resized bilinearly (``align_corners=True``, as the SnapMix authors'
code). Its soft target is:

    y = ρ_a · onehot(y_a) + ρ_b · onehot(y_b),
    ρ_a = 1 − Σ_{box A} S_a,    ρ_b = Σ_{box B} S_b,

with ``S`` the class activation map of each un-mixed image for its own label, upsampled to the
image size and normalised to a spatial distribution
([`normalize_cams`][camkit.normalize_cams], ``"distribution"``; a constant map, which has none,
gives the authors' fallback ``ρ_a = 1 − |A|/HW``, ``ρ_b = |A|/HW``). ``ρ_a + ρ_b`` need not be 1.
The loss ``ρ_a·CE(y_a) + ρ_b·CE(y_b)`` is timm's ``SoftTargetCrossEntropy`` on these targets.

As in kornia's augmentations, the random draws are separate from their application:
[`SnapMix.sample`][camkit.Mix.sample] draws a [`SnapMixParams`][camkit.SnapMixParams] with
the module's settings and generator, and [`SnapMix`][camkit.SnapMix] (or the function
[`snapmix`][camkit.snapmix]) applies given draws exactly, as pure tensor code without per-sample
Python loops or host synchronisation. Batch-mode draws are made on the host and record the shared
box as host ints, so the paste is a slice write into one copy of the batch; the label weights are
computed at the CAMs' resolution, never on maps upsampled to the image size.

``SnapMix(cam_source="mixed")`` needs no extra forward: both weights are read over box A from
the CAMs of the mixed image in the training forward ([`TrainStep`][camkit.TrainStep] does this),
and the paste can then run in the DataLoader's workers ([`MixCollate`][camkit.MixCollate]).
"""

from camkit.mix._attentive import AttentiveCutMix, CellMixParams
from camkit.mix._base import Mix
from camkit.mix._collate import MixCollate, SnapMixCollate
from camkit.mix._cutmix import CutMix, CutMixParams, Mixup, MixupParams
from camkit.mix._snapmix import SnapMix, SnapMixParams, snapmix

__all__ = [
    "AttentiveCutMix",
    "CellMixParams",
    "CutMix",
    "CutMixParams",
    "Mix",
    "MixCollate",
    "Mixup",
    "MixupParams",
    "SnapMix",
    "SnapMixCollate",
    "SnapMixParams",
    "snapmix",
]
