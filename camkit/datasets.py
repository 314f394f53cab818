"""Datasets used by the camkit examples and benchmarks.

Image datasets follow the torchvision convention: ``dataset[i]`` returns ``(image, label)``, where
``image`` is a PIL RGB image passed through ``transform`` when one is given.

* :class:`COVIDCT`: UCSD COVID-CT ("site B") with its official train/val/test lists.
* :class:`SARSCoV2CT`: the SARS-CoV-2 CT-scan dataset ("site A") with a seeded, stratified split.
* :class:`COVIDxCT`: COVIDx-CT, read from its ``<file> <class> <box>`` list files.
* :func:`load_digits_npz`, :class:`DigitsDataset`, :func:`mnist`, :func:`usps`: digit datasets as
  float tensors in ``[0, 1]``.
* :func:`build_mnist_m`, :func:`mnist_m`: MNIST-M built from MNIST and BSDS500 photographs.
* :func:`default_data_root`: where the staged data folder is.

Every loader checks its inputs up front. A missing folder or file, an unknown split, an empty split,
a name in a list that is not on disk and a malformed list line all raise :class:`FileNotFoundError`
or :class:`ValueError`. The message names the file, and the line number for list files. Nothing is
skipped silently. An image that cannot be decoded raises :class:`OSError` naming the file when it
is loaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from camkit._checks import check_tensor

__all__ = [
    "COVIDCT",
    "IMAGE_EXTENSIONS",
    "COVIDxCT",
    "DigitsDataset",
    "SARSCoV2CT",
    "build_mnist_m",
    "default_data_root",
    "load_digits_npz",
    "mnist",
    "mnist_m",
    "usps",
]

PathLike = str | os.PathLike[str]
"""A file-system path given as ``str`` or ``os.PathLike``."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
"""File-name suffixes (lower case) that folder-based loaders treat as images."""

_DIGIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def _as_path(value: object, name: str) -> Path:
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise TypeError(f"{name}: expected a str or os.PathLike path, got {type(value).__name__}")


def _require_dir(path: Path, name: str, what: str) -> None:
    if path.is_dir():
        return
    got = "a file" if path.exists() else "nothing (it does not exist)"
    raise FileNotFoundError(f"{name}: expected {what} at {path}, found {got}")


def _require_file(path: Path, name: str, what: str) -> None:
    if path.is_file():
        return
    got = "a folder" if path.exists() else "nothing (it does not exist)"
    raise FileNotFoundError(f"{name}: expected {what} at {path}, found {got}")


def _check_choice(value: object, name: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        want = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name}: expected one of {want}, got {value!r}")
    return value


def _check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {seed!r}")
    return int(seed)


def _files_in(folder: Path) -> set[str]:
    """Names of the regular files (or links to them) directly inside ``folder``."""
    with os.scandir(folder) as it:
        return {entry.name for entry in it if entry.is_file()}


