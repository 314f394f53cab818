"""camkit: class activation maps as training and inference tools for timm classifiers.

Four parts, usable alone or together:

- [`CAMExtractor`][camkit.CAMExtractor]: logits, feature map and CAMs of any timm classifier
  from one forward, with a choice of CAM method (`CAM_METHODS`); torchvision, MONAI and
  Hugging Face classifiers, and any other by its split, through
  [`as_classifier`][camkit.as_classifier] (`camkit.models`);
- [`SnapMix`][camkit.SnapMix]: CAM-weighted CutMix with soft labels, batched on the device;
- [`ContrastivePatchLoss`][camkit.ContrastivePatchLoss]: the contrastive patch embedding loss;
- [`CAMMaskingTTA`][camkit.CAMMaskingTTA]: CAM-directed masking test-time augmentation;

and [`TrainStep`][camkit.TrainStep], the training step that combines the first three (`DDP` and
`torch.compile` wrap it like a model). Around them: metrics, pictures (`overlay_cams` and the
figure builders), atomic result and checkpoint files, the datasets of the paper, and
`SnapMixTask` for timm's `train.py`.

The public API is this module's `__all__`; the sub-packages (`camkit.cam`, `camkit.mix`,
`camkit.tta`, `camkit.datasets`, ...) re-export the same names, and everything else in them is
private.
"""

from typing import TYPE_CHECKING

from camkit.cam import (
    CAM_METHODS,
    CAMExtractor,
    CAMOutput,
    cell_sums,
    frozen_state,
    normalize_cams,
    upsample_cams,
)
from camkit.datasets import (
    COVIDCT,
    IMAGE_EXTENSIONS,
    MEDMNIST_MD5,
    COVIDxCT,
    DigitsDataset,
    MedMNIST,
    SARSCoV2CT,
    SplitImageFolder,
    build_mnist_m,
    frame_like_mnist,
    load_digits_npz,
    medmnist,
    mnist,
    mnist_m,
    usps,
)
from camkit.losses import ContrastivePatchLoss, contrastive_patch_loss
from camkit.metrics import classification_metrics, evaluate
from camkit.mix import (
    AttentiveCutMix,
    CellMixParams,
    CutMix,
    CutMixParams,
    Mix,
    MixCollate,
    Mixup,
    MixupParams,
    SnapMix,
    SnapMixCollate,
    SnapMixParams,
    snapmix,
)
from camkit.models import ClassifierAdapter, SplitClassifier, as_classifier
from camkit.pretrained import efficientnet_pytorch_to_timm
from camkit.train import TrainStep, TrainStepOutput, soft_cross_entropy
from camkit.tta import CAMMaskingTTA, DeletionCurve, TTAResult, deletion_auc, deletion_curve
from camkit.viz import (
    cam_grid,
    deletion_figure,
    overlay_cams,
    save_figure,
    snapmix_figure,
    tta_figure,
    volume_figure,
)

if TYPE_CHECKING:  # imported on first use: `import camkit` does not import timm.task
    from camkit.timm_task import SnapMixTask, TrainStepTask

__all__ = [
    "CAM_METHODS",
    "COVIDCT",
    "IMAGE_EXTENSIONS",
    "MEDMNIST_MD5",
    "AttentiveCutMix",
    "CAMExtractor",
    "CAMMaskingTTA",
    "CAMOutput",
    "COVIDxCT",
    "CellMixParams",
    "ClassifierAdapter",
    "ContrastivePatchLoss",
    "CutMix",
    "CutMixParams",
    "DeletionCurve",
    "DigitsDataset",
    "MedMNIST",
    "Mix",
    "MixCollate",
    "Mixup",
    "MixupParams",
    "SARSCoV2CT",
    "SnapMix",
    "SnapMixCollate",
    "SnapMixParams",
    "SnapMixTask",
    "SplitClassifier",
    "SplitImageFolder",
    "TTAResult",
    "TrainStep",
    "TrainStepOutput",
    "TrainStepTask",
    "as_classifier",
    "build_mnist_m",
    "cam_grid",
    "cell_sums",
    "classification_metrics",
    "contrastive_patch_loss",
    "deletion_auc",
    "deletion_curve",
    "deletion_figure",
    "efficientnet_pytorch_to_timm",
    "evaluate",
    "frame_like_mnist",
    "frozen_state",
    "load_digits_npz",
    "medmnist",
    "mnist",
    "mnist_m",
    "normalize_cams",
    "overlay_cams",
    "save_figure",
    "snapmix",
    "snapmix_figure",
    "soft_cross_entropy",
    "tta_figure",
    "upsample_cams",
    "usps",
    "volume_figure",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name in ("SnapMixTask", "TrainStepTask"):
        from camkit import timm_task

        return getattr(timm_task, name)
    raise AttributeError(f"module 'camkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
