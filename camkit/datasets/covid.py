"""The COVID-19 CT datasets: COVID-CT (site B) and COVIDx-CT (site A: `camkit.datasets.sars`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from camkit._checks import check_choice
from camkit.datasets._io import (
    PathLike,
    as_path,
    check_no_duplicates,
    files_in,
    missing_error,
    open_rgb,
    read_lines,
    require_dir,
    require_file,
)

__all__ = ["COVIDCT", "COVIDxCT"]


class _ImageFolderDataset(Dataset[tuple[Any, int]]):
    """Common ``__len__``/``__getitem__``/``__repr__`` for the CT datasets."""

    samples: list[tuple[Path, int]]
    targets: list[int]
    classes: list[str]
    transform: Callable[[Image.Image], Any] | None

    splits: tuple[str, ...] = ()

    def _setup(self, root: PathLike, split: str, transform) -> None:
        """The arguments of every split dataset: ``root`` as a path, ``split`` among `splits`."""
        self.root = as_path(root, "root")
        self.split = str(check_choice(split, "split", self.splits))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> Image.Image:
        return open_rgb(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        label = self.samples[index][1]
        image: Any = self._load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={self.targets.count(i)}" for i, name in enumerate(self.classes))
        extra = self._describe()
        return f"{type(self).__name__}({extra}{len(self)} images: {counts})"


class COVIDCT(_ImageFolderDataset):
    """UCSD COVID-CT ("site B") with its official train/val/test split.

    Expected layout under ``root``:

    ```text
    CT_COVID/                   COVID-19 positive images
    CT_NonCOVID/                negative images
    Data-split/COVID/{train,val,test}CT_COVID.txt
    Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt
    ```

    Each split list holds one file name per line (no folder part); blank lines are ignored. At
    construction every listed name is checked against the image folder once. Images are opened
    with Pillow and converted to 8-bit RGB when an item is read (a 16-bit grey image is scaled by
    the 16-bit range, not clipped); this also handles the files named ``*.png`` that are really
    JPEG-encoded, and drops the alpha channel of RGBA files.

    Samples are ordered NonCOVID first, then COVID, each in list-file order.

    Args:
        root: the COVID-CT folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: called on the PIL RGB image; its result is returned in place of the image.

    Attributes:
        samples: ``(path, label)`` pairs.
        targets: the labels, ``1`` = COVID, ``0`` = NonCOVID.
        classes: ``["NonCOVID", "COVID"]``, indexed by label.
        class_to_idx: ``{"NonCOVID": 0, "COVID": 1}``.

    Raises:
        FileNotFoundError: ``root``, an image folder or a split list is missing, or a listed
            name does not exist (the message gives the list file and line).
        ValueError: unknown ``split``, an empty list, or a name listed twice.

    Examples:
        A tiny COVID-CT folder: one image per class, listed in the ``val`` lists.

        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from camkit.datasets import COVIDCT
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("COVID", "NonCOVID"):
        ...     (root / f"CT_{name}").mkdir()
        ...     Image.new("L", (8, 8)).save(root / f"CT_{name}" / f"{name}_1.png")
        ...     lists = root / "Data-split" / name
        ...     lists.mkdir(parents=True)
        ...     _ = (lists / f"valCT_{name}.txt").write_text(f"{name}_1.png\\n")
        >>> ds = COVIDCT(root, split="val")
        >>> ds
        COVIDCT(split='val', 2 images: NonCOVID=1, COVID=1)
        >>> image, label = ds[0]
        >>> image.mode, image.size, label
        ('RGB', (8, 8), 0)

        The staged COVID-CT folder's ``val`` split holds 118 images, 60 of them COVID.
    """

    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self._setup(root, split, transform)
        self.classes = ["NonCOVID", "COVID"]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        require_dir(
            self.root, "root", "the COVID-CT folder (with CT_COVID/, CT_NonCOVID/, Data-split/)"
        )

        self.samples = []
        for label, name in enumerate(self.classes):
            folder = self.root / f"CT_{name}"
            list_file = self.root / "Data-split" / name / f"{split}CT_{name}.txt"
            require_dir(folder, "root", f"the {name} image folder")
            require_file(list_file, "root", f"the {split} split list for {name}")
            listed = read_lines(list_file)
            if not listed:
                raise ValueError(f"{list_file}: expected at least one file name, got an empty list")
            check_no_duplicates(list_file, listed)
            on_disk = files_in(folder)
            missing = [(line, n) for line, n in listed if n not in on_disk]
            if missing:
                raise missing_error(list_file, folder, missing, len(on_disk))
            self.samples.extend((folder / n, label) for _, n in listed)
        self.targets = [label for _, label in self.samples]

    def _describe(self) -> str:
        return f"split={self.split!r}, "


class COVIDxCT(_ImageFolderDataset):
    """COVIDx-CT, read from one of its list files.

    Each non-blank line of ``split_file`` reads ``<file name> <class> <xmin> <ymin> <xmax> <ymax>``,
    for example ``NCP_1013_2577_0000.png 2 0 173 512 404``, where the class is 0 (Normal),
    1 (Pneumonia) or 2 (COVID-19) and the box is in pixels with exclusive ``xmax``/``ymax``
    (Pillow's ``crop`` convention: the crop is ``(xmax - xmin) x (ymax - ymin)``). Images are looked
    up as ``root / <file name>``. Every line is validated, and every name checked on disk, once at
    construction.

    Images are converted to RGB. With ``crop_to_box`` the image is cropped to its box before
    ``transform``; a box that does not fit inside the image raises a `ValueError` naming the
    image, the list file and the line when the item is read.

    Args:
        root: folder that holds the images.
        split_file: the list file, e.g. ``test_COVIDx_CT-3A.txt``.
        transform: called on the (cropped) PIL RGB image; its result is returned in place of it.
        crop_to_box: crop each image to its box.

    Attributes:
        samples: ``(path, label)`` pairs in list order.
        targets: the labels.
        boxes: ``(xmin, ymin, xmax, ymax)`` for each sample.
        classes: ``["Normal", "Pneumonia", "COVID-19"]``, indexed by label.
        class_to_idx: the reverse mapping.

    Raises:
        FileNotFoundError: ``root`` or ``split_file`` is missing, or a listed image does not exist.
        ValueError: an empty list, a line with a wrong number of fields, a non-integer field, a
            class outside 0..2, a box with ``xmin >= xmax``, ``ymin >= ymax`` or a negative
            coordinate, or a name listed twice. The message gives the file and line.

    Examples:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from camkit.datasets import COVIDxCT
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("L", (512, 512)).save(root / "NCP_1013_2577_0000.png")
        >>> _ = (root / "list.txt").write_text("NCP_1013_2577_0000.png 2 0 173 512 404\\n")
        >>> ds = COVIDxCT(root, root / "list.txt")
        >>> image, label = ds[0]
        >>> image.size, ds.classes[label]
        ((512, 231), 'COVID-19')
    """

    def __init__(
        self,
        root: PathLike,
        split_file: PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        crop_to_box: bool = True,
    ) -> None:
        self.root = as_path(root, "root")
        self.split_file = as_path(split_file, "split_file")
        self.transform = transform
        self.crop_to_box = bool(crop_to_box)
        self.classes = ["Normal", "Pneumonia", "COVID-19"]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        require_dir(self.root, "root", "the COVIDx-CT image folder")
        require_file(self.split_file, "split_file", "a COVIDx-CT list file")

        lines = read_lines(self.split_file)
        if not lines:
            raise ValueError(f"{self.split_file}: expected at least one line, got an empty list")
        self.samples = []
        self.boxes: list[tuple[int, int, int, int]] = []
        self._line_numbers: list[int] = []
        names: list[tuple[int, str]] = []
        for line, text in lines:
            name, label, box = self._parse(line, text)
            names.append((line, name))
            self.samples.append((self.root / name, label))
            self.boxes.append(box)
            self._line_numbers.append(line)
        check_no_duplicates(self.split_file, names)
        on_disk = files_in(self.root)
        missing = [(line, n) for line, n in names if n not in on_disk]
        if missing:
            raise missing_error(self.split_file, self.root, missing, len(on_disk))
        self.targets = [label for _, label in self.samples]

    def _parse(self, line: int, text: str) -> tuple[str, int, tuple[int, int, int, int]]:
        where = f"{self.split_file}:{line}"
        fields = text.split()
        if len(fields) != 6:
            raise ValueError(
                f"{where}: expected 6 space-separated fields "
                f"'<file name> <class> <xmin> <ymin> <xmax> <ymax>', got {len(fields)}: {text!r}"
            )
        try:
            label, xmin, ymin, xmax, ymax = (int(f) for f in fields[1:])
        except ValueError:
            raise ValueError(
                f"{where}: expected integer class and box fields, got {text!r}"
            ) from None
        if label not in (0, 1, 2):
            raise ValueError(
                f"{where}: expected class 0 (Normal), 1 (Pneumonia) or 2 (COVID-19), got {label}"
            )
        if not (0 <= xmin < xmax and 0 <= ymin < ymax):
            raise ValueError(
                f"{where}: expected a box with 0 <= xmin < xmax and 0 <= ymin < ymax, "
                f"got (xmin, ymin, xmax, ymax) = {(xmin, ymin, xmax, ymax)}"
            )
        return fields[0], label, (xmin, ymin, xmax, ymax)

    def _load(self, index: int) -> Image.Image:
        image = open_rgb(self.samples[index][0])
        if not self.crop_to_box:
            return image
        box = self.boxes[index]
        xmax, ymax = box[2], box[3]
        width, height = image.size
        if xmax > width or ymax > height:
            raise ValueError(
                f"image {self.samples[index][0]}: box {box} from "
                f"{self.split_file}:{self._line_numbers[index]} does not fit inside the "
                f"{width}x{height} image"
            )
        return image.crop(box)

    def _describe(self) -> str:
        return f"split_file={self.split_file.name!r}, "
