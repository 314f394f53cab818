"""camkit: class activation maps as training and inference tools for timm classifiers.

Four parts, usable alone or together:

- :class:`CAMExtractor` — logits, feature map and CAMs of any timm classifier from one forward;
- :class:`SnapMix` — CAM-weighted CutMix with soft labels, batched on the device;
- :class:`ContrastivePatchLoss` — the contrastive patch embedding loss (Eq. 1);
- :class:`CAMMaskingTTA` — CAM-directed masking test-time augmentation with voting;

and :class:`TrainStep`, the training step that combines the first three (``DDP`` and
``torch.compile`` wrap it like a model).
"""

from camkit.cam import (
    CAMExtractor,
    CAMOutput,
    cell_sums,
    frozen_state,
    normalize_cams,
    upsample_cams,
)
from camkit.losses import ContrastivePatchLoss, contrastive_patch_loss
from camkit.snapmix import SnapMix, snapmix
from camkit.train import TrainStep, TrainStepOutput, soft_cross_entropy
from camkit.tta import CAMMaskingTTA, DeletionCurve, TTAResult, deletion_auc, deletion_curve

__all__ = [
    "CAMExtractor",
    "CAMMaskingTTA",
    "CAMOutput",
    "ContrastivePatchLoss",
    "DeletionCurve",
    "SnapMix",
    "TTAResult",
    "TrainStep",
    "TrainStepOutput",
    "cell_sums",
    "contrastive_patch_loss",
    "deletion_auc",
    "deletion_curve",
    "frozen_state",
    "normalize_cams",
    "snapmix",
    "soft_cross_entropy",
    "upsample_cams",
]
__version__ = "0.1.0"
