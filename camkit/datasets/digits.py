"""Digit datasets held in memory: MNIST and USPS from ``.npz`` archives or torchvision."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from camkit._checks import check_choice, check_int, check_tensor
from camkit.datasets._io import PathLike, as_path, require_file

__all__ = ["DigitsDataset", "load_digits_npz", "mnist", "usps"]

_DIGIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_digits_npz(path: PathLike, num_classes: int = 10) -> dict[str, np.ndarray]:
    """Load a digits ``.npz`` archive with keys ``x_train, y_train, x_test, y_test``.

    The images must be ``uint8`` of shape ``(N, H, W)`` (grayscale) or ``(N, H, W, 3)`` (RGB), the
    same ``H, W`` for train and test; the labels integer ``(N,)`` arrays in ``[0, num_classes)``,
    with ``N`` matching the images. This is the layout of ``mnist.npz`` and ``usps.npz`` in the
    staged data.

    Args:
        path: the ``.npz`` file.
        num_classes: the number of classes the labels must lie below (10 digits).

    Returns:
        The four arrays, as stored (other keys in the archive are not returned).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable ``.npz`` archive, a key is missing, or an array
            has a wrong dtype or shape. The message names the file and the key.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from camkit.datasets import load_digits_npz
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "digits.npz"
        >>> np.savez(path, x_train=np.zeros((5, 28, 28), np.uint8), y_train=np.arange(5),
        ...          x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.array([7, 2]))
        >>> data = load_digits_npz(path)
        >>> data["x_train"].shape, data["x_test"].dtype, data["y_test"].tolist()
        ((5, 28, 28), dtype('uint8'), [7, 2])

        The staged ``mnist.npz`` gives ``x_train`` of shape ``(60000, 28, 28)``.
    """
    p = as_path(path, "path")
    check_int(num_classes, "num_classes", minimum=1)
    require_file(p, "path", "a digits .npz file")
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
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(
                f"{p}: key {yk!r}: expected labels in [0, {num_classes - 1}] "
                f"(num_classes={num_classes}), got values in [{int(y.min())}, {int(y.max())}]"
            )
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
        check_choice(channels, "channels", (None, 1, 3))
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
    path = as_path(source, "root_or_npz")
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
    """MNIST as a `DigitsDataset` of ``(1, 28, 28)`` float tensors in ``[0, 1]``.

    Args:
        root_or_npz: a ``.npz`` file in the
            [`load_digits_npz`][camkit.load_digits_npz] layout, or else a folder handed
            to ``torchvision.datasets.MNIST(root, train=train, download=download)``.
        train: the 60,000 training digits (``True``) or the 10,000 test digits.
        download: let torchvision download MNIST into the folder (ignored for ``.npz``).
        transform: see [`DigitsDataset`][camkit.DigitsDataset].
        channels: see [`DigitsDataset`][camkit.DigitsDataset]; ``3`` gives
            ``(3, 28, 28)``.

    Returns:
        The chosen split.

    Raises:
        FileNotFoundError: the ``.npz`` file does not exist.
        ValueError: the ``.npz`` is malformed or its images are not 28x28.
        RuntimeError: from torchvision, when the folder holds no MNIST and ``download`` is False.

    Examples:
        From an archive in the [`load_digits_npz`][camkit.load_digits_npz] layout (here a
        tiny one; the staged ``mnist.npz`` gives 60,000 and 10,000 digits):

        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from camkit.datasets import mnist
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "mnist.npz"
        >>> np.savez(path, x_train=np.zeros((5, 28, 28), np.uint8), y_train=np.arange(5),
        ...          x_test=np.full((2, 28, 28), 255, np.uint8), y_test=np.array([7, 2]))
        >>> test = mnist(path, train=False, channels=3)
        >>> x, y = test[0]
        >>> len(test), tuple(x.shape), float(x.max()), y
        (2, (3, 28, 28), 1.0, 7)
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
    """USPS as a `DigitsDataset` of ``(1, 16, 16)`` float tensors in ``[0, 1]``.

    Labels run 0..9 (the digit "0" is label 0), as in ``torchvision.datasets.USPS``.

    Args:
        root_or_npz: a ``.npz`` file in the
            [`load_digits_npz`][camkit.load_digits_npz] layout, or else a folder handed
            to ``torchvision.datasets.USPS(root, train=train, download=download)``.
        train: the 7,291 training digits (``True``) or the 2,007 test digits.
        download: let torchvision download USPS into the folder (ignored for ``.npz``).
        transform: see [`DigitsDataset`][camkit.DigitsDataset].
        channels: see [`DigitsDataset`][camkit.DigitsDataset].

    Returns:
        The chosen split.

    Raises:
        FileNotFoundError: the ``.npz`` file (or, from torchvision, the ``.bz2`` file) is missing.
        ValueError: the ``.npz`` is malformed or its images are not 16x16.

    Examples:
        As for [`mnist`][camkit.mnist], from an archive or a torchvision folder (not run
        here: it reads the staged data, 7,291 training digits of shape ``(1, 16, 16)``):

        ```python
        train = usps(data_root / "usps.npz")
        test = usps(data_root / "usps.npz", train=False)
        ```
    """
    return _digits(root_or_npz, train, download, transform, channels, "USPS", 16)


MNIST_SIDE, MNIST_BOX = 28, 20  # MNIST centres each digit's 20×20 box in a 28×28 frame


def frame_like_mnist(images: torch.Tensor) -> torch.Tensor:
    """Frame USPS digits as MNIST frames its digits: each resized to 20×20 and padded into 28×28.

    A USPS digit fills its 16×16 frame; an MNIST digit sits in a 20×20 box with a 4-pixel empty
    border. A model trained on MNIST sees USPS digits at MNIST's scale only once they are framed
    the same way; a plain resize of USPS to 28×28 draws every digit larger than any MNIST digit
    (the digits benchmark's baseline reaches about 96.9 % on USPS framed, see the docs' results
    page).

    Shape:
        - images: ``(N, H, W)`` or ``(N, C, H, W)`` (any ``H × W``, usually 16×16), float in
          ``[0, 1]`` or ``uint8``.
        - output: the same layout at 28×28, the same dtype.

    Convention:
        Bilinear resize with antialiasing (``align_corners=False``), then a zero border (MNIST's
        background); ``uint8`` input is resized in float and rounded back.

    Examples:
        >>> import torch
        >>> digits = torch.ones(2, 1, 16, 16)
        >>> framed = frame_like_mnist(digits)
        >>> framed.shape, framed[0, 0, 4:24, 4:24].min().item(), framed[0, 0, :4].max().item()
        (torch.Size([2, 1, 28, 28]), 1.0, 0.0)
    """
    check_tensor(images, "images", ndim=(3, 4), dtype=(torch.uint8, torch.float32, torch.float64))
    x = images[:, None] if images.ndim == 3 else images
    x = x.float() if x.dtype == torch.uint8 else x
    x = F.interpolate(x, size=(MNIST_BOX, MNIST_BOX), mode="bilinear", antialias=True)
    border = (MNIST_SIDE - MNIST_BOX) // 2
    x = F.pad(x, (border, border, border, border))
    if images.dtype == torch.uint8:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x[:, 0] if images.ndim == 3 else x
