"""camkit: class activation maps as training and inference tools for timm classifiers.

Four parts, usable alone or together:

- [`CAMExtractor`][camkit.CAMExtractor]: logits, feature map and CAMs of any timm classifier
  from one forward, with a choice of CAM method (`CAM_METHODS`);
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
    COVIDxCT,
    DigitsDataset,
    SARSCoV2CT,
    build_mnist_m,
    frame_like_mnist,
    load_digits_npz,
    mnist,
    mnist_m,
    usps,
)
from camkit.io import (
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    clean_stale_temps,
    load_checkpoint,
    merge_results,
)
from camkit.losses import ContrastivePatchLoss, contrastive_patch_loss
from camkit.metrics import classification_metrics, evaluate, format_table
from camkit.mix import SnapMix, SnapMixCollate, SnapMixParams, snapmix
from camkit.train import TrainStep, TrainStepOutput, soft_cross_entropy
from camkit.tta import CAMMaskingTTA, DeletionCurve, TTAResult, deletion_auc, deletion_curve
from camkit.viz import (
    cam_grid,
    deletion_figure,
    overlay_cams,
    save_figure,
    snapmix_figure,
    tta_figure,
)

if TYPE_CHECKING:  # imported on first use: `import camkit` does not import timm.task
    from camkit.timm_task import SnapMixTask

__all__ = [
    "CAM_METHODS",
    "COVIDCT",
    "IMAGE_EXTENSIONS",
    "CAMExtractor",
    "CAMMaskingTTA",
    "CAMOutput",
    "COVIDxCT",
    "ContrastivePatchLoss",
    "DeletionCurve",
    "DigitsDataset",
    "SARSCoV2CT",
    "SnapMix",
    "SnapMixCollate",
    "SnapMixParams",
    "SnapMixTask",
    "TTAResult",
    "TrainStep",
    "TrainStepOutput",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_mnist_m",
    "cam_grid",
    "cell_sums",
    "classification_metrics",
    "clean_stale_temps",
    "contrastive_patch_loss",
    "deletion_auc",
    "deletion_curve",
    "deletion_figure",
    "evaluate",
    "format_table",
    "frame_like_mnist",
    "frozen_state",
    "load_checkpoint",
    "load_digits_npz",
    "merge_results",
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
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name == "SnapMixTask":
        from camkit.timm_task import SnapMixTask

        return SnapMixTask
    raise AttributeError(f"module 'camkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
