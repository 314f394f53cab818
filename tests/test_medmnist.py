"""camkit.datasets.medmnist: the official MedMNIST files (split sizes, class counts, shapes, MD5s)
and every refusal on small generated archives."""

from __future__ import annotations

import doctest
import importlib
import re

import numpy as np
import pytest
import torch

from camkit import MEDMNIST_MD5, MedMNIST, medmnist
from tests.helpers import DATA, needs_medmnist

MED = DATA / "MedMNIST" if DATA is not None else None

# (file, image shape, class counts (class 0, class 1) of train / val / test): the data README's
ADRENAL = {"train": (929, 259), "val": (76, 22), "test": (229, 69)}
REAL = [
    pytest.param("adrenalmnist3d.npz", (28, 28, 28), ADRENAL, id="adrenal28"),
    pytest.param(  # 0.4 GB of voxels to decompress: about 20 s on a 2-core CPU
        "adrenalmnist3d_64.npz", (64, 64, 64), ADRENAL, id="adrenal64", marks=pytest.mark.slow
    ),
    pytest.param(
        "vesselmnist3d.npz",
        (28, 28, 28),
        {"train": (1185, 150), "val": (169, 22), "test": (339, 43)},
        id="vessel28",
    ),
    pytest.param(
        "pneumoniamnist.npz",
        (28, 28),
        {"train": (1214, 3494), "val": (135, 389), "test": (234, 390)},
        id="pneumonia28",
    ),
]


# -- the real files ------------------------------------------------------------------------------


@needs_medmnist
@pytest.mark.parametrize(("name", "shape", "counts"), REAL)
def test_real_split_sizes_class_counts_and_shapes(name, shape, counts):
    for split, (n0, n1) in counts.items():
        ds = MedMNIST(MED / name, split)
        assert len(ds) == n0 + n1 and ds.split == split
        assert ds.labels.dtype == torch.int64 and ds.labels.bincount().tolist() == [n0, n1]
        assert ds.targets == ds.labels.tolist()
        assert ds.images.shape == (n0 + n1, 1, *shape) and ds.images.dtype == torch.uint8
        assert ds.spatial_dims == len(shape)
        if len(shape) == 3:  # the 3-D sets are binary shape masks: every voxel is 0 or 255
            assert int(((ds.images != 0) & (ds.images != 255)).sum()) == 0
            assert 0 < int((ds.images == 255).sum()) < ds.images.numel() // 10


@needs_medmnist
def test_real_tensors_and_items_scale_to_unit_range():
    images, labels = medmnist(MED / "adrenalmnist3d.npz", "val")
    assert images.shape == (98, 1, 28, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (98,) and labels.dtype == torch.int64
    assert labels.bincount().tolist() == [76, 22]
    assert torch.unique(images).tolist() == [0.0, 1.0]  # masks: 0/255 → 0/1
    raw = np.load(MED / "adrenalmnist3d.npz")
    np.testing.assert_array_equal(images[:, 0].numpy() * 255, raw["val_images"].astype(np.float32))
    np.testing.assert_array_equal(labels.numpy(), raw["val_labels"][:, 0])
    ds = MedMNIST(MED / "adrenalmnist3d.npz", "val", transform=lambda x: x * 2)
    x, y = ds[5]
    assert torch.equal(x, images[5] * 2) and y == int(labels[5])
    x2, _ = medmnist(MED / "pneumoniamnist.npz", "test")
    assert x2.shape == (624, 1, 28, 28) and round(float(x2.max()) * 255, 4) == 254


@needs_medmnist
@pytest.mark.parametrize("name", sorted(MEDMNIST_MD5))
def test_real_files_have_the_official_md5(name):
    ds = MedMNIST(MED / name, "val", check_md5=True)  # refuses on a mismatch
    assert MedMNIST(MED / name, "val", check_md5=MEDMNIST_MD5[name].upper()).labels.equal(ds.labels)


@needs_medmnist
def test_real_md5_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"adrenalmnist3d\.npz: expected MD5 0{32}, got bbd3c5a5"):
        MedMNIST(MED / "adrenalmnist3d.npz", "val", check_md5="0" * 32)


def test_md5_table_is_the_readmes():
    assert MEDMNIST_MD5 == {
        "adrenalmnist3d.npz": "bbd3c5a5576322bc4cdfea780653b1ce",
        "adrenalmnist3d_64.npz": "17721accfe9fb005146a47d33bc54b2f",
        "vesselmnist3d.npz": "b41fd4f7e7e2feedddb201585ecafa1b",
        "pneumoniamnist.npz": "28209eda62fecd6e6a2d98b1501bb15f",
    }


# -- generated files -----------------------------------------------------------------------------


def _arrays(images, labels):
    pairs = (("images", images), ("labels", labels))
    return {f"{s}_{p}": a for s in ("train", "val", "test") for p, a in pairs}


