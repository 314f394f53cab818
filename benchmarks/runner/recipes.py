"""One config for a run (`Recipe`: everything that changes a number) and each dataset's default.

The defaults are the protocols the published tables were measured with:

- CT sites (``site-B``, ``site-A``, ``covidx``): the released code's recipe — SGD, Nesterov
  momentum 0.9, weight decay 1e-4, lr 1e-2 for new layers (0.1× for pretrained ones), ×0.1 after
  40 %, 75 % and 90 % of the epochs, batch 64; train images resized to ``round(S·256/224)`` and
  randomly cropped to ``S`` with horizontal and vertical flips; the epoch chosen on the validation
  split; every epoch's randomness reseeded from ``(seed, epoch)`` (``seeding="epoch"``), so a
  resumed run is the same run;
- ``digits``: resnet10t with output stride 16 at 32², 10,000 MNIST digits, 5 epochs, batch 128,
  SGD (Nesterov, weight decay 5e-4) with a one-cycle schedule to lr 0.1, a light random affine,
  MNIST mean/std, the last epoch reported, one random stream per run (``seeding="stream"``,
  resumed from the saved random states);
- ``adrenal3d``: AdrenalMNIST3D's 28³ volumes (shape masks, not CT intensities;
  `benchmarks.runner.volumes`) from scratch, the CT sites' SGD and step schedule, batch 32, random
  flips along the three axes, inputs ``voxel / 255`` (0 or 1), lr 0.03, 6 epochs, the epoch
  chosen on validation. The comment above `ADRENAL3D_NET` says which network and why, and how
  the lr and the epochs were chosen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Recipe:
    """How a model is trained and evaluated; every field is recorded with each result row."""

    model: str = "resnet18"
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    pretrained: str | None = None  # None, "timm" (timm's hub weights) or a weights file
    img_size: int = 224
    epochs: int = 200
    batch_size: int = 64
    eval_batch_size: int | None = None  # default: batch_size
    lr: float = 1e-2
    pretrained_lr_scale: float = 0.1  # the pretrained layers' lr, relative to lr
    weight_decay: float = 1e-4
    schedule: Literal["step", "onecycle"] = "step"
    selection: Literal["val", "last"] = "val"
    seeding: Literal["epoch", "stream"] = "epoch"
    drop_last: bool = False  # drop the last short batch (else only a batch of one is dropped)
    head_init: Literal["timm", "zero"] = "timm"  # the new classifier's initial weights
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    train_subset: int | None = None  # first N training images per class
    test_subset: int | None = None  # first N validation and test images per class
    train_digits: int = 10_000
    val_digits: int = 5_000
    cpe_patches: int = 2
    tta_k: int = 31
    tta_theta: float = 0.2
    tta_relative_theta: float = 0.5
    tta_rule: str = "threshold"  # the rule of the "+tta" rows
    tta_images: int | None = None  # vote-rule study: the first N images of each split
    deletion_images: int = 0  # deletion AUC of the CAM on the first N images of the first test
    # how a dataset without an official split is split: "SCHEME:FOLDS" (site-A:
    # "patient-blocks:5" or "leaky-random:5", the fold is the seed mod FOLDS); None where the
    # dataset has one split, and then it is left out of the settings (rows measured before the
    # field existed keep their settings)
    split: str | None = None

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict[str, Any]:
        """The fields as JSON values (tuples as lists), for the result rows."""
        out = dataclasses.asdict(self)
        out["model_kwargs"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.model_kwargs
        }
        if out["split"] is None:
            del out["split"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


CT = Recipe()
RECIPES: dict[str, Recipe] = {
    "site-B": CT.replace(model="resnet18", img_size=112, epochs=20),
    "site-A": CT.replace(model="resnet18", img_size=112, epochs=20, split="patient-blocks:5"),
    "covidx": CT.replace(model="resnet18", img_size=112, epochs=20),
    "digits": Recipe(
        model="resnet10t",
        model_kwargs=(("output_stride", 16),),
        img_size=32,
        epochs=5,
        batch_size=128,
        eval_batch_size=500,
        lr=0.1,
        weight_decay=5e-4,
        schedule="onecycle",
        selection="last",
        seeding="stream",
        drop_last=True,
        mean=(0.1307,) * 3,
        std=(0.3081,) * 3,
        tta_images=1000,
        deletion_images=256,
    ),
}


# A shallow MONAI 3-D ResNet (monai.networks.nets.ResNet through camkit's MONAI adapter): one
# basic block per stage, 16-32-64-128 channels, a stride-2 first convolution and no max-pool, so
# 28³ → 14³ → 7³ → 4³ → a 2³ final feature map: 2 cells a side, the least a CAM needs, and 8 cells
# for the CPE's 2 + 2 patches. Chosen on the time of one training epoch (1,188 volumes, batch 32,
# plain TrainStep, nice, torch's 2 threads) on this 2-core machine while other jobs shared it:
# MONAI's 3-D DenseNet121 on the 64³ file (also a 2³ map) ~3,460 s (128 volumes timed, load
# average 4.5-5); this network with a stride-1 first convolution (a 4³ map) 159 s (load 4.5-5), and
# side by side with the chosen one (128 volumes each, twice, load 7.4-8.1) 234-380 s against
# 65-90 s (8-16-32-64 channels: no faster at stride 1, 304-531 s). Only the stride-2 network lets
# 4 methods × 3 seeds finish in about 30-45 CPU minutes.
# The lr and the epochs, chosen on the baseline's validation accuracy (seed 0, the official val
# split of 98 volumes: one volume is 1.02 points; test never read), best val acc (its epoch):
#   lr 0.03, 12 epochs: 90.82 (6), 493 s | lr 0.1, 12 epochs: 90.82 (6), 592 s
#   lr 0.03,  6 epochs: 88.78 (5), 184 s | lr 0.1,  6 epochs: 86.73 (6), 190 s
# (train seconds at load average 4.8-8). Validation peaks right after the first lr decay; lr 0.03
# is as good as 0.1 at 12 epochs and better at 6. 6 epochs: 2 volumes below 12 at half the time,
# the most the 30-45 minutes allow; the 6-epoch baseline trains 30.6 s an epoch at load 4.9-5.0.
ADRENAL3D_NET = (
    ("block", "basic"),
    ("layers", (1, 1, 1, 1)),
    ("block_inplanes", (16, 32, 64, 128)),
    ("spatial_dims", 3),
    ("n_input_channels", 1),
    ("conv1_t_size", 3),
    ("conv1_t_stride", 2),
    ("no_max_pool", True),
)
RECIPES["adrenal3d"] = Recipe(
    model="monai:ResNet",
    model_kwargs=ADRENAL3D_NET,
    img_size=28,
    epochs=6,
    batch_size=32,
    lr=0.03,
    mean=(0.0,),
    std=(1.0,),
)
RECIPES["folder"] = RECIPES["site-B"]  # a user's folder (--dataset folder:PATH): the CT recipe


def recipe_for(dataset: str) -> Recipe:
    """The default recipe of a dataset name (``folder:PATH`` names take ``RECIPES["folder"]``)."""
    return RECIPES["folder" if dataset.startswith("folder:") else dataset]


@dataclass(frozen=True)
class RunConfig:
    """One run: a dataset, a method and a seed under a recipe, written to ``out``."""

    dataset: str
    method: str
    seed: int
    recipe: Recipe
    out: Any  # pathlib.Path of the run folder (checkpoints, caches, figures)
    options: dict[str, Any] = field(default_factory=dict)  # data paths: not part of the results
