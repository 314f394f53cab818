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
KEYS = ("acc", "precision", "recall", "f1", "val_acc", "train_seconds", "epochs", "best_epoch")
KEYS += ("seeds",)


def evidence_row(method: str, seed: int, val: float, usps: float, gain: float = 0.0) -> dict:
    """A row as ``benchmarks/evidence.py`` writes it (accuracies in [0, 1])."""
    from benchmarks.evidence import RULES, SETTINGS

    def part(acc: float, n: int) -> dict:
        tta = {"n": 100, "flips": 3, "accuracy": acc + gain, "accuracy_change": gain}
        return {"accuracy": acc, "n": n, **{f"tta_{rule}": dict(tta) for rule in RULES}}

    snap, form = {"baseline": (False, None), "cpe_norm_w01": (False, "norm_w01")}[method]
    return {
        "dataset": "digits", "method": method, "seed": seed,
        "settings": {**SETTINGS, "cpe_form": form, "snapmix": snap}, "train_seconds": 10.0,
        "val": part(val, 500), "usps": part(usps, 200), "mnistm": part(0.2, 400),
    }  # fmt: skip


def run(tmp_path, *extra: str) -> list[dict]:
    evidence = tmp_path / "evidence.json"
    if not evidence.exists():
        rows = [evidence_row(m, s, 0.9, 0.8) for m in ("baseline", "cpe_norm_w01") for s in (0, 1)]
        merge_results(evidence, rows, key=("dataset", "method", "seed"))
    argv = [
        "--datasets", "site-B", "--runs", "baseline", "snapmix_cpe", "--seeds", "0",
        "--epochs", "1", "--img-size", "64", "--subset", "3", "2", "--tta-runs", "baseline",
        "--evidence", str(evidence), "--out", str(tmp_path / "runs"), *extra,
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
    methods = results["site-B"]
    assert set(methods) == METHODS
    for method, entry in methods.items():
        tta = {"tta_forwards", "tta_flipped"} if method == "full" else set()
        assert set(entry) == set(KEYS) | tta, method
        assert all(len(entry[k]) == 1 for k in KEYS)
        assert entry["seeds"] == [0] and entry["epochs"] == [1] and entry["best_epoch"] == [1]
        assert all(0.0 <= entry[k][0] <= 100.0 for k in ("acc", "precision", "recall", "f1"))
    # full is the snapmix_cpe model evaluated with the TTA: the same training
    assert methods["full"]["train_seconds"] == methods["snapmix_cpe"]["train_seconds"]
    # the baseline's model got every vote rule on val and test; the others were not asked for
    site_b = {r["method"]: r for r in rows if r["dataset"] == "site-B"}
    assert "tta_rules" not in site_b["snapmix_cpe"]
    study = site_b["baseline"]["tta_rules"]
    assert set(study) == set(reproduce.covid_ct.TTA_RULES)
    for parts in study.values():
        assert (parts["val"]["n"], parts["test"]["n"]) == (4, 4)  # --subset 3 2: 2 a class
        assert all(
            0 <= p["flips"] <= p["n"] and -1 <= p["accuracy_change"] <= 1 for p in parts.values()
        )
    # the digits evidence rides along, one model per run serving both targets
    usps = {(r["method"], r["seed"]): r for r in rows if r["dataset"] == "mnist-usps"}
    assert usps[("cpe_norm_w01", 1)]["acc"] == pytest.approx(80.0)
    assert usps[("cpe_norm_w01", 1)]["val_acc"] == pytest.approx(90.0)
    # with one seed per dataset no recipe is chosen, and the file says why instead of a stale one
    data = json.loads((folder / "reproduce_cpu.json").read_text())
    assert data["recommended"] is None and "reason" in data["recommended_detail"]
    # every site-B row records the settings that change a number
    for row in (r for r in rows if r["dataset"] == "site-B"):
        settings = row["settings"]
        for key in ("model", "img_size", "train_subset", "test_subset", "epochs", "lr",
                    "batch_size", "cpe_normalize", "cpe_temperature", "torch", "timm"):  # fmt: skip
            assert key in settings, (row["dataset"], key)
        assert settings["img_size"] == 64 and settings["epochs"] == 1
        assert settings["torch"] == torch.__version__
    markdown = (folder / "reproduce_cpu.md").read_text()
    for heading in ("## site-B", "## mnist-usps", "## mnist-mnistm", "## TTA vote rules"):
        assert heading in markdown
    assert "| snapmix_cpe | 1 | 1 | 1 |" in markdown
    assert "| site-B | baseline | argmax |" in markdown
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
    report_only = ["--report-only", "--results", str(tmp_path), "--evidence", str(tmp_path / "no")]
    merge_results(path, [row("baseline", 0, 2, 50.0)], key=reproduce.ROW_KEY)
    # another writer adds a row of the same settings meanwhile: report-only sees both
    norm = row("cpe_norm", 0, 2, 60.0, cpe_normalize=True, cpe_temperature=0.1)
    merge_results(path, [norm], key=reproduce.ROW_KEY)
    rows = reproduce.main(report_only)
    assert [r["method"] for r in rows] == ["baseline", "cpe_norm"]
    markdown = (tmp_path / "reproduce_cpu.md").read_text()
    assert "| baseline | 1 | 2 |" in markdown and "| cpe_norm | 1 | 2 |" in markdown
    assert "Settings: model resnet18, epochs 2." in markdown  # the CPE form is the method's

    merge_results(path, [row("baseline", 1, 5, 70.0)], key=reproduce.ROW_KEY)
    with pytest.raises(
        ValueError, match=r"site-B: rows of different settings .*'epochs': \[2, 5\]"
    ):
        reproduce.main(report_only)

    # an old nested results file is refused with what to do
    path.write_text(json.dumps({"site-B": {"baseline": {"acc": [1.0]}}}))
    with pytest.raises(ValueError, match=r"reproduce_cpu\.json: expected \{'rows'"):
        reproduce.main(report_only)


def test_runs_pass_their_example_arguments_through_variants_last(tmp_path, monkeypatch):
    from benchmarks import evidence

    calls: list[list[str]] = []
    monkeypatch.setattr(reproduce.covid_ct, "main", lambda argv: calls.append(argv) or [])
    digits: list[list[str]] = []
    monkeypatch.setattr(evidence, "main", lambda argv: digits.append(argv))
    runs = ["snapmix_fast", "cpe_norm_w01", "baseline"]
    argv = ["--datasets", "site-B", "digits", "--runs", *runs, "--seeds", "0", "--tta-runs"]
    with contextlib.redirect_stdout(io.StringIO()):
        reproduce.main([*argv, "--out", str(tmp_path), "--evidence", str(tmp_path / "none.json")])
    # the digits are the evidence benchmark: run (resumable), then its report
    assert digits == [["run", "--seeds", "0"], ["report"]]
    # site-B: the paper's forms first, then the variants in the order asked for
    assert [argv[argv.index("--out") + 1].rsplit("/", 1)[1] for argv in calls] == [
        "site_b_baseline",
        "site_b_snapmix_fast",
        "site_b_cpe_norm_w01",
    ]
    recipe = ("method", "cpe_normalize", "cpe_temperature", "cpe_weight", "snapmix_cams")
    expected = {
        "baseline": (["baseline"], False, 1.0, 1.0, "unmixed"),
        "snapmix_fast": (["snapmix"], False, 1.0, 1.0, "mixed"),
        "cpe_norm_w01": (["cpe"], True, 0.1, 0.1, "unmixed"),
    }
    for argv in calls:  # every call parses, with the run's recipe
        args = reproduce.covid_ct.parse_args(argv)
        key = args.out.name.split("_", 2)[-1]
        assert tuple(getattr(args, k) for k in recipe) == expected[key], key
        assert (args.tta_rule, args.tta_theta) == ("threshold", 0.2)


def test_the_recipe_is_chosen_on_validation_by_its_worst_dataset():
    from benchmarks.evidence import choose_recipe

    val = {  # paired validation accuracies: a gains 2 on site-B but loses 1 on digits
        "site-B": {"baseline": {0: 60, 1: 62, 2: 61}, "a": {0: 62, 1: 64, 2: 63},
                   "b": {0: 60.5, 1: 62.5, 2: 61.5}, "c": {0: 70, 1: 70}},
        "digits": {"baseline": {0: 98, 1: 98, 2: 98}, "a": {0: 97, 1: 97, 2: 97},
                   "b": {0: 98, 1: 98.2, 2: 98.1}, "c": {0: 99, 1: 99, 2: 99}},
    }  # fmt: skip
    gains = {"K>2": {"b": {"threshold": -4.0, "argmax": 0.1}}, "K=2": {"b": {"argmax": -3.0}}}
    chosen = choose_recipe(val, gains)
    # b never loses (worst +0.1); a's mean is higher but it loses on the digits; c has 2 seeds
    assert chosen["method"] == "b" and list(chosen["val_delta_by_method"]) == ["b", "a"]
    assert chosen["val_delta"] == pytest.approx({"site-B": 0.5, "digits": 0.1})
    assert (chosen["tta_rule"], chosen["tta_rule_binary"]) == ("argmax", "threshold")
    gains["K>2"]["b"]["argmax"] = 0.0  # no rule gains on validation: no vote
    assert choose_recipe(val, gains)["tta_rule"] == "none"
    del val["site-B"]["b"][2]
    assert choose_recipe(val, gains)["method"] == "a"
    assert choose_recipe({"digits": {"baseline": {0: 1.0}}}, {})["method"] is None


def test_the_recommendation_is_tested_against_the_baseline_on_every_dataset(tmp_path):
    """Both datasets' validation splits choose; the markdown tests the choice on every test set
    with its vote rule (the K > 2 rule on the digits, the paper's vote on binary site-B)."""
    site_b = []
    for seed, (base, rec) in enumerate([(60.0, 62.0), (61.0, 62.0), (62.0, 65.0)]):
        for method, acc in (("baseline", base), ("cpe_norm_w01", rec)):
            site_b.append(
                {"dataset": "site-B", "method": method, "seed": seed, "acc": acc, "val_acc": acc,
                 "train_seconds": 1.0, "epochs": 2, "best_epoch": 1,
                 "settings": {"model": "resnet18", "epochs": 2}}
            )  # fmt: skip
    evidence = tmp_path / "evidence.json"
    rows = [evidence_row("baseline", s, 0.9, 0.8) for s in range(3)]
    rows += [evidence_row("cpe_norm_w01", s, 0.91, 0.79, gain=0.01) for s in range(3)]
    merge_results(evidence, rows, key=("dataset", "method", "seed"))
    merge_results(tmp_path / "reproduce_cpu.json", site_b, key=reproduce.ROW_KEY)
    argv = ["--report-only", "--results", str(tmp_path), "--evidence", str(evidence)]
    reproduce.main(argv)
    data = json.loads((tmp_path / "reproduce_cpu.json").read_text())
    assert data["recommended"] == "cpe_norm_w01"
    detail = data["recommended_detail"]
    assert detail["val_delta"] == pytest.approx({"site-B": 2.0, "digits": 1.0})
    assert (detail["tta_rule"], detail["tta_rule_binary"]) == ("threshold", "threshold")
    markdown = (tmp_path / "reproduce_cpu.md").read_text()
    # USPS: 79 % plain, the vote gains 1 point on the 100 of 200 images it ran on: +0.5
    usps = next(line for line in markdown.splitlines() if line.startswith("| mnist-usps | 3 |"))
    assert "| 80.00 ± 0.00 | 79.50 ± 0.00 (vote threshold) | -0.50 [-0.50, -0.50] |" in usps
    assert "loses to the baseline" in usps
    # a method known by another name in the digits benchmark keeps its settings (Eq. 1's "cpe")
    from benchmarks.evidence import choose_recipe

    val = {"digits": {"baseline": {0: 1.0, 1: 1.0, 2: 1.0}, "cpe": {0: 2.0, 1: 2.0, 2: 2.0}}}
    chosen = choose_recipe(val, {})
    assert chosen["method"] == "cpe" and chosen["snapmix"] is None
    assert chosen["cpe_form"] == {"normalize": False, "temperature": 1.0, "weight": 1.0}
    site = next(line for line in markdown.splitlines() if line.startswith("| site-B | 3 |"))
    assert "(plain: vote threshold not measured)" in site and "+2.00 [" in site
    assert "| **cpe_norm_w01** |" in markdown


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