def _image_files(folder: Path) -> list[str]:
    """Sorted names of the image files in ``folder`` (by suffix; hidden files are not images)."""
    return sorted(
        name
        for name in _files_in(folder)
        if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
    )


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as ``(line_number, stripped_text)``, numbered from 1."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: expected a UTF-8 text file, could not decode it ({err})"
        ) from err
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _open_rgb(path: Path) -> Image.Image:
    """Open an image file fully decoded as RGB; errors name the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image {path}: file does not exist") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise OSError(
            f"image {path}: could not be decoded as an image ({type(err).__name__}: {err})"
        ) from err


def _report_missing(
    list_file: Path, folder: Path, missing: list[tuple[int, str]], on_disk: int
) -> FileNotFoundError:
    line, name = missing[0]
    more = f" ({len(missing) - 1} more listed names are missing too)" if len(missing) > 1 else ""
    return FileNotFoundError(
        f"{list_file}:{line}: lists {name!r}, but {folder / name} does not exist "
        f"({on_disk} files in {folder}){more}"
    )


def _check_no_duplicates(list_file: Path, names: Sequence[tuple[int, str]]) -> None:
    first_seen: dict[str, int] = {}
    for line, name in names:
        if name in first_seen:
            raise ValueError(
                f"{list_file}:{line}: {name!r} is listed twice (first on line {first_seen[name]}); "
                "expected each file name once"
            )
        first_seen[name] = line


class _ImageFolderDataset(Dataset[tuple[Any, int]]):
    """Common ``__len__``/``__getitem__``/``__repr__`` for the CT datasets."""

    samples: list[tuple[Path, int]]
    targets: list[int]
    classes: list[str]
    transform: Callable[[Image.Image], Any] | None

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> Image.Image:
        return _open_rgb(self.samples[index][0])

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


# --------------------------------------------------------------------------------------------
# CT datasets
# --------------------------------------------------------------------------------------------


class COVIDCT(_ImageFolderDataset):
    """UCSD COVID-CT ("site B") with its official train/val/test split.

    Expected layout under ``root``::

        CT_COVID/                   COVID-19 positive images
        CT_NonCOVID/                negative images
        Data-split/COVID/{train,val,test}CT_COVID.txt
        Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt

    Each split list holds one file name per line (no folder part); blank lines are ignored. At
    construction every listed name is checked against the image folder once. Images are opened
    with Pillow and converted with ``.convert("RGB")`` when an item is read; this also handles the
    files named ``*.png`` that are really JPEG-encoded, and drops the alpha channel of RGBA files.

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
        >>> from camkit.datasets import COVIDCT, default_data_root
        >>> ds = COVIDCT(default_data_root() / "COVID-CT", split="val")
        >>> len(ds), ds.targets.count(1)
        (118, 60)
        >>> image, label = ds[0]
        >>> image.mode, label
        ('RGB', 0)
    """

    splits: tuple[str, ...] = ("train", "val", "test")

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.root = _as_path(root, "root")
        self.split = _check_choice(split, "split", self.splits)
        self.transform = transform
        self.classes = ["NonCOVID", "COVID"]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        _require_dir(
            self.root, "root", "the COVID-CT folder (with CT_COVID/, CT_NonCOVID/, Data-split/)"
        )

        self.samples = []
        for label, name in enumerate(self.classes):
            folder = self.root / f"CT_{name}"
            list_file = self.root / "Data-split" / name / f"{split}CT_{name}.txt"
            _require_dir(folder, "root", f"the {name} image folder")
            _require_file(list_file, "root", f"the {split} split list for {name}")
            listed = _read_lines(list_file)
            if not listed:
                raise ValueError(f"{list_file}: expected at least one file name, got an empty list")
            _check_no_duplicates(list_file, listed)
            on_disk = _files_in(folder)
            missing = [(line, n) for line, n in listed if n not in on_disk]
            if missing:
                raise _report_missing(list_file, folder, missing, len(on_disk))
            self.samples.extend((folder / n, label) for _, n in listed)
        self.targets = [label for _, label in self.samples]

    def _describe(self) -> str:
        return f"split={self.split!r}, "


class SARSCoV2CT(_ImageFolderDataset):
    """SARS-CoV-2 CT-scan dataset ("site A", Soares et al. 2020) with a seeded, stratified split.

    Expected layout under ``root`` (the public Kaggle release)::

        COVID/        COVID-19 positive images
        non-COVID/    negative images

    Files whose suffix is in :data:`IMAGE_EXTENSIONS` (case-insensitive, not hidden) are the
    images; other files in these folders are ignored.

    The dataset has no official split, so one is made here, per class, in label order (non-COVID
    first, then COVID), with a single generator ``rng = numpy.random.default_rng(seed)``:

    1. sort the class's file names (plain string order);
    2. ``perm = rng.permutation(n)``;
    3. the first ``round(train_fraction * n)`` entries of ``perm`` (Python ``round``: halves go
       to the even number) index the train images, the rest the test images.

    Train and test from the same ``seed`` and ``train_fraction`` are therefore disjoint and
    together cover every image. Within a split, samples are ordered non-COVID first, then COVID,
    each by file name.

    Args:
        root: the dataset folder.
        split: ``"train"`` or ``"test"``.
        transform: called on the PIL RGB image; its result is returned in place of the image.
        seed: seed of the split (a non-negative int).
        train_fraction: share of each class that goes to train, in ``(0, 1)``.

    Attributes:
        samples: ``(path, label)`` pairs.
        targets: the labels, ``1`` = COVID, ``0`` = non-COVID.
        classes: ``["non-COVID", "COVID"]``, indexed by label.
        class_to_idx: ``{"non-COVID": 0, "COVID": 1}``.

    Raises:
        FileNotFoundError: ``root`` or a class folder is missing.
        ValueError: unknown ``split``, a bad ``seed``/``train_fraction``, a class folder with no
            images, or a split that comes out empty.

    Examples:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from camkit.datasets import SARSCoV2CT
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for folder in ("COVID", "non-COVID"):
        ...     (root / folder).mkdir()
        ...     for k in range(4):
        ...         Image.new("L", (8, 8)).save(root / folder / f"{k}.png")
        >>> train = SARSCoV2CT(root, split="train", seed=0)
        >>> test = SARSCoV2CT(root, split="test", seed=0)
        >>> len(train), len(test), sorted(set(train.targets))
        (6, 2, [0, 1])
    """

    splits: tuple[str, ...] = ("train", "test")
    folders: tuple[str, ...] = ("non-COVID", "COVID")

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        seed: int = 0,
        train_fraction: float = 0.75,
    ) -> None:
        self.root = _as_path(root, "root")
        self.split = _check_choice(split, "split", self.splits)
        self.transform = transform
        self.seed = _check_seed(seed)
        if (
            isinstance(train_fraction, bool)
            or not isinstance(train_fraction, (int, float))
            or not 0.0 < train_fraction < 1.0
        ):
            raise ValueError(f"train_fraction: expected a number in (0, 1), got {train_fraction!r}")
        self.train_fraction = float(train_fraction)
        self.classes = list(self.folders)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        _require_dir(self.root, "root", "the SARS-CoV-2 CT folder (with COVID/ and non-COVID/)")

        rng = np.random.default_rng(self.seed)
        self.samples = []
        for label, name in enumerate(self.folders):
            folder = self.root / name
            _require_dir(folder, "root", f"the {name} image folder")
            names = _image_files(folder)
            if not names:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise ValueError(f"{folder}: expected image files ({exts}), found none")
            perm = rng.permutation(len(names))
            n_train = round(self.train_fraction * len(names))
            chosen = perm[:n_train] if split == "train" else perm[n_train:]
            self.samples.extend((folder / names[i], label) for i in sorted(chosen.tolist()))
        if not self.samples:
            raise ValueError(
                f"split: {split!r} is empty for {self.root} with "
                f"train_fraction={self.train_fraction}; expected at least one image"
            )
        self.targets = [label for _, label in self.samples]

    def _describe(self) -> str:
        return f"split={self.split!r}, seed={self.seed}, "


class COVIDxCT(_ImageFolderDataset):
    """COVIDx-CT, read from one of its list files.

    Each non-blank line of ``split_file`` reads ``<file name> <class> <xmin> <ymin> <xmax> <ymax>``,
    for example ``NCP_1013_2577_0000.png 2 0 173 512 404``, where the class is 0 (Normal),
    1 (Pneumonia) or 2 (COVID-19) and the box is in pixels with exclusive ``xmax``/``ymax``
    (Pillow's ``crop`` convention: the crop is ``(xmax - xmin) x (ymax - ymin)``). Images are looked
    up as ``root / <file name>``. Every line is validated, and every name checked on disk, once at
    construction.

    Images are converted to RGB. With ``crop_to_box`` the image is cropped to its box before
    ``transform``; a box that does not fit inside the image raises a :class:`ValueError` naming the
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
        self.root = _as_path(root, "root")
        self.split_file = _as_path(split_file, "split_file")
        self.transform = transform
        self.crop_to_box = bool(crop_to_box)
        self.classes = ["Normal", "Pneumonia", "COVID-19"]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        _require_dir(self.root, "root", "the COVIDx-CT image folder")
        _require_file(self.split_file, "split_file", "a COVIDx-CT list file")

        lines = _read_lines(self.split_file)
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
        _check_no_duplicates(self.split_file, names)
        on_disk = _files_in(self.root)
        missing = [(line, n) for line, n in names if n not in on_disk]
        if missing:
            raise _report_missing(self.split_file, self.root, missing, len(on_disk))
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
        image = _open_rgb(self.samples[index][0])
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


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def load_digits_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Load a digits ``.npz`` archive with keys ``x_train, y_train, x_test, y_test``.

    The images must be ``uint8`` of shape ``(N, H, W)`` (grayscale) or ``(N, H, W, 3)`` (RGB), the
    same ``H, W`` for train and test; the labels integer ``(N,)`` arrays, non-negative, with ``N``
    matching the images. This is the layout of ``mnist.npz`` and ``usps.npz`` in the staged data.

    Args:
        path: the ``.npz`` file.

    Returns:
        The four arrays, as stored (other keys in the archive are not returned).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable ``.npz`` archive, a key is missing, or an array
            has a wrong dtype or shape. The message names the file and the key.

    Examples:
        >>> from camkit.datasets import default_data_root, load_digits_npz
        >>> data = load_digits_npz(default_data_root() / "mnist.npz")
        >>> data["x_train"].shape, data["x_test"].dtype, data["y_train"][:5].tolist()
        ((60000, 28, 28), dtype('uint8'), [5, 0, 4, 1, 9])
    """
    p = _as_path(path, "path")
    _require_file(p, "path", "a digits .npz file")
    try:
        archive = np.load(p, allow_pickle=False)
    except Exception as err:
        raise ValueError(
            f"{p}: could not be read as a .npz archive ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{p}: expected a .npz archive of named arrays, got a single .npy array")
    with archive:
        found = sorted(archive.files)
        for key in _DIGIT_KEYS:
            if key not in archive.files:
                raise ValueError(
                    f"{p}: expected keys {', '.join(_DIGIT_KEYS)}; missing key {key!r} "
                    f"(found: {', '.join(found) or 'none'})"
                )
        try:
            data = {key: np.asarray(archive[key]) for key in _DIGIT_KEYS}
        except Exception as err:
            raise ValueError(
                f"{p}: could not read its arrays ({type(err).__name__}: {err})"
            ) from err

    image_shape: tuple[int, ...] | None = None
    for part in ("train", "test"):
        x, y = data[f"x_{part}"], data[f"y_{part}"]
        xk, yk = f"x_{part}", f"y_{part}"
        if x.dtype != np.uint8:
            raise ValueError(f"{p}: key {xk!r}: expected dtype uint8, got {x.dtype}")
        if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
            raise ValueError(
                f"{p}: key {xk!r}: expected shape (N, H, W) or (N, H, W, 3), got {x.shape}"
            )
        if image_shape is not None and x.shape[1:] != image_shape:
            raise ValueError(
                f"{p}: key {xk!r}: expected images of shape {image_shape} like x_train, "
                f"got {x.shape[1:]}"
            )
        image_shape = x.shape[1:]
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{p}: key {yk!r}: expected an integer dtype, got {y.dtype}")
        if y.shape != (x.shape[0],):
            raise ValueError(
                f"{p}: key {yk!r}: expected shape ({x.shape[0]},) to match {xk!r}, got {y.shape}"
            )
        if y.size and y.min() < 0:
            raise ValueError(f"{p}: key {yk!r}: expected labels >= 0, got {int(y.min())}")
    return data


class DigitsDataset(Dataset[tuple[Any, int]]):
    """Digit images held in memory, returned as float tensors in ``[0, 1]``.

    ``dataset[i]`` is ``(image, label)`` where ``image`` is a ``float32`` tensor of shape
    ``(C, H, W)`` holding ``pixel / 255``, then passed through ``transform`` if given (so
    ``transform`` receives a tensor, not a PIL image). Grayscale input gives ``C = 1`` and RGB
    input ``C = 3``; pass ``channels=3`` to repeat a grayscale image over three channels (for
    models that expect RGB, or to mix MNIST with MNIST-M).

    Args:
        images: ``uint8`` array or tensor of shape ``(N, H, W)`` or ``(N, H, W, 3)``. A numpy
            array is shared, not copied, unless it is read-only.
        labels: ``N`` non-negative integer labels (array, tensor or sequence).
        transform: called on the ``(C, H, W)`` float tensor.
        channels: ``None`` (keep), ``1`` or ``3``. ``1`` is only allowed for grayscale input.

    Attributes:
        images: the images as a ``uint8`` tensor, as given.
        labels: the labels as an ``int64`` tensor.
        targets: the labels as a list of ints.

    Raises:
        TypeError: ``images`` is not ``uint8`` or ``labels`` not integer.
        ValueError: wrong shapes, ``N`` mismatch, negative labels, or a bad ``channels``.

    Examples:
        >>> import numpy as np
        >>> from camkit.datasets import DigitsDataset
        >>> images = np.full((2, 28, 28), 255, dtype=np.uint8)
        >>> ds = DigitsDataset(images, [3, 7], channels=3)
        >>> x, y = ds[1]
        >>> tuple(x.shape), x.dtype, float(x.max()), y
        ((3, 28, 28), torch.float32, 1.0, 7)
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor | Sequence[int],
        transform: Callable[[torch.Tensor], Any] | None = None,
        channels: int | None = None,
    ) -> None:
        if isinstance(images, np.ndarray):
            if not images.flags.writeable:
                images = images.copy()
            images = torch.from_numpy(images)
        check_tensor(images, "images", ndim=(3, 4), dtype=torch.uint8)
        if images.ndim == 4 and images.shape[-1] != 3:
            raise ValueError(
                f"images: expected shape (N, H, W) or (N, H, W, 3), got {tuple(images.shape)}"
            )
        if isinstance(labels, np.ndarray):
            labels = torch.from_numpy(np.array(labels, copy=True))
        elif not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(list(labels), dtype=torch.int64)
        check_tensor(labels, "labels", ndim=1, floating=False)
        labels = labels.to(torch.int64)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels: expected {images.shape[0]} labels to match images, got {labels.shape[0]}"
            )
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"labels: expected labels >= 0, got {int(labels.min())}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels: expected None, 1 or 3, got {channels!r}")
        if channels == 1 and images.ndim == 4:
            raise ValueError("channels: 1 was asked for, but images are RGB (N, H, W, 3)")
        self.images = images
        self.labels = labels
        self.targets: list[int] = labels.tolist()
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)
        x: Any = image.to(torch.float32).div_(255.0)
        if self.channels == 3 and x.shape[0] == 1:
            x = x.repeat(3, 1, 1)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[index]

    def __repr__(self) -> str:
        shape = tuple(self.images.shape[1:])
        return f"DigitsDataset({len(self)} images of shape {shape}, channels={self.channels})"


