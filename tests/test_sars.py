"""camkit.datasets.SARSCoV2CT: the patient-respecting block split, on generated and real folders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camkit.datasets import SARSCoV2CT
from tests.helpers import DATA, needs_site_a

SPLITS = ("train", "val", "test")


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 6), value).save(path)


@pytest.fixture
def root(tmp_path) -> Path:
    """13 COVID slices (number 7 missing, 3 = 4 byte for byte), 10 non-COVID, and noise files."""
    root = tmp_path / "SARS-CoV-2"
    for k in (*range(1, 7), *range(8, 15)):
        _png(root / "COVID" / f"Covid ({k}).png", 3 if k == 4 else k)
    for k in range(1, 11):
        _png(root / "non-COVID" / f"Non-Covid ({k}).png", 100 + k)
    (root / "COVID" / "notes.txt").write_text("not an image")
    (root / "non-COVID" / ".DS_Store").write_bytes(b"\0")
    return root


def _numbers(ds: SARSCoV2CT, label: int) -> list[int]:
    return [int(re.search(r"\((\d+)\)", p.name)[1]) for p, y in ds.samples if y == label]


def test_blocks_follow_numeric_order_and_keep_identical_files_together(root):
    ds = SARSCoV2CT(root, split="test")
    blocks = [[int(re.search(r"\((\d+)\)", n)[1]) for n in b] for b in ds.blocks["COVID"]]
    # 13 images, block ends round(13 j / 5) = 3, 5, 8, 10, 13 by each unit's middle image;
    # (3, 4) is one unit (its middle, 3.0, is past the first end), 7 is absent
    assert blocks == [[1, 2], [3, 4, 5], [6, 8, 9], [10, 11], [12, 13, 14]]
    assert [len(b) for b in ds.blocks["non-COVID"]] == [2, 2, 2, 2, 2]


@pytest.mark.parametrize("fold", range(5))
def test_each_fold_tests_one_block_validates_the_next(root, fold):
    parts = {s: SARSCoV2CT(root, split=s, fold=fold) for s in SPLITS}
    blocks = parts["test"].blocks["COVID"]
    as_numbers = [sorted(int(re.search(r"\((\d+)\)", n)[1]) for n in b) for b in blocks]
    assert _numbers(parts["test"], 1) == as_numbers[fold]
    assert _numbers(parts["val"], 1) == as_numbers[(fold + 1) % 5]
    train = sorted(
        n for j, b in enumerate(as_numbers) if j not in (fold, (fold + 1) % 5) for n in b
    )
    assert _numbers(parts["train"], 1) == train
    everything = [p for s in SPLITS for p, _ in parts[s].samples]
    assert len(everything) == len(set(everything)) == 23
    assert parts["train"].targets == sorted(parts["train"].targets)  # non-COVID first


def test_folds_test_every_image_once(root):
    tested = [p for f in range(4) for p, _ in SARSCoV2CT(root, "test", folds=4, fold=f).samples]
    assert len(tested) == len(set(tested)) == 23


def test_leaky_random_shuffles_units_with_the_seed(root):
    a = SARSCoV2CT(root, "test", scheme="leaky-random", seed=3)
    assert a.samples == SARSCoV2CT(root, "test", scheme="leaky-random", seed=3).samples
    assert a.samples != SARSCoV2CT(root, "test", scheme="leaky-random", seed=4).samples
    assert SARSCoV2CT(root, "test", scheme="leaky-random").seed == 0
    # the documented draw: one generator, non-COVID first, a permutation of the units
    rng = np.random.default_rng(3)
    _ = rng.permutation(10)
    units = [[1], [2], [3, 4], [5], [6], *([k] for k in range(8, 15))]  # (3, 4): one unit
    shuffled = [f"Covid ({n}).png" for i in rng.permutation(12) for n in units[i]]
    assert [n for block in a.blocks["COVID"] for n in block] == shuffled
    pair = {3, 4}
    for fold in range(5):
        splits = [
            set(_numbers(SARSCoV2CT(root, s, scheme="leaky-random", fold=fold), 1)) for s in SPLITS
        ]
        assert any(pair <= s for s in splits)


def test_kaggle_mirror_spelling_and_repr(tmp_path, root):
    (root / "non-COVID").rename(root / "NonCOVID")
    ds = SARSCoV2CT(root, "val", fold=1, transform=np.asarray)
    x, y = ds[0]
    assert x.shape == (6, 8, 3) and y == 0
    assert repr(ds) == (
        "SARSCoV2CT(split='val', scheme='patient-blocks', fold=1 of 5, "
        "5 images: non-COVID=2, COVID=3)"
    )


def test_errors_name_the_argument(root, tmp_path):
    with pytest.raises(
        ValueError, match=r"^split: expected one of 'train', 'val', 'test', got 'x'"
    ):
        SARSCoV2CT(root, split="x")
    with pytest.raises(ValueError, match=r"^scheme: expected one of 'patient-blocks', 'leaky-"):
        SARSCoV2CT(root, scheme="random")
    with pytest.raises(ValueError, match=r"^folds: expected an int >= 3, got 2"):
        SARSCoV2CT(root, folds=2)
    with pytest.raises(ValueError, match=r"^fold: expected an int in \[0, 5\), got 5"):
        SARSCoV2CT(root, fold=5)
    with pytest.raises(TypeError, match=r"^fold: expected an int >= 0, got 1.0"):
        SARSCoV2CT(root, fold=1.0)
    with pytest.raises(ValueError, match=r"^seed: the 'patient-blocks' split draws nothing"):
        SARSCoV2CT(root, seed=0)
    with pytest.raises(ValueError, match=r"^seed: expected an int >= 0, got -1"):
        SARSCoV2CT(root, scheme="leaky-random", seed=-1)
    with pytest.raises(FileNotFoundError, match=r"^root: expected the SARS-CoV-2 CT folder"):
        SARSCoV2CT(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"expected at least folds=11 image files .*found 10"):
        SARSCoV2CT(root, folds=11)
    (root / "non-COVID").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=r"^root: expected the non-COVID image folder at"):
        SARSCoV2CT(root)


# -- the real folder ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> dict[tuple[str, int], SARSCoV2CT]:
    root = DATA / "SARS-CoV-2-CT"
    return {(s, f): SARSCoV2CT(root, split=s, fold=f) for s in SPLITS for f in range(5)}


@needs_site_a
def test_real_split_sizes(real):
    sizes = [[len(real[s, f]) for s in SPLITS] for f in range(5)]
    assert sizes == [
        [1488, 497, 496], [1489, 495, 497], [1489, 497, 495], [1488, 496, 497], [1489, 496, 496],
    ]  # fmt: skip
    assert {(f, sum(real[s, f].targets)) for s in ("test",) for f in range(5)} == {
        (0, 250), (1, 251), (2, 250), (3, 251), (4, 250),
    }  # fmt: skip
    assert real["test", 0].blocks["non-COVID"][0][-1] == "Non-Covid (247).png"


@needs_site_a
@pytest.mark.parametrize("fold", range(5))
def test_real_split_changes_only_at_block_boundaries(real, fold):
    """Consecutive file numbers (one patient's slices) change split only between blocks."""
    where = {}
    for s in SPLITS:
        for p, y in real[s, fold].samples:
            where[y, int(re.search(r"\((\d+)\)", p.name)[1])] = s
    changes = [k for k in where if (k[0], k[1] + 1) in where and where[k] != where[k[0], k[1] + 1]]
    assert len(where) == 2481
    # per class: the block edges where the split changes (test | val, and train around them)
    role = ["test" if j == fold else "val" if j == (fold + 1) % 5 else "train" for j in range(5)]
    edges = sum(role[j] != role[j + 1] for j in range(4))
    assert len(changes) == 2 * edges <= 6
    assert where[1, 128] == where[1, 129] and where[1, 134] == where[1, 135]
    leaky = SARSCoV2CT(DATA / "SARS-CoV-2-CT", "test", scheme="leaky-random", fold=fold)
    tested = {(y, int(re.search(r"\((\d+)\)", p.name)[1])) for p, y in leaky.samples}
    shared_edges = sum(((y, n + 1) in where and ((y, n + 1) in tested) != ((y, n) in tested))
                       for y, n in where)  # fmt: skip
    assert shared_edges > 300  # the random split cuts hundreds of patient runs
