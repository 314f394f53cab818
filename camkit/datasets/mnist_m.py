"""MNIST-M (Ganin & Lempitsky, 2015): MNIST digits blended with BSDS500 photographs, cached."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from PIL import Image

from camkit._checks import check_tensor
from camkit._io import atomic_write
from camkit.datasets._io import (
    IMAGE_EXTENSIONS,
    PathLike,
    as_path,
    check_seed,
    image_files,
    open_rgb,
    require_dir,
)
from camkit.datasets.digits import load_digits_npz

__all__ = ["build_mnist_m", "mnist_m"]


def _digest(digits: np.ndarray) -> str:
    h = hashlib.sha256(str(digits.shape).encode())
    h.update(np.ascontiguousarray(digits).data)
    return h.hexdigest()


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically (`camkit.io`'s temporary file and replace)."""
    atomic_write(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]


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
    with a suffix in [`IMAGE_EXTENSIONS`][camkit.IMAGE_EXTENSIONS]) in sorted file-name
    order, each loaded as RGB:

    1. ``photo_index = rng.integers(0, n_photos, size=N)``;
    2. ``top = rng.integers(0, photo_height[photo_index] - H + 1)``;
    3. ``left = rng.integers(0, photo_width[photo_index] - W + 1)``;

    and digit ``i`` uses ``photo[top[i]:top[i]+H, left[i]:left[i]+W]``. The work is vectorised
    per photo (one Python iteration per photo, not per digit), and each photo is decoded once.

    With ``cache_path``, an existing file is loaded (and checked: shape, ``seed``, and a sha256 of
    the digits must match, otherwise a `ValueError` asks to delete it); a missing file is
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
        TypeError: ``mnist_images`` is not ``uint8``, or ``seed`` is not an int.
        ValueError: ``mnist_images`` is not 3-D, a negative ``seed``, a photo smaller than the
            digits, or a cache file that does not match.
        FileNotFoundError: ``bsds_dir`` is missing or holds no photographs.
        OSError: a photograph cannot be decoded (the message names it).

    Examples:
        Two random "photographs" stand in for BSDS500 here:

        >>> import pathlib, tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> from camkit.datasets import build_mnist_m
        >>> photos = pathlib.Path(tempfile.mkdtemp())
        >>> rng = np.random.default_rng(0)
        >>> for name in ("a.png", "b.png"):
        ...     Image.fromarray(rng.integers(0, 256, (40, 50, 3), np.uint8)).save(photos / name)
        >>> digits = np.zeros((8, 28, 28), np.uint8)
        >>> images, meta = build_mnist_m(digits, photos, seed=0, return_meta=True)
        >>> images.shape, images.dtype, meta["photo_files"]
        ((8, 28, 28, 3), dtype('uint8'), ['a.png', 'b.png'])
        >>> i, top, left = 3, meta["top"][3], meta["left"][3]
        >>> photo = np.asarray(Image.open(photos / meta["photo_files"][meta["photo_index"][i]]))
        >>> bool((images[i] == photo[top : top + 28, left : left + 28]).all())  # |patch - 0|
        True
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
    seed = check_seed(seed)
    n, h, w = digits.shape

    cache = None if cache_path is None else as_path(cache_path, "cache_path")
    digest = _digest(digits) if cache is not None else ""
    if cache is not None and cache.exists():
        images, meta = _load_mnist_m_cache(cache, digits.shape, seed, digest)
        return (images, meta) if return_meta else images

    bsds = as_path(bsds_dir, "bsds_dir")
    require_dir(bsds, "bsds_dir", "a folder of BSDS500 photographs")
    photo_files = image_files(bsds)
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
        photo = np.asarray(open_rgb(bsds / photo_files[p]))
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
    [`build_mnist_m`][camkit.build_mnist_m] for how caches are checked and written);
    ``cache_dir`` is created if needed. The labels are those of MNIST.

    Args:
        mnist_npz: MNIST in the [`load_digits_npz`][camkit.load_digits_npz] layout
            (grayscale).
        bsds_dir: folder of photographs, e.g. ``BSDS500/images/train``.
        cache_dir: folder for the two cache files.
        seed: non-negative int seed.

    Returns:
        ``x_train``/``x_test`` (``uint8``, ``(N, H, W, 3)``) and ``y_train``/``y_test``, the same
        layout as [`load_digits_npz`][camkit.load_digits_npz], ready for
        [`DigitsDataset`][camkit.DigitsDataset].

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``mnist_npz`` is malformed or not grayscale, a negative ``seed``, or a stale
            cache.
        FileNotFoundError: ``mnist_npz`` or ``bsds_dir`` is missing.

    Examples:
        On the staged data (not run here: it reads ``mnist.npz`` and BSDS500 from ``data``):

        ```python
        data = mnist_m(data / "mnist.npz", data / "BSDS500" / "images" / "train", "cache")
        data["x_train"].shape  # (60000, 28, 28, 3)
        train = DigitsDataset(data["x_train"], data["y_train"])
        ```
    """
    npz = as_path(mnist_npz, "mnist_npz")
    data = load_digits_npz(npz)
    if data["x_train"].ndim != 3:
        raise ValueError(
            f"{npz}: key 'x_train': expected grayscale digits (N, H, W), "
            f"got {data['x_train'].shape}"
        )
    seed = check_seed(seed)
    train_seed, test_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    cache = as_path(cache_dir, "cache_dir")
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
