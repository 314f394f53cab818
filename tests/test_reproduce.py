"""Tests of ``benchmarks/reproduce.py``: the result files' schema, on a few images of real data.

Both datasets run for one epoch on a handful of images per class (the numbers mean nothing); the
tests pin what the reproduction writes, where, that a rerun resumes instead of duplicating seeds,
and that a table refuses rows of different settings.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from benchmarks import reproduce
from camkit.io import merge_results
from tests.helpers import data_root

DATA = data_root()
HAS_DATA = DATA is not None and all(
    (DATA / name).exists() for name in ("COVID-CT", "mnist.npz", "usps.npz", "BSDS500/images/train")
)
needs_data = pytest.mark.skipif(
    not HAS_DATA,
    reason="needs the staged data (COVID-CT, mnist.npz, usps.npz, BSDS500 in shared/data "
    "above the repository, or CAMKIT_DATA); not found",
)

METHODS = {"baseline", "snapmix_cpe", "full"}
KEYS = ("acc", "precision", "recall", "f1", "train_seconds", "epochs", "best_epoch", "seeds")


def run(tmp_path, *extra: str) -> list[dict]:
    argv = [
        "--datasets", "site-B", "digits", "--runs", "baseline", "snapmix_cpe", "--seeds", "0",
        "--epochs", "1", "--img-size", "64", "--subset", "3", "2",
        "--digits-epochs", "1", "--digits-subset", "3", "2", "--out", str(tmp_path / "runs"),
        *extra,
    ]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return reproduce.main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.data
@needs_data
def test_writes_the_schema_to_the_scratch_folder_and_a_rerun_resumes(tmp_path):
    published = reproduce.ROOT / "benchmarks" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in published.glob("reproduce_cpu.*")}
    rows = run(tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in published.glob("reproduce_cpu.*")} == before
    folder = tmp_path / "runs"  # the scratch folder, not benchmarks/results
    assert json.loads((folder / "reproduce_cpu.json").read_text())["rows"] == rows
    results = reproduce.nest(rows)
    assert set(results) == {"site-B", "mnist-usps", "mnist-mnistm"}
    for dataset, methods in results.items():
        assert set(methods) == METHODS, dataset
        for method, entry in methods.items():
            tta = {"tta_forwards", "tta_flipped"} if method == "full" else set()
            assert set(entry) == set(KEYS) | tta, (dataset, method)
            assert all(len(entry[k]) == 1 for k in KEYS)
            assert entry["seeds"] == [0] and entry["epochs"] == [1] and entry["best_epoch"] == [1]
            assert all(0.0 <= entry[k][0] <= 100.0 for k in ("acc", "precision", "recall", "f1"))
        # full is the snapmix_cpe model evaluated with the TTA: the same training
        assert methods["full"]["train_seconds"] == methods["snapmix_cpe"]["train_seconds"]
    # one digits model per run serves both targets
    assert (
        results["mnist-usps"]["baseline"]["train_seconds"]
        == results["mnist-mnistm"]["baseline"]["train_seconds"]
    )
    # every row records the settings that change a number
    for row in rows:
        settings = row["settings"]
        for key in ("model", "img_size", "train_subset", "test_subset", "epochs", "lr",
                    "batch_size", "cpe_normalize", "cpe_temperature", "torch", "timm"):  # fmt: skip
            assert key in settings, (row["dataset"], key)
        assert settings["img_size"] == 64 and settings["epochs"] == 1
        assert settings["torch"] == torch.__version__
    markdown = (folder / "reproduce_cpu.md").read_text()
    for heading in ("## site-B", "## mnist-usps", "## mnist-mnistm"):
        assert heading in markdown
    assert "| snapmix_cpe | 1 | 1 | 1 |" in markdown
    assert "Settings: model resnet18, pretrained False, img_size 64," in markdown

    again = run(tmp_path)  # finished runs are only re-evaluated: same numbers, no new seed
    assert again == rows


def test_a_table_refuses_rows_of_different_settings_and_merges_at_every_write(tmp_path):
    def row(method, seed, epochs, acc, **settings):
        return {
            "dataset": "site-B", "method": method, "seed": seed, "acc": acc, "precision": acc,
            "recall": acc, "f1": acc, "train_seconds": 1.0, "epochs": epochs, "best_epoch": 1,
            "settings": {"model": "resnet18", "epochs": epochs, "cpe_normalize": False,
                         "cpe_temperature": 1.0, **settings},
        }  # fmt: skip

    path = tmp_path / "reproduce_cpu.json"
    merge_results(path, [row("baseline", 0, 2, 50.0)], key=reproduce.ROW_KEY)
    # another writer adds a row of the same settings meanwhile: report-only sees both
    norm = row("cpe_norm", 0, 2, 60.0, cpe_normalize=True, cpe_temperature=0.1)
    merge_results(path, [norm], key=reproduce.ROW_KEY)
    rows = reproduce.main(["--report-only", "--results", str(tmp_path)])
    assert [r["method"] for r in rows] == ["baseline", "cpe_norm"]
    markdown = (tmp_path / "reproduce_cpu.md").read_text()
    assert "| baseline | 1 | 2 |" in markdown and "| cpe_norm | 1 | 2 |" in markdown
    assert "Settings: model resnet18, epochs 2." in markdown  # the CPE form is the method's

    merge_results(path, [row("baseline", 1, 5, 70.0)], key=reproduce.ROW_KEY)
    with pytest.raises(
        ValueError, match=r"site-B: rows of different settings .*'epochs': \[2, 5\]"
    ):
        reproduce.main(["--report-only", "--results", str(tmp_path)])

    # an old nested results file is refused with what to do
    path.write_text(json.dumps({"site-B": {"baseline": {"acc": [1.0]}}}))
    with pytest.raises(ValueError, match=r"reproduce_cpu\.json: expected \{'rows'"):
        reproduce.main(["--report-only", "--results", str(tmp_path)])


def test_runs_pass_their_example_arguments_through_variants_last(tmp_path, monkeypatch):
    calls: list[tuple[str, list[str]]] = []
    for module in (reproduce.covid_ct, reproduce.mnist_usps):
        name = module.__name__
        monkeypatch.setattr(
            module, "main", lambda argv, name=name: calls.append((name, argv)) or []
        )
    runs = ["snapmix_fast", "cpe_norm_w01", "baseline"]
    argv = ["--datasets", "site-B", "digits", "--runs", *runs, "--seeds", "0"]
    with contextlib.redirect_stdout(io.StringIO()):
        reproduce.main([*argv, "--out", str(tmp_path)])
    # per dataset the paper's forms first, then the variants in the order asked for
    assert [(name, argv[argv.index("--out") + 1].rsplit("/", 1)[1]) for name, argv in calls] == [
        ("covid_ct", "site_b_baseline"),
        ("covid_ct", "site_b_snapmix_fast"),
        ("covid_ct", "site_b_cpe_norm_w01"),
        ("mnist_usps", "digits_baseline"),
        ("mnist_usps", "digits_snapmix_fast"),
        ("mnist_usps", "digits_cpe_norm_w01"),
    ]
    recipe = ("method", "cpe_normalize", "cpe_temperature", "cpe_weight", "snapmix_cams")
    expected = {
        "baseline": (["baseline"], False, 1.0, 1.0, "unmixed"),
        "snapmix_fast": (["snapmix"], False, 1.0, 1.0, "mixed"),
        "cpe_norm_w01": (["cpe"], True, 0.1, 0.1, "unmixed"),
    }
    for name, argv in calls:  # every call parses, with the run's recipe
        example = reproduce.covid_ct if name == "covid_ct" else reproduce.mnist_usps
        args = example.parse_args(argv)
        key = args.out.name.split("_", 1 if name == "mnist_usps" else 2)[-1]
        assert tuple(getattr(args, k) for k in recipe) == expected[key], (name, key)
        assert (args.tta_rule, args.tta_theta) == ("threshold", 0.2)


def test_a_table_accepts_rows_whose_method_sets_the_cpe_weight_or_the_snapmix_cams():
    def row(method, seed, **settings):
        base = {"model": "resnet18", "cpe_normalize": False, "cpe_temperature": 1.0}
        base.update(cpe_weight=1.0, snapmix_cams="unmixed", tta_rule="threshold")
        return {
            "dataset": "site-B",
            "method": method,
            "seed": seed,
            "settings": {**base, **settings},
        }

    rows = [
        row("baseline", 0),
        row("cpe_norm_w01", 0, cpe_normalize=True, cpe_temperature=0.1, cpe_weight=0.1),
        row("snapmix_fast", 0, snapmix_cams="mixed"),
        row("snapmix_fast", 1, snapmix_cams="mixed"),
    ]
    assert reproduce.shared_settings("site-B", rows) == {
        "model": "resnet18",
        "tta_rule": "threshold",
    }
    # within one method they must agree; and the TTA rule is not a method's setting
    for bad in (row("snapmix_fast", 2), row("cpe_norm_w01", 1, cpe_weight=0.5)):
        with pytest.raises(ValueError, match=r"site-B \(method .*\): rows of different settings"):
            reproduce.shared_settings("site-B", [*rows, bad])
    with pytest.raises(ValueError, match=r"site-B: rows of different settings .*'tta_rule'"):
        reproduce.shared_settings("site-B", [*rows, row("baseline", 1, tta_rule="relative")])
