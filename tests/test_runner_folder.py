"""The runner on a user's own folder (``--dataset folder:PATH``) and `SplitImageFolder`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.runner.run import main
from camkit.datasets import SplitImageFolder


def _folder(root: Path, per_split=(6, 2, 2)) -> Path:
    """Two classes told apart by brightness: dark 'a', bright 'b' (with noise)."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val", "test"), per_split, strict=True):
        for label, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                pixels = rng.integers(0, 60, (20, 24)) + 150 * label
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{k}.png")
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    return root


def test_split_image_folder_reads_classes_and_splits(tmp_path):
    root = _folder(tmp_path / "mine")
    ds = SplitImageFolder(root, "train", transform=np.asarray)
    assert ds.classes == ["a", "b"] and ds.targets == [0] * 6 + [1] * 6
    x, y = ds[7]
    assert x.shape == (20, 24, 3) and y == 1
    assert (
        repr(SplitImageFolder(root, "test")) == "SplitImageFolder(split='test', 4 images: a=2, b=2)"
    )


def test_split_image_folder_errors(tmp_path):
    root = _folder(tmp_path / "mine")
    with pytest.raises(
        ValueError, match=r"^split: expected one of 'train', 'val', 'test', got 'x'"
    ):
        SplitImageFolder(root, "x")
    with pytest.raises(FileNotFoundError, match=r"^root: expected a folder with train/, val/"):
        SplitImageFolder(tmp_path / "nothing")
    (root / "val" / "c").mkdir()
    with pytest.raises(ValueError, match=r"val has class folders that train/ has not: \['c'\]"):
        SplitImageFolder(root, "val")
    (root / "val" / "c").rmdir()
    for f in (root / "test" / "b").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"test/b: expected image files .*found none"):
        SplitImageFolder(root, "test")
    (root / "test" / "b").rmdir()
    with pytest.raises(FileNotFoundError, match=r"^root: expected the class folder 'b' of train/"):
        SplitImageFolder(root, "test")
    (root / "train" / "b").rename(tmp_path / "b")
    with pytest.raises(
        ValueError, match=r"^root: expected at least two class folders in .*\['a'\]"
    ):
        SplitImageFolder(root, "train")


@pytest.mark.slow
def test_runner_trains_on_a_folder_with_paired_seeds(tmp_path, capsys):
    root = _folder(tmp_path / "mine")
    results = tmp_path / "results.json"
    args = ["train", "--dataset", f"folder:{root}", "--methods", "baseline", "cpe_norm"]
    args += ["--seeds", "0", "1", "--model", "resnet10t", "--img-size", "64", "--epochs", "2"]
    args += ["--batch-size", "4", "--out", str(tmp_path / "runs"), "--results", str(results)]
    rows = main([*args, "--quiet"])
    assert {(r["dataset"], r["method"], r["seed"]) for r in rows} == {
        ("folder:mine", m, s) for m in ("baseline", "cpe_norm") for s in (0, 1)
    }
    assert all(r["n_test"] == 4 and len(r["val_curve"]) == 2 for r in rows)
    assert all(r["settings"]["train_dataset"] == f"folder:{root}" for r in rows)
    assert len(json.loads(results.read_text())["rows"]) == 4
    main(["report", str(results)])
    text = capsys.readouterr().out
    assert "folder:mine" in text and "cpe_norm" in text


def test_runner_refuses_a_bad_dataset_name(capsys):
    with pytest.raises(SystemExit) as err:
        main(["train", "--dataset", "folder:"])
    assert err.value.code == 2
    assert (
        "expected one of adrenal3d, covidx, digits, site-A, site-B or folder:PATH"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "site-B", "--split", "patient-blocks:5"])
    assert "--split: site-B has one split of its own" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "site-A", "--split", "random:5"])
    assert "--split: expected patient-blocks:FOLDS or leaky-random:FOLDS" in capsys.readouterr().err