def _digits(
    source: PathLike,
    train: bool,
    download: bool,
    transform: Callable[[torch.Tensor], Any] | None,
    channels: int | None,
    kind: Literal["MNIST", "USPS"],
    size: int,
) -> DigitsDataset:
    path = _as_path(source, "root_or_npz")
    if path.suffix.lower() == ".npz":
        data = load_digits_npz(path)
        part = "train" if train else "test"
        x, y = data[f"x_{part}"], data[f"y_{part}"]
        if x.shape[1:] != (size, size):
            raise ValueError(
                f"{path}: key 'x_{part}': expected {kind} images of shape (N, {size}, {size}), "
                f"got {x.shape}"
            )
        return DigitsDataset(x, y, transform=transform, channels=channels)
    import torchvision.datasets

    tv = getattr(torchvision.datasets, kind)(str(path), train=train, download=download)
    return DigitsDataset(
        torch.as_tensor(np.asarray(tv.data), dtype=torch.uint8),
        torch.as_tensor(np.asarray(tv.targets), dtype=torch.int64),
        transform=transform,
        channels=channels,
    )


def mnist(
    root_or_npz: PathLike,
    train: bool = True,
    download: bool = False,
    *,
    transform: Callable[[torch.Tensor], Any] | None = None,
    channels: int | None = None,
) -> DigitsDataset:
    """MNIST as a :class:`DigitsDataset` of ``(1, 28, 28)`` float tensors in ``[0, 1]``.

    Args:
        root_or_npz: a ``.npz`` file in the :func:`load_digits_npz` layout, or else a folder
            handed to ``torchvision.datasets.MNIST(root, train=train, download=download)``.
        train: the 60,000 training digits (``True``) or the 10,000 test digits.
        download: let torchvision download MNIST into the folder (ignored for ``.npz``).
        transform: see :class:`DigitsDataset`.
        channels: see :class:`DigitsDataset`; ``3`` gives ``(3, 28, 28)``.

    Returns:
        The chosen split.

    Raises:
        FileNotFoundError: the ``.npz`` file does not exist.
        ValueError: the ``.npz`` is malformed or its images are not 28x28.
        RuntimeError: from torchvision, when the folder holds no MNIST and ``download`` is False.

    Examples:
        >>> from camkit.datasets import default_data_root, mnist
        >>> test = mnist(default_data_root() / "mnist.npz", train=False)
        >>> x, y = test[0]
        >>> len(test), tuple(x.shape), y
        (10000, (1, 28, 28), 7)
    """
    return _digits(root_or_npz, train, download, transform, channels, "MNIST", 28)


