"""Tests for camkit.datasets.

Tests marked ``data`` read the staged real data found by ``tests.helpers.data_root()`` and are
skipped when it is absent. Everything else runs on small trees generated in ``tmp_path``.
"""

from __future__ import annotations

import doctest
import importlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import camkit.datasets as cds
from camkit.datasets import (
    COVIDCT,
    COVIDxCT,
    DigitsDataset,
    build_mnist_m,
    load_digits_npz,
    mnist,
    mnist_m,
    usps,
)
from tests.helpers import data_root

# ------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------


def _data_path(*parts: str) -> Path:
    root = data_root()
    if root is None:
        pytest.skip(
            "staged data not found: set CAMKIT_DATA or put shared/data above the repository"
        )
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"staged data file {path} is not present")
    return path


@pytest.fixture(scope="module")
def covid_ct_root() -> Path:
    return _data_path("COVID-CT")


@pytest.fixture(scope="module")
def mnist_npz() -> dict[str, np.ndarray]:
    return load_digits_npz(_data_path("mnist.npz"))


def _png(path: Path, size: tuple[int, int] = (16, 12), mode: str = "L", value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def _make_covid_ct(root: Path) -> Path:
    """A small COVID-CT tree: 4 COVID and 4 NonCOVID images, split 2/1/1 per class."""
    for cls, prefix in (("COVID", "c"), ("NonCOVID", "n")):
        names = [f"{prefix}{k}.png" for k in range(4)]
        for k, name in enumerate(names):
            _png(root / f"CT_{cls}" / name, value=40 * k, mode="RGBA" if k == 0 else "L")
        split_dir = root / "Data-split" / cls
        split_dir.mkdir(parents=True)
        (split_dir / f"trainCT_{cls}.txt").write_text(f"{names[0]}\n{names[1]}\n")
        (split_dir / f"valCT_{cls}.txt").write_text(f"{names[2]}\r\n\r\n")  # CRLF + blank line
        (split_dir / f"testCT_{cls}.txt").write_text(names[3])  # no final newline
    return root


# ------------------------------------------------------------------------------------------
# the package's public names
# ------------------------------------------------------------------------------------------


def test_public_names_and_no_data_folder_lookup():
    assert sorted(cds.__all__) == [
        "COVIDCT", "COVIDxCT", "DigitsDataset", "IMAGE_EXTENSIONS", "MEDMNIST_MD5", "MedMNIST",
        "SARSCoV2CT", "SplitImageFolder", "build_mnist_m", "frame_like_mnist", "load_digits_npz",
        "medmnist", "mnist", "mnist_m", "usps",
    ]  # fmt: skip
    assert all(hasattr(cds, name) for name in cds.__all__)
    assert not hasattr(cds, "default_data_root")  # the library knows no repository folder
    assert cds.COVIDCT.__module__ == "camkit.datasets.covid"
    assert cds.build_mnist_m.__module__ == "camkit.datasets.mnist_m"


# ------------------------------------------------------------------------------------------
# COVID-CT (real data)
# ------------------------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.parametrize(
    ("split", "n_noncovid", "n_covid"), [("train", 234, 191), ("val", 58, 60), ("test", 105, 98)]
)
def test_covidct_real_split_sizes_and_labels(covid_ct_root, split, n_noncovid, n_covid):
    ds = COVIDCT(covid_ct_root, split=split)
    assert len(ds) == n_noncovid + n_covid
    assert ds.targets.count(0) == n_noncovid
    assert ds.targets.count(1) == n_covid
    assert ds.classes == ["NonCOVID", "COVID"]
    assert ds.class_to_idx == {"NonCOVID": 0, "COVID": 1}
    for path, label in ds.samples:
        assert isinstance(path, Path)
        assert path.parent.name == ("CT_COVID" if label == 1 else "CT_NonCOVID")
    assert ds.targets == [label for _, label in ds.samples]
    assert repr(ds) == (
        f"COVIDCT(split={split!r}, {len(ds)} images: NonCOVID={n_noncovid}, COVID={n_covid})"
    )


@pytest.mark.data
def test_covidct_real_splits_disjoint_and_cover_all(covid_ct_root):
    parts = {s: {p for p, _ in COVIDCT(covid_ct_root, split=s).samples} for s in COVIDCT.splits}
    assert not parts["train"] & parts["val"]
    assert not parts["train"] & parts["test"]
    assert not parts["val"] & parts["test"]
    on_disk = {p for d in ("CT_COVID", "CT_NonCOVID") for p in (covid_ct_root / d).iterdir()}
    assert len(on_disk) == 349 + 397
    assert parts["train"] | parts["val"] | parts["test"] == on_disk


