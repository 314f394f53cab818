"""Tests of ``benchmarks/reproduce.py``: the result files' schema, on a few images of real data.

Both datasets run for one epoch on a handful of images per class (the numbers mean nothing); the
test pins what the reproduction writes and that a rerun resumes instead of duplicating seeds.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from benchmarks import reproduce
from camkit.datasets import default_data_root

DATA = default_data_root()
HAS_DATA = DATA is not None and all(
    (DATA / name).exists() for name in ("COVID-CT", "mnist.npz", "usps.npz", "BSDS500/images/train")
)

pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(
        not HAS_DATA,
        reason="needs the staged data (COVID-CT, mnist.npz, usps.npz, BSDS500 in shared/data "
        "above the working directory, or CAMKIT_DATA); not found",
    ),
]

METHODS = {"baseline", "snapmix_cpe", "full"}
KEYS = ("acc", "precision", "recall", "f1", "train_seconds", "epochs", "best_epoch", "seeds")


def run(tmp_path) -> dict:
    argv = [
        "--datasets", "site-B", "digits", "--runs", "baseline", "snapmix_cpe", "--seeds", "0",
        "--epochs", "1", "--img-size", "64", "--subset", "3", "2",
        "--digits-epochs", "1", "--digits-subset", "3", "2",
        "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
    ]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return reproduce.main(argv)
    finally:
        torch.set_num_threads(threads)


def test_writes_the_schema_and_a_rerun_resumes(tmp_path):
    results = run(tmp_path)
    on_disk = json.loads((tmp_path / "results" / "reproduce_cpu.json").read_text())
    assert on_disk == results
    assert set(results) == {"site-B", "mnist-usps", "mnist-mnistm"}
    for dataset, rows in results.items():
        assert set(rows) == METHODS, dataset
        for method, entry in rows.items():
            assert set(entry) == set(KEYS), (dataset, method)
            assert all(len(entry[k]) == 1 for k in KEYS)
            assert entry["seeds"] == [0] and entry["epochs"] == [1] and entry["best_epoch"] == [1]
            assert all(0.0 <= entry[k][0] <= 100.0 for k in ("acc", "precision", "recall", "f1"))
        # full is the snapmix_cpe model evaluated with the TTA: the same training
        assert rows["full"]["train_seconds"] == rows["snapmix_cpe"]["train_seconds"]
    # one digits model per run serves both targets
    assert (
        results["mnist-usps"]["baseline"]["train_seconds"]
        == results["mnist-mnistm"]["baseline"]["train_seconds"]
    )
    markdown = (tmp_path / "results" / "reproduce_cpu.md").read_text()
    for heading in ("## site-B", "## mnist-usps", "## mnist-mnistm"):
        assert heading in markdown
    assert "| snapmix_cpe | 1 | 1 | 1 |" in markdown

    again = run(tmp_path)  # finished runs are only re-evaluated: same numbers, no new seed
    assert again == results