def usps(
    root_or_npz: PathLike,
    train: bool = True,
    download: bool = False,
    *,
    transform: Callable[[torch.Tensor], Any] | None = None,
    channels: int | None = None,
) -> DigitsDataset:
    """USPS as a :class:`DigitsDataset` of ``(1, 16, 16)`` float tensors in ``[0, 1]``.

    Labels run 0..9 (the digit "0" is label 0), as in ``torchvision.datasets.USPS``.

    Args:
        root_or_npz: a ``.npz`` file in the :func:`load_digits_npz` layout, or else a folder
            handed to ``torchvision.datasets.USPS(root, train=train, download=download)``.
        train: the 7,291 training digits (``True``) or the 2,007 test digits.
        download: let torchvision download USPS into the folder (ignored for ``.npz``).
        transform: see :class:`DigitsDataset`.
        channels: see :class:`DigitsDataset`.

    Returns:
        The chosen split.

    Raises:
        FileNotFoundError: the ``.npz`` file (or, from torchvision, the ``.bz2`` file) is missing.
        ValueError: the ``.npz`` is malformed or its images are not 16x16.

    Examples:
        >>> from camkit.datasets import default_data_root, usps
        >>> train = usps(default_data_root() / "usps.npz")
        >>> len(train), tuple(train[0][0].shape), train[0][1]
        (7291, (1, 16, 16), 6)
    """
    return _digits(root_or_npz, train, download, transform, channels, "USPS", 16)