@pytest.mark.data
def test_covidct_real_every_item_loads_as_rgb(covid_ct_root):
    n = 0
    for split in COVIDCT.splits:
        ds = COVIDCT(covid_ct_root, split=split)
        for i in range(len(ds)):
            image, label = ds[i]
            assert isinstance(image, Image.Image)
            assert image.mode == "RGB"
            assert min(image.size) >= 61 and max(image.size) <= 512
            assert label == ds.targets[i]
            n += 1
    assert n == 746


@pytest.mark.data
def test_covidct_real_transform_gives_tensor(covid_ct_root):
    from torchvision.transforms.functional import pil_to_tensor

    ds = COVIDCT(covid_ct_root, split="val", transform=pil_to_tensor)
    x, y = ds[len(ds) - 1]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.uint8
    assert x.shape[0] == 3 and y == 1


# ------------------------------------------------------------------------------------------
# COVID-CT (generated tree: behaviour and errors)
# ------------------------------------------------------------------------------------------


def test_covidct_generated_tree(tmp_path):
    root = _make_covid_ct(tmp_path / "COVID-CT")
    sizes = {s: len(COVIDCT(root, split=s)) for s in COVIDCT.splits}
    assert sizes == {"train": 4, "val": 2, "test": 2}
    ds = COVIDCT(str(root), split="train", transform=lambda im: (im.mode, im.size))
    assert [p.name for p, _ in ds.samples] == ["n0.png", "n1.png", "c0.png", "c1.png"]
    assert ds.targets == [0, 0, 1, 1]
    assert ds[0] == (("RGB", (16, 12)), 0)  # RGBA converted to RGB
    assert ds[3] == (("RGB", (16, 12)), 1)


def test_covidct_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="root") as err:
        COVIDCT(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


def test_covidct_unknown_split(tmp_path):
    root = _make_covid_ct(tmp_path / "COVID-CT")
    with pytest.raises(ValueError, match=r"split: expected one of 'train', 'val', 'test'.*'valid'"):
        COVIDCT(root, split="valid")


def test_covidct_missing_split_file(tmp_path):
    root = _make_covid_ct(tmp_path / "COVID-CT")
    missing = root / "Data-split" / "COVID" / "testCT_COVID.txt"
    missing.unlink()
    with pytest.raises(FileNotFoundError) as err:
        COVIDCT(root, split="test")
    assert str(missing) in str(err.value)
    COVIDCT(root, split="train")  # other splits still work


def test_covidct_missing_image_folder(tmp_path):
    root = _make_covid_ct(tmp_path / "COVID-CT")
    (root / "CT_NonCOVID").rename(root / "elsewhere")
    with pytest.raises(FileNotFoundError) as err:
        COVIDCT(root)
    assert str(root / "CT_NonCOVID") in str(err.value)


def test_covidct_listed_name_missing_on_disk(tmp_path):
    root = _make_covid_ct(tmp_path / "COVID-CT")
    (root / "CT_COVID" / "c1.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        COVIDCT(root, split="train")
    list_file = root / "Data-split" / "COVID" / "trainCT_COVID.txt"
    assert f"{list_file}:2:" in str(err.value)
    assert "'c1.png'" in str(err.value)


@pytest.mark.parametrize(
    ("split", "list_name", "text", "match", "needles"),
    [
        ("val", "NonCOVID/valCT_NonCOVID.txt", "\n  \n", "empty", ["{list_file}"]),
        (
            "train",
            "COVID/trainCT_COVID.txt",
            "c0.png\nc1.png\nc0.png\n",
            "listed twice",
            ["{list_file}:3:", "line 1"],
        ),
    ],
    ids=["empty_split", "duplicate_name"],
)
def test_covidct_bad_split_list(tmp_path, split, list_name, text, match, needles):
    root = _make_covid_ct(tmp_path / "COVID-CT")
    list_file = root / "Data-split" / list_name
    list_file.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        COVIDCT(root, split=split)
    for needle in needles:
        assert needle.format(list_file=list_file) in str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_covidct_corrupt_image_raises_on_load(tmp_path, damage):
    root = _make_covid_ct(tmp_path / "COVID-CT")
    bad = root / "CT_COVID" / "c3.png"
    if damage == "garbage":
        bad.write_bytes(b"this is not an image")
    else:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:300])
    ds = COVIDCT(root, split="test")  # construction does not decode images
    ds[0]
    with pytest.raises(OSError, match="could not be decoded") as err:
        ds[1]
    assert str(bad) in str(err.value)


