"""The SARS-CoV-2 CT-scan dataset ("site A"), split so that patients stay on one side."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from camkit._checks import check_choice, check_int
from camkit.datasets._io import IMAGE_EXTENSIONS, PathLike, check_seed, image_files
from camkit.datasets.covid import _ImageFolderDataset

__all__ = ["SARSCoV2CT"]

SplitScheme = Literal["patient-blocks", "leaky-random"]
_SCHEMES = ("patient-blocks", "leaky-random")
# the class folders, by label; the first name found is used (the Kaggle release spells
# non-COVID with a hyphen, some mirrors without)
_FOLDERS = (("non-COVID", "NonCOVID", "non_COVID"), ("COVID",))


def _natural_key(name: str) -> tuple:
    """``"Covid (2).png"`` before ``"Covid (10).png"``: digit runs compare as numbers."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name))


def _units(folder: Path, names: list[str]) -> list[list[str]]:
    """``names`` in numeric order, byte-identical files merged into one unit (first place)."""
    units: dict[str, list[str]] = {}
    for name in sorted(names, key=_natural_key):
        digest = hashlib.blake2b((folder / name).read_bytes(), digest_size=16).hexdigest()
        units.setdefault(digest, []).append(name)
    return list(units.values())


def _blocks(units: list[list[str]], folds: int) -> list[list[str]]:
    """``units`` cut into ``folds`` contiguous blocks of nearly equal image counts.

    Block ``j`` holds the units whose middle image falls before ``round((j + 1) * n / folds)``
    in the running count, so a unit (a pair of identical files) is never cut.
    """
    n = sum(len(u) for u in units)
    ends = [round((j + 1) * n / folds) for j in range(folds)]
    blocks: list[list[str]] = [[] for _ in range(folds)]
    seen = 0
    for unit in units:
        middle = seen + len(unit) / 2
        j = next((j for j, end in enumerate(ends) if middle < end), folds - 1)
        blocks[j].extend(unit)
        seen += len(unit)
    return blocks


