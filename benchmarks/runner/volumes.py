"""The runner's volume datasets: MedMNIST's 3-D files, resident in memory as ``uint8`` volumes.

``adrenal3d`` is AdrenalMNIST3D (``camkit.datasets.MedMNIST``, its official train/val/test split,
the file's MD5 checked): 1,188 / 98 / 298 volumes of adrenal glands segmented from abdominal CT,
normal (0) or mass (1). The volumes are **shape masks** (voxels 0 or 255), not CT intensities: a
model trained on them learns shapes. ``--img-size`` picks the file: 28 (``adrenalmnist3d.npz``)
or 64 (``adrenalmnist3d_64.npz``).

A batch ``(B, 1, S, S, S)`` becomes the model input by ``voxel / 255`` normalised with the
recipe's one-channel mean and std. The training augmentation is a random flip along each of the
three axes (each with probability 1/2, drawn per volume from torch's generator): a mass stays a
mass in a mirrored gland, and the training split is small. Nothing image-specific (crops, colour,
the decoded-image cache) applies; the masked cells of the TTA would be filled with the background
value.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.runner.data import Data, data_folder, first_n_per_class
from benchmarks.runner.models import spatial_dims

ADRENAL_FILES = {28: "adrenalmnist3d.npz", 64: "adrenalmnist3d_64.npz"}


def flip_volumes(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, C, D, H, W)`` with each volume flipped along each spatial axis with probability
    1/2 (three draws per volume from torch's generator, in the order D, H, W)."""
    if x.ndim != 5:
        raise ValueError(f"x: expected a batch of volumes (B, C, D, H, W), got shape {x.shape}")
    draws = torch.rand(x.shape[0], 3, device=x.device) < 0.5
    for axis in range(3):
        flip = draws[:, axis].view(-1, 1, 1, 1, 1)
        x = torch.where(flip, x.flip(2 + axis), x)
    return x


def load_adrenal3d(recipe, options, cache_dir: Path, device, log) -> Data:
    """AdrenalMNIST3D at ``recipe.img_size`` (28 or 64) from ``MedMNIST/`` under the data root
    (or ``--data`` FOLDER holding the files); see the module doc."""
    from camkit.datasets import MedMNIST

    if spatial_dims(recipe) != 3:
        raise ValueError(
            f"--model {recipe.model}: adrenal3d holds volumes; it needs a 3-D network, "
            "monai:<Net> with spatial_dims 3 (the recipe's)"
        )
    if recipe.img_size not in ADRENAL_FILES:
        raise ValueError(
            f"--img-size: AdrenalMNIST3D comes at {' or '.join(map(str, ADRENAL_FILES))} "
            f"voxels a side, got {recipe.img_size}"
        )
    if len(recipe.mean) != 1 or len(recipe.std) != 1:
        raise ValueError(
            f"mean, std: the volumes have one channel, got mean {recipe.mean}, std {recipe.std}"
        )
    path = data_folder(options.get("data"), "MedMNIST", "--data") / ADRENAL_FILES[recipe.img_size]
    log(f"adrenal3d: {path} (shape masks, not CT intensities)")
    splits = {}
    for split in ("train", "val", "test"):
        ds = MedMNIST(path, split, check_md5=True)
        n = recipe.train_subset if split == "train" else recipe.test_subset
        keep = first_n_per_class(ds.targets, n)
        splits[split] = (ds.images[keep].to(device), ds.labels[keep].to(device))
    mean, std = recipe.mean[0], recipe.std[0]

    def to_input(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - mean) / std

    return Data(
        train=splits["train"],
        val=splits["val"],
        tests={"adrenal3d": splits["test"]},
        num_classes=2,
        class_names=("normal", "mass"),
        positive=1,
        to_input=to_input,
        augment=lambda x: flip_volumes(to_input(x)),
        mask_value=(0.0 - mean) / std,  # the background
        info={"root": str(path)},
    )