def test_covidct_image_deleted_after_construction(tmp_path):
    root = _make_covid_ct(tmp_path / "COVID-CT")
    ds = COVIDCT(root, split="test")
    (root / "CT_COVID" / "c3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"c3\.png"):
        ds[1]


# ------------------------------------------------------------------------------------------
# COVIDx-CT
# ------------------------------------------------------------------------------------------


def _real_covidx_lines() -> list[str]:
    """First 20 lines of the real 3A test list, plus the first 3 Normal and 3 Pneumonia lines."""
    path = _data_path("COVIDx-CT", "test_COVIDx_CT-3A.txt")
    lines = path.read_text().splitlines()
    chosen = lines[:20]
    for cls in ("0", "1"):
        chosen += [ln for ln in lines if ln.split()[1] == cls][:3]
    return chosen


def _position_image(width: int, height: int) -> Image.Image:
    """RGB image whose pixel (x, y) is (x % 256, y % 256, 0): crops reveal their position."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    rgb = np.stack([xs % 256, ys % 256, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.fixture(scope="module")
def covidx_tree(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    lines = _real_covidx_lines()
    root = tmp_path_factory.mktemp("covidx") / "images"
    root.mkdir()
    for line in lines:
        name, _, _, _, xmax, ymax = line.split()
        side = max(512, int(xmax), int(ymax))
        _position_image(side, side).save(root / name)
    list_file = root.parent / "test_small.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return root, list_file, lines


@pytest.mark.data
def test_covidx_labels_and_crop(covidx_tree):
    root, list_file, lines = covidx_tree
    ds = COVIDxCT(root, list_file)
    assert len(ds) == 26
    assert ds.classes == ["Normal", "Pneumonia", "COVID-19"]
    assert ds.targets == [int(ln.split()[1]) for ln in lines]
    assert ds.targets.count(2) == 20 and ds.targets.count(0) == 3 and ds.targets.count(1) == 3
    assert ds.boxes[0] == (0, 130, 512, 429)  # NCP_341_1834_0022.png 2 0 130 512 429
    for i, line in enumerate(lines):
        name, cls, xmin, ymin, xmax, ymax = line.split()
        xmin, ymin, xmax, ymax = int(xmin), int(ymin), int(xmax), int(ymax)
        image, label = ds[i]
        assert ds.samples[i][0] == root / name
        assert label == int(cls)
        assert image.mode == "RGB"
        assert image.size == (xmax - xmin, ymax - ymin)
        pixels = np.asarray(image)
        assert tuple(pixels[0, 0]) == (xmin % 256, ymin % 256, 0)
        assert tuple(pixels[-1, -1]) == ((xmax - 1) % 256, (ymax - 1) % 256, 0)


@pytest.mark.data
def test_covidx_no_crop_and_transform(covidx_tree):
    root, list_file, _ = covidx_tree
    ds = COVIDxCT(root, list_file, crop_to_box=False, transform=lambda im: im.size)
    assert ds[0] == ((512, 512), 2)
    cropped = COVIDxCT(root, list_file, transform=lambda im: im.size)
    assert cropped[0] == ((512, 299), 2)


def _covidx_case(tmp_path: Path, *lines: str) -> tuple[Path, Path]:
    root = tmp_path / "img"
    _png(root / "a.png", size=(64, 48))
    _png(root / "b.png", size=(64, 48))
    list_file = tmp_path / "list.txt"
    list_file.write_text("".join(line + "\n" for line in lines))
    return root, list_file


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("b.png 1 0 0 10", "expected 6 space-separated fields"),
        ("b.png 1 0 0 10 10 7", "got 7"),
        ("b.png 3 0 0 10 10", "expected class 0 .Normal., 1 .Pneumonia. or 2 .COVID-19., got 3"),
        ("b.png -1 0 0 10 10", "got -1"),
        ("b.png one 0 0 10 10", "expected integer class and box fields"),
        ("b.png 1 0 0 10.5 10", "expected integer class and box fields"),
        ("b.png 1 10 0 10 10", r"0 <= xmin < xmax"),
        ("b.png 1 12 0 10 10", r"got \(xmin, ymin, xmax, ymax\) = \(12, 0, 10, 10\)"),
        ("b.png 1 0 20 10 5", r"ymin < ymax"),
        ("b.png 1 -2 0 10 10", r"0 <= xmin"),
    ],
)
def test_covidx_malformed_line(tmp_path, bad_line, message):
    root, list_file = _covidx_case(tmp_path, "a.png 0 0 0 64 48", bad_line)
    with pytest.raises(ValueError, match=message) as err:
        COVIDxCT(root, list_file)
    assert f"{list_file}:2:" in str(err.value)


def test_covidx_missing_image(tmp_path):
    root, list_file = _covidx_case(tmp_path, "a.png 0 0 0 64 48", "", "zzz.png 2 0 0 8 8")
    with pytest.raises(FileNotFoundError) as err:
        COVIDxCT(root, list_file)
    assert f"{list_file}:3:" in str(err.value)  # blank line 2 still counts
    assert str(root / "zzz.png") in str(err.value)


def test_covidx_missing_paths_empty_and_duplicates(tmp_path):
    root, list_file = _covidx_case(tmp_path, "a.png 0 0 0 64 48")
    with pytest.raises(FileNotFoundError, match="split_file") as err:
        COVIDxCT(root, tmp_path / "nope.txt")
    assert str(tmp_path / "nope.txt") in str(err.value)
    with pytest.raises(FileNotFoundError, match="root") as err:
        COVIDxCT(tmp_path / "noimg", list_file)
    assert str(tmp_path / "noimg") in str(err.value)
    list_file.write_text("\n")
    with pytest.raises(ValueError, match="empty") as err:
        COVIDxCT(root, list_file)
    assert str(list_file) in str(err.value)
    list_file.write_text("a.png 0 0 0 64 48\nb.png 0 0 0 64 48\na.png 1 0 0 8 8\n")
    with pytest.raises(ValueError, match="listed twice") as err:
        COVIDxCT(root, list_file)
    assert f"{list_file}:3:" in str(err.value)


def test_covidx_box_outside_image_and_corrupt_image(tmp_path):
    root, list_file = _covidx_case(tmp_path, "a.png 0 0 0 64 48", "b.png 1 0 0 65 48")
    ds = COVIDxCT(root, list_file)
    assert ds[0][0].size == (64, 48)
    with pytest.raises(ValueError, match="does not fit inside the 64x48 image") as err:
        ds[1]
    assert str(root / "b.png") in str(err.value) and f"{list_file}:2" in str(err.value)
    assert COVIDxCT(root, list_file, crop_to_box=False)[1][0].size == (64, 48)
    (root / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(OSError, match="could not be decoded") as err:
        ds[0]
    assert str(root / "a.png") in str(err.value)


# ------------------------------------------------------------------------------------------
# digits: real npz files
# ------------------------------------------------------------------------------------------


@pytest.mark.data
def test_mnist_npz_real_counts(mnist_npz):
    assert mnist_npz["x_train"].shape == (60000, 28, 28)
    assert mnist_npz["x_test"].shape == (10000, 28, 28)
    assert mnist_npz["x_train"].dtype == np.uint8
    assert np.bincount(mnist_npz["y_train"]).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]  # fmt: skip
    assert np.bincount(mnist_npz["y_test"]).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009
    ]  # fmt: skip
    assert mnist_npz["y_train"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist_npz["y_test"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@pytest.mark.data
def test_usps_npz_real_counts():
    data = load_digits_npz(_data_path("usps.npz"))
    assert data["x_train"].shape == (7291, 16, 16)
    assert data["x_test"].shape == (2007, 16, 16)
    train_counts = np.bincount(data["y_train"]).tolist()
    test_counts = np.bincount(data["y_test"]).tolist()
    assert train_counts[:4] == [1194, 1005, 731, 658]
    assert test_counts[:4] == [359, 264, 198, 166]
    assert sum(train_counts) == 7291 and sum(test_counts) == 2007
    assert data["y_train"][:10].tolist() == [6, 5, 4, 7, 3, 6, 3, 1, 0, 1]


@pytest.mark.data
def test_mnist_and_usps_from_npz(mnist_npz):
    train = mnist(_data_path("mnist.npz"))
    test = mnist(str(_data_path("mnist.npz")), train=False)
    assert (len(train), len(test)) == (60000, 10000)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 5
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    expected = torch.from_numpy(mnist_npz["x_train"][0]).float() / 255
    torch.testing.assert_close(x[0], expected, rtol=0, atol=0)
    assert test[0][1] == 7
    x3, _ = mnist(_data_path("mnist.npz"), channels=3)[0]
    assert x3.shape == (3, 28, 28) and torch.equal(x3[0], x3[2])
    u = usps(_data_path("usps.npz"), train=False)
    assert len(u) == 2007 and u[0][0].shape == (1, 16, 16)
    with pytest.raises(ValueError, match=r"expected MNIST images of shape \(N, 28, 28\)") as err:
        mnist(_data_path("usps.npz"))
    assert "usps.npz" in str(err.value)


# ------------------------------------------------------------------------------------------
# digits: generated data and errors
# ------------------------------------------------------------------------------------------


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _good_digits(n_train: int = 6, n_test: int = 4, size: int = 28) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def test_load_digits_npz_roundtrip(tmp_path):
    arrays = _good_digits()
    data = load_digits_npz(_save_npz(tmp_path / "d.npz", **arrays, extra=np.zeros(3)))
    assert sorted(data) == ["x_test", "x_train", "y_test", "y_train"]
    for key, value in arrays.items():
        np.testing.assert_array_equal(data[key], value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y_test": None}, r"missing key 'y_test'"),
        ({"x_train": np.zeros((6, 28, 28), np.float32)}, r"'x_train': expected dtype uint8"),
        ({"x_train": np.zeros((6, 28, 28, 4), np.uint8)}, r"'x_train': expected shape \(N, H, W\)"),
        ({"x_test": np.zeros((4, 16, 16), np.uint8)}, r"'x_test': expected images of shape"),
        ({"y_train": np.zeros(5, np.uint8)}, r"'y_train': expected shape \(6,\) to match"),
        ({"y_train": np.zeros(6, np.float32)}, r"'y_train': expected an integer dtype"),
        ({"y_test": -np.ones(4, np.int64)}, r"'y_test': expected labels in \[0, 9\]"),
    ],
)
def test_load_digits_npz_invalid(tmp_path, change, message):
    arrays = _good_digits()
    arrays.update(change)
    path = _save_npz(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(ValueError, match=message) as err:
        load_digits_npz(path)
    assert str(path) in str(err.value)


def test_load_digits_npz_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="path") as err:
        load_digits_npz(tmp_path / "none.npz")
    assert str(tmp_path / "none.npz") in str(err.value)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"could not be read as a \.npz archive") as err:
        load_digits_npz(text)
    assert str(text) in str(err.value)
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match=r"single \.npy array") as err:
        load_digits_npz(npy)
    assert str(npy) in str(err.value)


def test_digits_dataset_gray_rgb_and_transform():
    gray = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    ds = DigitsDataset(gray, np.array([3, 8], dtype=np.uint8))
    x, y = ds[1]
    assert x.shape == (1, 4, 5) and x.dtype == torch.float32 and y == 8 and isinstance(y, int)
    torch.testing.assert_close(x[0], torch.from_numpy(gray[1]).float() / 255, rtol=0, atol=0)
    assert ds.targets == [3, 8] and ds.labels.dtype == torch.int64 and len(ds) == 2

    rgb = torch.zeros(3, 4, 5, 3, dtype=torch.uint8)
    rgb[..., 1] = 255
    ds_rgb = DigitsDataset(rgb, torch.tensor([0, 1, 2]), transform=lambda t: t.sum(dim=(1, 2)))
    sums, label = ds_rgb[2]
    assert sums.tolist() == [0.0, 20.0, 0.0] and label == 2

    x3, _ = DigitsDataset(gray, [1, 2], channels=3)[0]
    assert x3.shape == (3, 4, 5) and torch.equal(x3[0], x3[1])
    x3[0].zero_()  # repeat, not a view: the stored images are untouched
    assert DigitsDataset(gray, [1, 2], channels=3)[0][0].sum() > 0

    readonly = gray.copy()
    readonly.flags.writeable = False
    assert DigitsDataset(readonly, [1, 2])[0][0].shape == (1, 4, 5)


def test_digits_dataset_errors():
    gray = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(TypeError, match=r"images: expected dtype torch\.uint8"):
        DigitsDataset(gray.astype(np.float32), [0, 1])
    with pytest.raises(ValueError, match="images: expected a 3 or 4-D tensor"):
        DigitsDataset(np.zeros((4, 4), np.uint8), [0])
    with pytest.raises(ValueError, match=r"images: expected shape \(N, H, W\) or \(N, H, W, 3\)"):
        DigitsDataset(np.zeros((2, 4, 4, 4), np.uint8), [0, 1])
    with pytest.raises(ValueError, match="labels: expected 2 labels to match images, got 3"):
        DigitsDataset(gray, [0, 1, 2])
    with pytest.raises(ValueError, match="labels: expected labels >= 0"):
        DigitsDataset(gray, [0, -1])
    with pytest.raises(TypeError, match="labels: expected an integer tensor"):
        DigitsDataset(gray, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="channels: expected one of None, 1, 3, got 2"):
        DigitsDataset(gray, [0, 1], channels=2)
    with pytest.raises(ValueError, match="channels: 1 was asked for"):
        DigitsDataset(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], channels=1)


def test_mnist_usps_use_torchvision_for_folders(monkeypatch, tmp_path):
    import torchvision.datasets

    calls = []

    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            calls.append(("MNIST", root, train, download))
            self.data = torch.full((3, 28, 28), 255, dtype=torch.uint8)
            self.targets = torch.tensor([1, 2, 3])

    class FakeUSPS:
        def __init__(self, root, train=True, download=False):
            calls.append(("USPS", root, train, download))
            self.data = np.zeros((2, 16, 16), dtype=np.uint8)
            self.targets = [4, 5]

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    monkeypatch.setattr(torchvision.datasets, "USPS", FakeUSPS)
    m = mnist(tmp_path, train=False, download=True)
    u = usps(tmp_path / "usps", channels=3)
    assert calls == [
        ("MNIST", str(tmp_path), False, True),
        ("USPS", str(tmp_path / "usps"), True, False),
    ]
    assert isinstance(m, DigitsDataset) and len(m) == 3 and m[2][1] == 3
    assert float(m[0][0].min()) == 1.0
    assert u[1][0].shape == (3, 16, 16) and u[1][1] == 5


# ------------------------------------------------------------------------------------------
# MNIST-M
# ------------------------------------------------------------------------------------------


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """Three noise photos of different sizes (one exactly 28x28), plus a non-image file."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "bsds"
    folder.mkdir()
    for name, (h, w) in {"p0.png": (30, 41), "p1.png": (45, 29), "p2.png": (28, 28)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "Thumbs.db").write_bytes(b"\0")
    return folder


@pytest.fixture
def digits() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (60, 28, 28), dtype=np.uint8)


