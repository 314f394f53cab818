"""A user's own images: ``root/<split>/<class>/<image>``, with the same class folders per split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from camkit.datasets._io import IMAGE_EXTENSIONS, PathLike, image_files, require_dir
from camkit.datasets.covid import _ImageFolderDataset

__all__ = ["SplitImageFolder"]


class SplitImageFolder(_ImageFolderDataset):
    """Images sorted into split and class folders: the layout to measure camkit on your data.

    Expected layout under ``root``:

    ```text
    train/<class>/<image>    the class folders; their sorted names are the classes
    val/<class>/<image>      the same class folders (validation: selection and choices)
    test/<class>/<image>     the same class folders
    ```

    The classes are the sorted names of the class folders under ``train/`` (label ``i`` is the
    ``i``-th name); ``val/`` and ``test/`` must hold the same folders. Files whose suffix is in
    [`IMAGE_EXTENSIONS`][camkit.IMAGE_EXTENSIONS] (case-insensitive, not hidden) are the
    images, sorted by name within each class; other files are ignored. Images are converted to
    RGB when an item is read.

    Args:
        root: the folder holding ``train/``, ``val/`` and ``test/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: called on the PIL RGB image; its result is returned in place of the image.

    Attributes:
        samples: ``(path, label)`` pairs, by class, then file name.
        targets: the labels.
        classes: the class folder names, indexed by label.
        class_to_idx: class name → label.

    Raises:
        FileNotFoundError: ``root`` or the split folder is missing, or a class folder of
            ``train/`` is missing from the split.
        ValueError: unknown ``split``, fewer than two class folders in ``train/``, a class
            folder under the split that ``train/`` does not have, or a class with no images.

    Examples:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from camkit.datasets import SplitImageFolder
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for split in ("train", "val", "test"):
        ...     for name in ("healthy", "sick"):
        ...         (root / split / name).mkdir(parents=True)
        ...         Image.new("L", (8, 8)).save(root / split / name / "a.png")
        >>> SplitImageFolder(root, "val")
        SplitImageFolder(split='val', 2 images: healthy=1, sick=1)
    """

    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self._setup(root, split, transform)
        layout = "a folder with train/, val/ and test/, each holding one folder per class"
        require_dir(self.root, "root", layout)
        for name in ("train", self.split):
            require_dir(self.root / name, "root", f"the {name} split folder ({layout})")
        self.classes = sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir())
        if len(self.classes) < 2:
            raise ValueError(
                f"root: expected at least two class folders in {self.root / 'train'}, "
                f"found {self.classes}"
            )
        here = {p.name for p in (self.root / self.split).iterdir() if p.is_dir()}
        if extra := sorted(here - set(self.classes)):
            raise ValueError(
                f"root: {self.root / self.split} has class folders that train/ has not: {extra}"
            )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = []
        for label, name in enumerate(self.classes):
            folder = self.root / self.split / name
            require_dir(folder, "root", f"the class folder {name!r} of train/")
            names = image_files(folder)
            if not names:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise ValueError(f"{folder}: expected image files ({exts}), found none")
            self.samples.extend((folder / n, label) for n in names)
        self.targets = [label for _, label in self.samples]

    def _describe(self) -> str:
        return f"split={self.split!r}, "