# --------------------------------------------------------------------------------------------
# MNIST-M
# --------------------------------------------------------------------------------------------


def _digest(digits: np.ndarray) -> str:
    h = hashlib.sha256(str(digits.shape).encode())
    h.update(np.ascontiguousarray(digits).data)
    return h.hexdigest()


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically (:mod:`camkit.io`'s temporary file and replace)."""
    from camkit.io import _atomic_write

    _atomic_write(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]


_CACHE_KEYS = ("images", "photo_index", "top", "left", "photo_files", "seed", "digits_sha256")


def _load_mnist_m_cache(
    path: Path, shape: tuple[int, ...], seed: int, digest: str
) -> tuple[np.ndarray, dict[str, Any]]:
    hint = "delete it to rebuild"
    missing: list[str] = []
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _CACHE_KEYS if k not in npz.files]
            arrays = {k: npz[k] for k in _CACHE_KEYS if k in npz.files}
    except Exception as err:
        raise ValueError(
            f"cache_path {path}: could not be read as an MNIST-M cache "
            f"({type(err).__name__}: {err}); {hint}"
        ) from err
    if missing:
        raise ValueError(
            f"cache_path {path}: expected an MNIST-M cache with keys "
            f"{', '.join(_CACHE_KEYS)}, missing {', '.join(missing)}; {hint}"
        )
    images = arrays["images"]
    want = (*shape, 3)
    if images.dtype != np.uint8 or images.shape != want:
        raise ValueError(
            f"cache_path {path}: expected uint8 images of shape {want}, "
            f"got {images.dtype} {images.shape}; {hint}"
        )
    if int(arrays["seed"]) != seed:
        raise ValueError(
            f"cache_path {path}: expected a cache built with seed={seed}, "
            f"got seed={int(arrays['seed'])}; {hint}"
        )
    if str(arrays["digits_sha256"]) != digest:
        raise ValueError(
            f"cache_path {path}: was built from different MNIST digits "
            f"(sha256 {str(arrays['digits_sha256'])[:12]}..., expected {digest[:12]}...); {hint}"
        )
    meta = {
        "photo_index": arrays["photo_index"].astype(np.int64),
        "top": arrays["top"].astype(np.int64),
        "left": arrays["left"].astype(np.int64),
        "photo_files": [str(s) for s in arrays["photo_files"]],
    }
    return images, meta