def _check_recipe(images, meta, digits, folder: Path, indices) -> None:
    for i in indices:
        photo = np.asarray(Image.open(folder / meta["photo_files"][meta["photo_index"][i]]))
        t, left = int(meta["top"][i]), int(meta["left"][i])
        assert 0 <= t <= photo.shape[0] - 28 and 0 <= left <= photo.shape[1] - 28
        crop = photo[t : t + 28, left : left + 28, :3].astype(np.int16)
        want = np.abs(crop - digits[i][:, :, None].astype(np.int16)).astype(np.uint8)
        np.testing.assert_array_equal(images[i], want)


def test_mnist_m_recipe_and_determinism(photo_dir, digits):
    images, meta = build_mnist_m(digits, photo_dir, seed=5, return_meta=True)
    assert images.shape == (60, 28, 28, 3) and images.dtype == np.uint8
    assert meta["photo_files"] == ["p0.png", "p1.png", "p2.png"]
    assert set(meta["photo_index"].tolist()) == {0, 1, 2}
    _check_recipe(images, meta, digits, photo_dir, range(60))
    np.testing.assert_array_equal(images, build_mnist_m(digits, photo_dir, seed=5))
    other, other_meta = build_mnist_m(digits, photo_dir, seed=6, return_meta=True)
    assert not np.array_equal(images, other)
    assert not np.array_equal(meta["photo_index"], other_meta["photo_index"])
    # the sampling is exactly the documented one
    rng = np.random.default_rng(5)
    heights, widths = np.array([30, 45, 28]), np.array([41, 29, 28])
    index = rng.integers(0, 3, size=60)
    np.testing.assert_array_equal(meta["photo_index"], index)
    np.testing.assert_array_equal(meta["top"], rng.integers(0, heights[index] - 27))
    np.testing.assert_array_equal(meta["left"], rng.integers(0, widths[index] - 27))
    # a tensor input gives the same result
    np.testing.assert_array_equal(images, build_mnist_m(torch.from_numpy(digits), photo_dir, 5))


