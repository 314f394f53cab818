"""Path checks, list-file reading and image decoding shared by the dataset loaders (private).

Every error names the argument or the file, what was expected and what was found.

Images are decoded with Pillow, not ``torchvision.io.decode_image``: on the 200 BSDS500 training
JPEGs the two give identical bits (so the MNIST-M caches would not change), but ``decode_image``
reads no BMP or TIFF, which `IMAGE_EXTENSIONS` accepts, and the CT datasets hand PIL images
to their transforms (the torchvision convention), so one decoder serves every loader:
`open_rgb`, which scales 16-bit grey images by their range rather than clipping them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from camkit._checks import check_int

PathLike = str | os.PathLike[str]
"""A file-system path given as ``str`` or ``os.PathLike``."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
"""File-name suffixes (lower case) that folder-based loaders treat as images."""


def as_path(value: object, name: str) -> Path:
    """``Path(value)`` for a ``str`` or ``os.PathLike``; a ``TypeError`` naming ``name`` else."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise TypeError(f"{name}: expected a str or os.PathLike path, got {type(value).__name__}")


def require_dir(path: Path, name: str, what: str) -> None:
    """Raise ``FileNotFoundError`` unless ``path`` is a folder."""
    if path.is_dir():
        return
    got = "a file" if path.exists() else "nothing (it does not exist)"
    raise FileNotFoundError(f"{name}: expected {what} at {path}, found {got}")


def require_file(path: Path, name: str, what: str) -> None:
    """Raise ``FileNotFoundError`` unless ``path`` is a file."""
    if path.is_file():
        return
    got = "a folder" if path.exists() else "nothing (it does not exist)"
    raise FileNotFoundError(f"{name}: expected {what} at {path}, found {got}")


def check_seed(seed: object, name: str = "seed") -> int:
    """A non-negative int seed (numpy integers accepted), checked by ``check_int``."""
    if isinstance(seed, np.integer):
        seed = int(seed)
    return check_int(seed, name, minimum=0)


def files_in(folder: Path) -> set[str]:
    """Names of the regular files (or links to them) directly inside ``folder``."""
    with os.scandir(folder) as it:
        return {entry.name for entry in it if entry.is_file()}


def image_files(folder: Path) -> list[str]:
    """Sorted names of the image files in ``folder`` (by suffix; hidden files are not images)."""
    return sorted(
        name
        for name in files_in(folder)
        if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
    )


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as ``(line_number, stripped_text)``, numbered from 1."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: expected a UTF-8 text file, could not decode it ({err})"
        ) from err
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """``img`` as 8-bit RGB; 16-bit grey scaled by the 16-bit range, float pixels refused."""
    if img.mode in _SIXTEEN_BIT:
        values = np.asarray(img)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:  # mode "I" is 32-bit: only 16-bit contents have a known range
            raise OSError(
                f"image {path}: expected 8- or 16-bit pixels (0 to 65535), got 32-bit integers "
                f"from {low} to {high}"
            )
        # round(v * 255 / 65535): 0 -> 0, 65535 -> 255, every level kept in order (no clipping)
        eight = (values.astype(np.uint32) * 255 + 32767) // 65535
        return Image.fromarray(eight.astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        raise OSError(
            f"image {path}: expected 8- or 16-bit integer pixels, got 32-bit floats (mode F), "
            "whose range is unknown; convert the file to 8- or 16-bit first"
        )
    return img.convert("RGB")


def open_rgb(path: Path) -> Image.Image:
    """Open an image file fully decoded as 8-bit RGB; errors name the file.

    8-bit images are converted with Pillow's ``convert("RGB")``. 16-bit grey images (Pillow modes
    ``I;16*``, and ``I`` with values in 0…65535; medical images often are) are scaled by the
    16-bit range, ``round(v · 255 / 65535)``, then repeated over the three channels: Pillow's own
    conversion would clip every value above 255 to white. 32-bit float images (mode ``F``) and
    32-bit integers outside 0…65535 are refused (their range is unknown).
    """
    try:
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image {path}: file does not exist") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise OSError(
            f"image {path}: could not be decoded as an image ({type(err).__name__}: {err})"
        ) from err
    return _to_rgb(img, path)


def missing_error(
    list_file: Path, folder: Path, missing: list[tuple[int, str]], on_disk: int
) -> FileNotFoundError:
    """The error for listed names not on disk: the first one with its line, and a count."""
    line, name = missing[0]
    more = f" ({len(missing) - 1} more listed names are missing too)" if len(missing) > 1 else ""
    return FileNotFoundError(
        f"{list_file}:{line}: lists {name!r}, but {folder / name} does not exist "
        f"({on_disk} files in {folder}){more}"
    )


def check_no_duplicates(list_file: Path, names: Sequence[tuple[int, str]]) -> None:
    """Raise ``ValueError`` naming both lines when a name is listed twice."""
    first_seen: dict[str, int] = {}
    for line, name in names:
        if name in first_seen:
            raise ValueError(
                f"{list_file}:{line}: {name!r} is listed twice (first on line {first_seen[name]}); "
                "expected each file name once"
            )
        first_seen[name] = line
