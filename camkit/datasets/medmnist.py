"""MedMNIST (Yang et al., 2023): the official ``.npz`` files, one split at a time, checked.

MedMNIST ships each data set as one ``.npz`` archive with the keys ``train_images``,
``train_labels``, ``val_images``, ``val_labels``, ``test_images`` and ``test_labels``: ``uint8``
images of shape ``(N, S, S)`` (2-D, grey), ``(N, S, S, 3)`` (2-D, colour) or ``(N, S, S, S)``
(3-D), and integer labels of shape ``(N, 1)``. The files are not downloaded by camkit: get them
from the MedMNIST release (for example with the ``medmnist`` package, whose ``download=True``
stores them as ``~/.medmnist/<name>.npz``, e.g. ``adrenalmnist3d_64.npz``) and pass the path.
`MEDMNIST_MD5` holds the official checksums of the files camkit's examples use.

The 3-D sets used here (AdrenalMNIST3D, VesselMNIST3D) are **shape masks**, not intensities:
their voxels are 0 or 255 (background or organ / vessel), segmented from abdominal CT and brain
MRA. A model trained on them learns shapes; it has never seen a CT intensity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from camkit._checks import check_choice
from camkit.datasets._io import PathLike, as_path, require_file

__all__ = ["MEDMNIST_MD5", "MedMNIST", "medmnist"]

MEDMNIST_MD5: dict[str, str] = {
    "adrenalmnist3d.npz": "bbd3c5a5576322bc4cdfea780653b1ce",
    "adrenalmnist3d_64.npz": "17721accfe9fb005146a47d33bc54b2f",
    "vesselmnist3d.npz": "b41fd4f7e7e2feedddb201585ecafa1b",
    "pneumoniamnist.npz": "28209eda62fecd6e6a2d98b1501bb15f",
}
"""The official MD5 of each MedMNIST file camkit's examples read, by file name (as published with
MedMNIST v2/v3). Add your own with ``MedMNIST(path, check_md5="<md5>")``."""

_SPLITS = ("train", "val", "test")
_KEYS = tuple(f"{split}_{part}" for split in _SPLITS for part in ("images", "labels"))


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_md5(name: str, check_md5: bool | str) -> str | None:
    """The MD5 the file must have (``None``: not checked); ``check_md5`` checked first."""
    if check_md5 is False:
        return None
    if check_md5 is True:
        if name not in MEDMNIST_MD5:
            raise ValueError(
                f"check_md5: no official MD5 is known for a file named {name!r} "
                f"(known: {', '.join(sorted(MEDMNIST_MD5))}); pass the MD5 as a string"
            )
        return MEDMNIST_MD5[name]
    if isinstance(check_md5, str) and len(check_md5) == 32:
        try:
            int(check_md5, 16)
        except ValueError:
            pass
        else:
            return check_md5.lower()
    raise ValueError(
        f"check_md5: expected False, True or a 32-digit hexadecimal MD5, got {check_md5!r}"
    )


def _read_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's images and labels, after checking the archive's keys, dtypes and shapes."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(
            f"{path}: could not be read as a .npz archive ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: expected a .npz archive of named arrays, got a single array")
    with archive:
        found = ", ".join(sorted(archive.files)) or "none"
        for key in _KEYS:
            if key not in archive.files:
                raise ValueError(
                    f"{path}: expected the MedMNIST keys {', '.join(_KEYS)}; missing key "
                    f"{key!r} (found: {found})"
                )
        try:
            x, y = archive[f"{split}_images"], archive[f"{split}_labels"]
        except Exception as err:
            raise ValueError(
                f"{path}: could not read the {split!r} arrays ({type(err).__name__}: {err})"
            ) from err
    xk, yk = f"{split}_images", f"{split}_labels"
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: key {xk!r}: expected dtype uint8, got {x.dtype}")
    s = x.shape[1] if x.ndim >= 2 else None
    if x.shape[1:] not in ((s, s), (s, s, 3), (s, s, s)):
        raise ValueError(
            f"{path}: key {xk!r}: expected shape (N, S, S), (N, S, S, 3) or (N, S, S, S) "
            f"(square images or cubic volumes), got {x.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path}: key {yk!r}: expected an integer dtype, got {y.dtype}")
    if y.shape != (x.shape[0], 1):
        raise ValueError(
            f"{path}: key {yk!r}: expected shape ({x.shape[0]}, 1) (one class per image of "
            f"{xk!r}; multi-label sets are not supported), got {y.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{path}: key {xk!r}: expected at least one image, got {x.shape}")
    if y.min() < 0:
        raise ValueError(f"{path}: key {yk!r}: expected labels >= 0, got {int(y.min())}")
    return x, y


class MedMNIST(Dataset[tuple[Any, int]]):
    """One split of an official MedMNIST ``.npz`` file, held in memory.

    ``dataset[i]`` is ``(image, label)``: ``image`` a ``float32`` tensor holding ``voxel / 255``
    with a channel axis, ``(1, D, H, W)`` for a 3-D set, ``(1, H, W)`` (``(3, H, W)`` for colour)
    for a 2-D set, passed through ``transform`` if given; ``label`` an int. The images stay
    ``uint8`` in memory (the 64³ AdrenalMNIST3D training split takes 0.3 GB so, 1.2 GB as
    ``float32``) and are converted one at a time; [`tensors`][camkit.MedMNIST.tensors] converts
    a whole split.

    The 3-D sets AdrenalMNIST3D and VesselMNIST3D are binary shape masks (voxels 0 or 255), not
    CT or MRA intensities: say so wherever results on them are shown.

    Args:
        path: an official MedMNIST ``.npz`` file (keys ``train_images``, ``train_labels``,
            ``val_images``, ``val_labels``, ``test_images``, ``test_labels``). camkit downloads
            nothing: get the files from the MedMNIST release, e.g. with the ``medmnist``
            package's ``download=True``, which stores them as ``~/.medmnist/<name>.npz``.
        split: ``"train"``, ``"val"`` or ``"test"`` (MedMNIST's official splits).
        transform: called on each ``float32`` image tensor.
        check_md5: ``False`` (default), ``True`` to compare the file with its official MD5 in
            `MEDMNIST_MD5` (found by file name), or the expected MD5 as a string.

    Attributes:
        images: ``uint8`` tensor ``(N, C, *spatial)``, the stored images with a channel axis.
        labels: ``int64`` tensor ``(N,)``.
        targets: the labels as a list of ints.
        spatial_dims: 2 or 3.
        path: the file read.
        split: the split read.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown ``split``; the file is not a ``.npz`` archive, lacks a MedMNIST key,
            or holds images that are not ``uint8`` squares / cubes or labels that are not integer
            ``(N, 1)`` arrays of non-negative classes (the message names the file and the key,
            what was expected and what was found); the MD5 differs.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from camkit import MedMNIST
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny3d.npz"
        >>> vol = np.zeros((2, 4, 4, 4), np.uint8)
        >>> vol[1, 1:3, 1:3, 1:3] = 255
        >>> lab = np.array([[0], [1]], np.uint8)
        >>> np.savez(path, train_images=vol, train_labels=lab, val_images=vol,
        ...          val_labels=lab, test_images=vol, test_labels=lab)
        >>> train = MedMNIST(path, "train")
        >>> x, y = train[1]
        >>> train.spatial_dims, tuple(x.shape), x.dtype, float(x.max()), y
        (3, (1, 4, 4, 4), torch.float32, 1.0, 1)
    """

    def __init__(
        self,
        path: PathLike,
        split: str = "train",
        *,
        transform: Callable[[torch.Tensor], Any] | None = None,
        check_md5: bool | str = False,
    ) -> None:
        p = as_path(path, "path")
        check_choice(split, "split", _SPLITS)
        want = _expected_md5(p.name, check_md5)
        require_file(p, "path", "a MedMNIST .npz file")
        if want is not None and (got := _md5(p)) != want:
            raise ValueError(
                f"{p}: expected MD5 {want}, got {got} (the file differs from the official one)"
            )
        x, y = _read_split(p, split)
        images = torch.from_numpy(x)
        if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1:] != (3, 3, 3):
            self.images, self.spatial_dims = images.permute(0, 3, 1, 2).contiguous(), 2
        else:
            self.images, self.spatial_dims = images.unsqueeze(1), x.ndim - 1
        self.labels = torch.from_numpy(y[:, 0].astype(np.int64))
        self.targets: list[int] = self.labels.tolist()
        self.transform = transform
        self.path, self.split = p, split

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        x: Any = self.images[index].to(torch.float32).div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split: ``float32`` images ``(N, C, *spatial)`` in ``[0, 1]`` and ``int64``
        labels ``(N,)`` (no ``transform``)."""
        return self.images.to(torch.float32).div_(255.0), self.labels.clone()

    def __repr__(self) -> str:
        shape = tuple(self.images.shape[1:])
        return f"MedMNIST({self.path.name}, {self.split!r}: {len(self)} images of shape {shape})"


def medmnist(
    path: PathLike, split: str = "train", *, check_md5: bool | str = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of an official MedMNIST ``.npz`` file as two tensors.

    The same checks as [`MedMNIST`][camkit.MedMNIST] (this is ``MedMNIST(path, split).tensors()``).
    The 3-D sets are binary shape masks (0 or 1 after scaling), not CT intensities.

    Args:
        path: the ``.npz`` file.
        split: ``"train"``, ``"val"`` or ``"test"``.
        check_md5: as in [`MedMNIST`][camkit.MedMNIST].

    Returns:
        ``(images, labels)``: ``float32`` images in ``[0, 1]`` of shape ``(N, 1, D, H, W)``
        (3-D), ``(N, 1, H, W)`` (2-D grey) or ``(N, 3, H, W)`` (2-D colour), and ``int64``
        labels ``(N,)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: see [`MedMNIST`][camkit.MedMNIST].

    Examples:
        Not run here (it reads the staged data): AdrenalMNIST3D at 64³, 1,188 training volumes.

        ```python
        images, labels = medmnist(data_root / "MedMNIST" / "adrenalmnist3d_64.npz", "train")
        images.shape, labels.bincount().tolist()  # (1188, 1, 64, 64, 64), [929, 259]
        ```
    """
    return MedMNIST(path, split, check_md5=check_md5).tensors()