def test_mnist_m_no_wraparound(photo_dir):
    white = np.full((4, 28, 28), 255, np.uint8)
    black = np.zeros((4, 28, 28), np.uint8)
    on_white, meta = build_mnist_m(white, photo_dir, seed=0, return_meta=True)
    on_black = build_mnist_m(black, photo_dir, seed=0)
    np.testing.assert_array_equal(on_white.astype(int), 255 - on_black.astype(int))
    _check_recipe(on_white, meta, white, photo_dir, range(4))


def test_mnist_m_cache_roundtrip(photo_dir, digits, tmp_path):
    cache = tmp_path / "cache" / "mm.npz"  # the folder is created
    built, meta = build_mnist_m(digits, photo_dir, seed=1, cache_path=cache, return_meta=True)
    assert cache.is_file()
    assert sorted(os.listdir(cache.parent)) == ["mm.npz"]  # no temporary file left
    # loaded from the cache: bsds_dir is not needed any more
    loaded, loaded_meta = build_mnist_m(
        digits, tmp_path / "gone", seed=1, cache_path=cache, return_meta=True
    )
    np.testing.assert_array_equal(loaded, built)
    assert loaded_meta["photo_files"] == meta["photo_files"]
    for key in ("photo_index", "top", "left"):
        np.testing.assert_array_equal(loaded_meta[key], meta[key])
    np.testing.assert_array_equal(build_mnist_m(digits, tmp_path / "gone", 1, str(cache)), built)