@overload
def build_mnist_m(
    mnist_images: np.ndarray | torch.Tensor,
    bsds_dir: PathLike,
    seed: int = 0,
    cache_path: PathLike | None = None,
    *,
    return_meta: Literal[False] = False,
) -> np.ndarray: ...


@overload
def build_mnist_m(
    mnist_images: np.ndarray | torch.Tensor,
    bsds_dir: PathLike,
    seed: int = 0,
    cache_path: PathLike | None = None,
    *,
    return_meta: Literal[True],
) -> tuple[np.ndarray, dict[str, Any]]: ...


def build_mnist_m(
    mnist_images: np.ndarray | torch.Tensor,
    bsds_dir: PathLike,
    seed: int = 0,
    cache_path: PathLike | None = None,
    *,
    return_meta: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Build MNIST-M (Ganin & Lempitsky, 2015) from MNIST digits and BSDS500 photographs.

    The recipe of the paper: each digit is blended with a random patch of a random colour photo,
    ``out = |patch - digit|`` per channel, the grayscale digit broadcast over the 3 channels
    (computed in ``int16``, so nothing wraps around).

    Sampling, with ``rng = numpy.random.default_rng(seed)`` and the photos (files in ``bsds_dir``
    with a suffix in :data:`IMAGE_EXTENSIONS`) in sorted file-name order, each loaded as RGB:

    1. ``photo_index = rng.integers(0, n_photos, size=N)``;
    2. ``top = rng.integers(0, photo_height[photo_index] - H + 1)``;
    3. ``left = rng.integers(0, photo_width[photo_index] - W + 1)``;

    and digit ``i`` uses ``photo[top[i]:top[i]+H, left[i]:left[i]+W]``. The work is vectorised
    per photo (one Python iteration per photo, not per digit), and each photo is decoded once.

    With ``cache_path``, an existing file is loaded (and checked: shape, ``seed``, and a sha256 of
    the digits must match, otherwise a :class:`ValueError` asks to delete it); a missing file is
    built and written atomically (a temporary file in the same folder, then ``os.replace``), so
    an interrupted run never leaves a partial cache. ``bsds_dir`` is not read when the cache is
    used.

    Args:
        mnist_images: ``uint8`` digits of shape ``(N, H, W)`` (``(N, 28, 28)`` for MNIST).
        bsds_dir: folder of photographs, e.g. ``BSDS500/images/train`` (200 JPEGs).
        seed: non-negative int seed.
        cache_path: optional ``.npz`` file to load from or write to.
        return_meta: also return how each image was made.

    Returns:
        ``uint8`` array of shape ``(N, H, W, 3)``. With ``return_meta``, also a dict with
        ``photo_index``, ``top``, ``left`` (``int64`` arrays of length ``N``) and ``photo_files``
        (the sorted photo file names that ``photo_index`` points into).

    Raises:
        TypeError: ``mnist_images`` is not ``uint8``.
        ValueError: ``mnist_images`` is not 3-D, a bad ``seed``, a photo smaller than the digits,
            or a cache file that does not match.
        FileNotFoundError: ``bsds_dir`` is missing or holds no photographs.
        OSError: a photograph cannot be decoded (the message names it).

    Examples:
        >>> from camkit.datasets import build_mnist_m, default_data_root, load_digits_npz
        >>> root = default_data_root()
        >>> digits = load_digits_npz(root / "mnist.npz")["x_test"][:8]
        >>> images, meta = build_mnist_m(
        ...     digits, root / "BSDS500" / "images" / "train", seed=0, return_meta=True
        ... )
        >>> images.shape, images.dtype, sorted(meta)
        ((8, 28, 28, 3), dtype('uint8'), ['left', 'photo_files', 'photo_index', 'top'])
    """
    if isinstance(mnist_images, torch.Tensor):
        check_tensor(mnist_images, "mnist_images", ndim=3, dtype=torch.uint8)
        digits = mnist_images.detach().cpu().numpy()
    elif isinstance(mnist_images, np.ndarray):
        if mnist_images.dtype != np.uint8:
            raise TypeError(f"mnist_images: expected a uint8 array, got dtype {mnist_images.dtype}")
        if mnist_images.ndim != 3:
            raise ValueError(f"mnist_images: expected shape (N, H, W), got {mnist_images.shape}")
        digits = mnist_images
    else:
        raise TypeError(
            f"mnist_images: expected a numpy array or tensor, got {type(mnist_images).__name__}"
        )
    seed = _check_seed(seed)
    n, h, w = digits.shape

    cache = None if cache_path is None else _as_path(cache_path, "cache_path")
    digest = _digest(digits) if cache is not None else ""
    if cache is not None and cache.exists():
        images, meta = _load_mnist_m_cache(cache, digits.shape, seed, digest)
        return (images, meta) if return_meta else images

    bsds = _as_path(bsds_dir, "bsds_dir")
    _require_dir(bsds, "bsds_dir", "a folder of BSDS500 photographs")
    photo_files = _image_files(bsds)
    if not photo_files:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise FileNotFoundError(f"bsds_dir: expected image files ({exts}) in {bsds}, found none")
    sizes = np.empty((len(photo_files), 2), dtype=np.int64)  # (height, width)
    for k, name in enumerate(photo_files):
        try:
            with Image.open(bsds / name) as img:
                sizes[k] = (img.height, img.width)
        except (OSError, SyntaxError, ValueError) as err:
            raise OSError(
                f"image {bsds / name}: could not be opened as an image "
                f"({type(err).__name__}: {err})"
            ) from err
        if sizes[k, 0] < h or sizes[k, 1] < w:
            raise ValueError(
                f"image {bsds / name}: expected a photo of at least {h}x{w} pixels, "
                f"got {sizes[k, 0]}x{sizes[k, 1]}"
            )

    rng = np.random.default_rng(seed)
    photo_index = rng.integers(0, len(photo_files), size=n, dtype=np.int64)
    top = rng.integers(0, sizes[photo_index, 0] - h + 1, dtype=np.int64)
    left = rng.integers(0, sizes[photo_index, 1] - w + 1, dtype=np.int64)

    out = np.empty((n, h, w, 3), dtype=np.uint8)
    row_off, col_off = np.arange(h), np.arange(w)
    order = np.argsort(photo_index, kind="stable")
    used, starts = np.unique(photo_index[order], return_index=True)
    for p, idx in zip(used.tolist(), np.split(order, starts[1:]), strict=True):
        photo = np.asarray(_open_rgb(bsds / photo_files[p]))
        if photo.shape[:2] != tuple(sizes[p]):
            raise OSError(
                f"image {bsds / photo_files[p]}: decoded size {photo.shape[:2]} differs from its "
                f"header size {tuple(sizes[p].tolist())}"
            )
        rows = top[idx, None] + row_off  # (k, h)
        cols = left[idx, None] + col_off  # (k, w)
        patches = photo[rows[:, :, None], cols[:, None, :]].astype(np.int16)  # (k, h, w, 3)
        out[idx] = np.abs(patches - digits[idx, :, :, None].astype(np.int16)).astype(np.uint8)

    meta: dict[str, Any] = {
        "photo_index": photo_index,
        "top": top,
        "left": left,
        "photo_files": photo_files,
    }
    if cache is not None:
        _atomic_savez(
            cache,
            {
                "images": out,
                "photo_index": photo_index,
                "top": top,
                "left": left,
                "photo_files": np.array(photo_files),
                "seed": np.array(seed, dtype=np.int64),
                "digits_sha256": np.array(digest),
            },
        )
    return (out, meta) if return_meta else out


def mnist_m(
    mnist_npz: PathLike,
    bsds_dir: PathLike,
    cache_dir: PathLike,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """MNIST-M train and test sets, built from an MNIST ``.npz`` and cached.

    The two sets use different seeds derived from ``seed``:
    ``train_seed, test_seed = numpy.random.SeedSequence(seed).generate_state(2)``. They are cached
    in ``cache_dir`` as ``mnist_m_train_seed{seed}.npz`` and ``mnist_m_test_seed{seed}.npz`` (see
    :func:`build_mnist_m` for how caches are checked and written); ``cache_dir`` is created if
    needed. The labels are those of MNIST.

    Args:
        mnist_npz: MNIST in the :func:`load_digits_npz` layout (grayscale).
        bsds_dir: folder of photographs, e.g. ``BSDS500/images/train``.
        cache_dir: folder for the two cache files.
        seed: non-negative int seed.

    Returns:
        ``x_train``/``x_test`` (``uint8``, ``(N, H, W, 3)``) and ``y_train``/``y_test``, the same
        layout as :func:`load_digits_npz`, ready for :class:`DigitsDataset`.

    Raises:
        ValueError: ``mnist_npz`` is malformed or not grayscale, a bad ``seed``, or a stale cache.
        FileNotFoundError: ``mnist_npz`` or ``bsds_dir`` is missing.

    Examples:
        >>> import tempfile
        >>> from camkit.datasets import DigitsDataset, default_data_root, mnist_m
        >>> root = default_data_root()
        >>> data = mnist_m(  # doctest: +SKIP
        ...     root / "mnist.npz", root / "BSDS500" / "images" / "train", tempfile.mkdtemp()
        ... )
        >>> data["x_train"].shape  # doctest: +SKIP
        (60000, 28, 28, 3)
        >>> train = DigitsDataset(data["x_train"], data["y_train"])  # doctest: +SKIP
    """
    npz = _as_path(mnist_npz, "mnist_npz")
    data = load_digits_npz(npz)
    if data["x_train"].ndim != 3:
        raise ValueError(
            f"{npz}: key 'x_train': expected grayscale digits (N, H, W), "
            f"got {data['x_train'].shape}"
        )
    seed = _check_seed(seed)
    train_seed, test_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    cache = _as_path(cache_dir, "cache_dir")
    out: dict[str, np.ndarray] = {}
    for part, part_seed in (("train", train_seed), ("test", test_seed)):
        out[f"x_{part}"] = build_mnist_m(
            data[f"x_{part}"],
            bsds_dir,
            seed=part_seed,
            cache_path=cache / f"mnist_m_{part}_seed{seed}.npz",
        )
        out[f"y_{part}"] = data[f"y_{part}"]
    return out


# --------------------------------------------------------------------------------------------
# data location
# --------------------------------------------------------------------------------------------


def default_data_root() -> Path | None:
    """Where the staged data folder is, or ``None``.

    1. The environment variable ``CAMKIT_DATA``, if set and non-empty, is returned as a path
       (``~`` expanded) without checking it, so a wrong setting shows up as a clear
       "does not exist" error from the loader rather than as a silent fallback.
    2. Otherwise the current working directory and then each of its parents is tried, and the
       first ``<dir>/shared/data`` that is a folder is returned. From a checkout at
       ``/work/main`` this finds ``/work/main/shared/data`` or the sibling ``/work/shared/data``.
    3. ``None`` if nothing was found.

    Returns:
        The data folder (holding e.g. ``mnist.npz`` and ``COVID-CT/``), or ``None``.

    Examples:
        >>> from camkit.datasets import default_data_root
        >>> root = default_data_root()
        >>> root is None or root.name == "data" or "CAMKIT_DATA" in __import__("os").environ
        True
    """
    env = os.environ.get("CAMKIT_DATA")
    if env:
        return Path(env).expanduser()
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        candidate = folder / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None