def _write(tmp_path, name="tiny.npz", **change):
    images = np.zeros((3, 4, 4, 4), np.uint8)
    images[1, 1, 2, 3] = 255
    images[2] = 51
    arrays = _arrays(images, np.array([[0], [1], [2]], np.uint8))
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_generated_volumes_grey_and_colour_images(tmp_path):
    ds = MedMNIST(_write(tmp_path), "test")
    assert ds.spatial_dims == 3 and ds.images.shape == (3, 1, 4, 4, 4)
    images, labels = ds.tensors()
    assert labels.tolist() == [0, 1, 2] and images[1, 0, 1, 2, 3] == 1.0
    assert float(images.sum()) == pytest.approx(1.0 + 64 * 0.2)  # 51 / 255 = 0.2 exactly
    assert repr(ds) == "MedMNIST(tiny.npz, 'test': 3 images of shape (1, 4, 4, 4))"
    grey = np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5)
    two = _arrays(grey, np.array([[1], [0]], np.int64))
    np.savez(tmp_path / "grey.npz", **two)
    x, _ = medmnist(tmp_path / "grey.npz", "val")
    assert x.shape == (2, 1, 5, 5) and torch.equal(x[:, 0] * 255, torch.from_numpy(grey).float())
    colour = np.arange(2 * 5 * 5 * 3, dtype=np.uint8).reshape(2, 5, 5, 3)
    np.savez(tmp_path / "colour.npz", **_arrays(colour, np.array([[1], [0]])))
    ds = MedMNIST(tmp_path / "colour.npz", "train")
    assert ds.spatial_dims == 2 and ds.images.shape == (2, 3, 5, 5)
    assert torch.equal(ds.images[1, 2], torch.from_numpy(colour[1, :, :, 2]))  # channels first


def test_md5_of_a_generated_file(tmp_path):
    import hashlib

    path = _write(tmp_path)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    assert len(MedMNIST(path, check_md5=md5)) == 3
    with pytest.raises(ValueError, match=rf"tiny\.npz: expected MD5 {'f' * 32}, got {md5} "):
        MedMNIST(path, check_md5="f" * 32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"val_labels": None},
         r"tiny\.npz: expected the MedMNIST keys .*; missing key 'val_labels' \(found: "
         r"test_images, test_labels, train_images, train_labels, val_images\)"),
        ({"train_images": np.zeros((3, 4, 4, 4), np.float32)},
         r"tiny\.npz: key 'train_images': expected dtype uint8, got float32"),
        ({"train_images": np.zeros((3, 4, 4, 5), np.uint8)},
         r"tiny\.npz: key 'train_images': expected shape \(N, S, S\), \(N, S, S, 3\) or "
         r"\(N, S, S, S\) \(square images or cubic volumes\), got \(3, 4, 4, 5\)"),
        ({"train_images": np.zeros((3, 4, 5), np.uint8)}, r"got \(3, 4, 5\)"),
        ({"train_images": np.zeros((3, 4, 4, 4, 1), np.uint8)}, r"got \(3, 4, 4, 4, 1\)"),
        ({"train_images": np.zeros((3,), np.uint8)}, r"key 'train_images': .*got \(3,\)"),
        ({"train_labels": np.zeros((3, 1), np.float64)},
         r"tiny\.npz: key 'train_labels': expected an integer dtype, got float64"),
        ({"train_labels": np.zeros(3, np.int64)},
         r"tiny\.npz: key 'train_labels': expected shape \(3, 1\) \(one class per image of "
         r"'train_images'; multi-label sets are not supported\), got \(3,\)"),
        ({"train_labels": np.zeros((3, 14), np.int64)}, r"'train_labels': .*got \(3, 14\)"),
        ({"train_labels": np.zeros((2, 1), np.int64)}, r"'train_labels': expected shape \(3, 1\)"),
        ({"train_labels": np.array([[0], [-1], [1]], np.int8)},
         r"tiny\.npz: key 'train_labels': expected labels >= 0, got -1"),
        ({"train_images": np.zeros((0, 4, 4, 4), np.uint8),
          "train_labels": np.zeros((0, 1), np.int64)},
         r"tiny\.npz: key 'train_images': expected at least one image, got \(0, 4, 4, 4\)"),
    ],
)  # fmt: skip
def test_malformed_archives_name_the_file_key_expected_and_found(tmp_path, change, message):
    path = _write(tmp_path, **change)
    with pytest.raises(ValueError, match=message) as info:
        MedMNIST(path, "train")
    assert str(info.value).startswith(str(path))
    with pytest.raises(ValueError, match=message):
        medmnist(path, "train")


def test_only_the_asked_split_is_read(tmp_path):
    """A bad test split does not stop the train split (its key is present)."""
    path = _write(tmp_path, test_images=np.zeros((3, 4, 4, 5), np.uint8))
    assert len(MedMNIST(path, "train")) == 3
    with pytest.raises(ValueError, match="key 'test_images'"):
        MedMNIST(path, "test")


def test_bad_paths_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^path: expected a MedMNIST \.npz file at .*"
                                                r"missing\.npz, found nothing"):  # fmt: skip
        MedMNIST(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="found a folder"):
        MedMNIST(tmp_path)
    with pytest.raises(TypeError, match=r"^path: expected a str or os.PathLike path, got int"):
        MedMNIST(3)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"garbage\.npz: could not be read as a \.npz archive"):
        MedMNIST(garbage)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"single\.npy: expected a \.npz archive of named arrays"):
        MedMNIST(single)
    path = _write(tmp_path)
    with pytest.raises(ValueError, match=r"^split: expected one of 'train', 'val', 'test', "
                                         r"got 'validation'"):  # fmt: skip
        MedMNIST(path, "validation")
    known = r"^check_md5: no official MD5 is known for a file named 'tiny\.npz' \(known: adrenal"
    with pytest.raises(ValueError, match=known):
        MedMNIST(path, check_md5=True)
    for bad in ("abc", "g" * 32, 1, None):
        want = f"check_md5: expected False, True or a 32-digit hexadecimal MD5, got {bad!r}"
        with pytest.raises(ValueError, match=re.escape(want)):
            MedMNIST(path, check_md5=bad)
    # the argument is checked before the file: a bad MD5 argument is named even without a file
    with pytest.raises(ValueError, match=r"^check_md5:"):
        MedMNIST(tmp_path / "missing.npz", check_md5="abc")


def test_docstring_examples_run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module("camkit.datasets.medmnist")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 5 and result.failed == 0