def test_mnist_m_cache_mismatch_raises(photo_dir, digits, tmp_path):
    cache = tmp_path / "mm.npz"
    build_mnist_m(digits, photo_dir, seed=1, cache_path=cache)
    with pytest.raises(ValueError, match="seed=2, got seed=1") as err:
        build_mnist_m(digits, photo_dir, seed=2, cache_path=cache)
    assert str(cache) in str(err.value) and "delete it" in str(err.value)
    with pytest.raises(
        ValueError, match=r"expected uint8 images of shape \(59, 28, 28, 3\)"
    ) as err:
        build_mnist_m(digits[:59], photo_dir, seed=1, cache_path=cache)
    assert str(cache) in str(err.value)
    changed = digits.copy()
    changed[0, 0, 0] ^= 1
    with pytest.raises(ValueError, match="different MNIST digits") as err:
        build_mnist_m(changed, photo_dir, seed=1, cache_path=cache)
    assert str(cache) in str(err.value)
    cache.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="could not be read as an MNIST-M cache") as err:
        build_mnist_m(digits, photo_dir, seed=1, cache_path=cache)
    assert str(cache) in str(err.value)
    np.savez(cache, images=np.zeros((60, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="missing photo_index") as err:
        build_mnist_m(digits, photo_dir, seed=1, cache_path=cache)


def test_mnist_m_failed_write_leaves_nothing(photo_dir, digits, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        build_mnist_m(digits, photo_dir, cache_path=tmp_path / "c" / "mm.npz")
    assert os.listdir(tmp_path / "c") == []


def test_mnist_m_errors(photo_dir, digits, tmp_path):
    with pytest.raises(TypeError, match="mnist_images: expected a uint8 array, got dtype float32"):
        build_mnist_m(digits.astype(np.float32), photo_dir)
    with pytest.raises(ValueError, match=r"mnist_images: expected shape \(N, H, W\)"):
        build_mnist_m(digits[..., None], photo_dir)
    with pytest.raises(TypeError, match="mnist_images: expected a numpy array or tensor"):
        build_mnist_m(digits.tolist(), photo_dir)
    with pytest.raises(ValueError, match=r"^seed: expected an int >= 0, got -3"):
        build_mnist_m(digits, photo_dir, seed=-3)
    with pytest.raises(TypeError, match=r"^seed: "):
        build_mnist_m(digits, photo_dir, seed=0.5)
    with pytest.raises(FileNotFoundError, match="bsds_dir") as err:
        build_mnist_m(digits, tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="found none") as err:
        build_mnist_m(digits, empty)
    assert str(empty) in str(err.value)
    _png(photo_dir / "p3.png", size=(40, 20), mode="RGB")  # 20 rows < 28
    with pytest.raises(ValueError, match="at least 28x28 pixels, got 20x40") as err:
        build_mnist_m(digits, photo_dir)
    assert str(photo_dir / "p3.png") in str(err.value)
    (photo_dir / "p3.png").write_bytes(b"junk")
    with pytest.raises(OSError) as err:
        build_mnist_m(digits, photo_dir)
    assert str(photo_dir / "p3.png") in str(err.value)


def test_mnist_m_train_and_test(photo_dir, tmp_path):
    arrays = _good_digits(n_train=12, n_test=5)
    npz = _save_npz(tmp_path / "mini_mnist.npz", **arrays)
    cache_dir = tmp_path / "cache"
    data = mnist_m(npz, photo_dir, cache_dir, seed=3)
    assert data["x_train"].shape == (12, 28, 28, 3) and data["x_test"].shape == (5, 28, 28, 3)
    np.testing.assert_array_equal(data["y_train"], arrays["y_train"])
    np.testing.assert_array_equal(data["y_test"], arrays["y_test"])
    assert sorted(os.listdir(cache_dir)) == ["mnist_m_test_seed3.npz", "mnist_m_train_seed3.npz"]
    train_seed, test_seed = (int(s) for s in np.random.SeedSequence(3).generate_state(2))
    assert train_seed != test_seed
    np.testing.assert_array_equal(
        data["x_train"], build_mnist_m(arrays["x_train"], photo_dir, train_seed)
    )
    np.testing.assert_array_equal(
        data["x_test"], build_mnist_m(arrays["x_test"], photo_dir, test_seed)
    )
    again = mnist_m(npz, tmp_path / "gone", cache_dir, seed=3)  # from the cache
    np.testing.assert_array_equal(again["x_train"], data["x_train"])
    ds = DigitsDataset(data["x_train"], data["y_train"])
    assert ds[0][0].shape == (3, 28, 28)
    rgb_arrays = {
        **arrays,
        "x_train": np.zeros((12, 28, 28, 3), np.uint8),
        "x_test": np.zeros((5, 28, 28, 3), np.uint8),
    }
    rgb = _save_npz(tmp_path / "rgb.npz", **rgb_arrays)
    with pytest.raises(ValueError, match="expected grayscale digits") as err:
        mnist_m(rgb, photo_dir, cache_dir)
    assert str(rgb) in str(err.value)


@pytest.mark.data
def test_mnist_m_real_subset(mnist_npz):
    bsds = _data_path("BSDS500", "images", "train")
    digits = mnist_npz["x_train"][:200]
    images, meta = build_mnist_m(digits, bsds, seed=0, return_meta=True)
    assert images.shape == (200, 28, 28, 3) and images.dtype == np.uint8
    assert len(meta["photo_files"]) == 200 and meta["photo_files"][0] == "100075.jpg"
    _check_recipe(images, meta, digits, bsds, [0, 57, 199])
    np.testing.assert_array_equal(images, build_mnist_m(digits, bsds, seed=0))
    assert not np.array_equal(images, build_mnist_m(digits, bsds, seed=1))


# ------------------------------------------------------------------------------------------
# documentation examples
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["covid", "digits", "mnist_m"])
def test_docstring_examples_run_without_the_data(module, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # far from any shared/data folder
    mod = importlib.import_module(f"camkit.datasets.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 5
    assert result.failed == 0


def test_frame_like_mnist_puts_a_digit_in_mnists_20_in_28_box():
    from camkit import frame_like_mnist

    digits = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    framed = frame_like_mnist(digits)
    expected = F.interpolate(digits, size=(20, 20), mode="bilinear", antialias=True)
    assert framed.shape == (3, 1, 28, 28) and torch.equal(framed[..., 4:24, 4:24], expected)
    assert float(framed.sum()) == pytest.approx(float(expected.sum()))  # the border is empty
    # (N, H, W) uint8, as the datasets hold digits: the same frame, rounded back to uint8
    as_uint8 = (digits[:, 0] * 255).round().to(torch.uint8)
    framed8 = frame_like_mnist(as_uint8)
    assert framed8.dtype == torch.uint8 and framed8.shape == (3, 28, 28)
    reference = frame_like_mnist(as_uint8.float()[:, None])[:, 0].round()
    assert torch.equal(framed8, reference.to(torch.uint8))
    with pytest.raises(ValueError, match="images"):
        frame_like_mnist(torch.zeros(16, 16))
    with pytest.raises(TypeError, match="images"):
        frame_like_mnist(torch.zeros(2, 16, 16, dtype=torch.int64))