class SARSCoV2CT(_ImageFolderDataset):
    """SARS-CoV-2 CT-scan dataset ("site A", Soares et al. 2020), patients kept apart by default.

    Expected layout under ``root`` (the public Kaggle release, and ``shared/data``'s copy):

    ```text
    COVID/        COVID-19 positive slices, "Covid (1).png" ...
    non-COVID/    negative slices, "Non-Covid (1).png" ... (also read as NonCOVID/)
    ```

    Files whose suffix is in [`IMAGE_EXTENSIONS`][camkit.IMAGE_EXTENSIONS] (case-insensitive,
    not hidden) are the images; other files are ignored, and a missing file number is no error.

    **The split.** The dataset has no patient identifiers, but consecutive file numbers are
    consecutive slices of one patient, so a random split of the slices puts one patient's
    slices in train and test. The default ``scheme="patient-blocks"`` therefore cuts each class,
    in numeric file order (``Covid (2)`` before ``Covid (10)``), into ``folds`` contiguous blocks
    of nearly equal size: block ``fold`` is the test split, block ``(fold + 1) % folds`` the
    validation split, the others train. Only a patient that straddles a block boundary can be
    shared (at most ``folds - 1`` boundaries per class), and byte-identical files (``Covid (128)``
    = ``(129)``, ``(134)`` = ``(135)``) always land in one block. With the default 5 folds the
    split is 60 / 20 / 20 %: a fifth of the patients in validation makes it a usable proxy
    for test, and the 5 folds test every image once. ``scheme="leaky-random"`` does the same
    after shuffling each class's files with ``numpy.random.default_rng(seed)`` (one generator,
    non-COVID first): it **leaks patients** across the splits and is kept to measure how much
    that inflates accuracy.

    Samples are ordered non-COVID first, then COVID, each in numeric file order.

    Args:
        root: the dataset folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: called on the PIL RGB image; its result is returned in place of the image.
        scheme: ``"patient-blocks"`` (default) or ``"leaky-random"``.
        folds: the number of blocks per class, an int >= 3.
        fold: which block is the test split, in ``[0, folds)``.
        seed: the shuffle of ``"leaky-random"`` (a non-negative int, default 0); not accepted
            with ``"patient-blocks"``, which draws nothing.

    Attributes:
        samples: ``(path, label)`` pairs.
        targets: the labels, ``1`` = COVID, ``0`` = non-COVID.
        classes: ``["non-COVID", "COVID"]``, indexed by label.
        class_to_idx: ``{"non-COVID": 0, "COVID": 1}``.
        blocks: per class name, the file names of each block, in block order.

    Raises:
        FileNotFoundError: ``root`` or a class folder is missing.
        TypeError: ``folds``, ``fold`` or ``seed`` is not an int.
        ValueError: unknown ``split`` or ``scheme``, ``folds`` < 3, ``fold`` out of range, a
            ``seed`` with ``"patient-blocks"``, or a class with fewer images than ``folds``.

    Examples:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from camkit.datasets import SARSCoV2CT
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for folder, stem in (("COVID", "Covid"), ("non-COVID", "Non-Covid")):
        ...     (root / folder).mkdir()
        ...     for k in range(1, 11):
        ...         Image.new("L", (8, 8), k).save(root / folder / f"{stem} ({k}).png")
        >>> [len(SARSCoV2CT(root, split=s)) for s in ("train", "val", "test")]
        [12, 4, 4]
        >>> [p.name for p, _ in SARSCoV2CT(root, split="test", fold=4).samples[:2]]
        ['Non-Covid (9).png', 'Non-Covid (10).png']
    """

    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        scheme: SplitScheme = "patient-blocks",
        folds: int = 5,
        fold: int = 0,
        seed: int | None = None,
    ) -> None:
        self._setup(root, split, transform)
        self.scheme = str(check_choice(scheme, "scheme", _SCHEMES))
        self.folds = check_int(folds, "folds", minimum=3)
        self.fold = check_int(fold, "fold", minimum=0)
        if self.fold >= self.folds:
            raise ValueError(f"fold: expected an int in [0, {self.folds}), got {fold}")
        if seed is not None and self.scheme == "patient-blocks":
            raise ValueError(
                "seed: the 'patient-blocks' split draws nothing; a seed applies to "
                f"scheme='leaky-random' only, got seed={seed!r}"
            )
        self.seed = (
            check_seed(0 if seed is None else seed) if self.scheme != "patient-blocks" else None
        )
        if not self.root.is_dir():
            got = "a file" if self.root.exists() else "nothing (it does not exist)"
            raise FileNotFoundError(
                f"root: expected the SARS-CoV-2 CT folder (with COVID/ and non-COVID/) at "
                f"{self.root}, found {got}"
            )
        self.classes = [names[0] for names in _FOLDERS]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

        rng = np.random.default_rng(self.seed) if self.seed is not None else None
        part = {"test": [self.fold], "val": [(self.fold + 1) % self.folds]}
        part["train"] = [j for j in range(self.folds) if j not in part["test"] + part["val"]]
        self.blocks: dict[str, list[list[str]]] = {}
        self.samples = []
        for label, aliases in enumerate(_FOLDERS):
            folder = next((self.root / a for a in aliases if (self.root / a).is_dir()), None)
            if folder is None:
                raise FileNotFoundError(
                    f"root: expected the {aliases[0]} image folder at {self.root / aliases[0]}, "
                    "found nothing (it does not exist)"
                )
            units = _units(folder, image_files(folder))
            n = sum(len(u) for u in units)
            if n < self.folds:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise ValueError(
                    f"{folder}: expected at least folds={self.folds} image files ({exts}), "
                    f"found {n}"
                )
            if rng is not None:
                units = [units[i] for i in rng.permutation(len(units))]
            blocks = _blocks(units, self.folds)
            if not all(blocks):
                raise ValueError(
                    f"{folder}: {n} images in {len(units)} distinct files cannot fill "
                    f"folds={self.folds} blocks; use fewer folds"
                )
            self.blocks[self.classes[label]] = blocks
            chosen = [name for j in part[self.split] for name in blocks[j]]
            self.samples.extend((folder / name, label) for name in sorted(chosen, key=_natural_key))
        self.targets = [label for _, label in self.samples]

    def _describe(self) -> str:
        seed = f", seed={self.seed}" if self.seed is not None else ""
        return (
            f"split={self.split!r}, scheme={self.scheme!r}, fold={self.fold} of {self.folds}"
            f"{seed}, "
        )
