"""``benchmarks/reproduce.py``: the tables' schema on a few real images, the recipe choice, and the
reports (pinned on rows written here, never on the committed results)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from benchmarks import reproduce
from benchmarks.runner.io import merge_results
from benchmarks.runner.report import choose_recipe
from tests.helpers import data_marker, data_root

DATA = data_root()
needs_site_b = data_marker(
    DATA is not None and (DATA / "COVID-CT").is_dir(),
    "needs COVID-CT in shared/data above the repository (or CAMKIT_DATA); not found",
)


def _quiet(argv: list[str]) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return reproduce.main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@needs_site_b
def test_a_scratch_table_writes_its_schema_to_the_scratch_folder_and_a_rerun_skips(tmp_path):
    published = reproduce.RESULTS
    before = {p.name: p.stat().st_mtime_ns for p in published.glob("reproduce_cpu.*")}
    argv = ["--table", "scratch", "--datasets", "site-B", "--seeds", "0", "--epochs", "1"]
    argv += ["--subset", "3", "2", "--out", str(tmp_path)]
    rows = _quiet(argv)
    assert {p.name: p.stat().st_mtime_ns for p in published.glob("reproduce_cpu.*")} == before
    data = json.loads((tmp_path / "reproduce_cpu.json").read_text())
    assert data["rows"] == rows
    by = {r["method"]: r for r in rows}
    assert set(by) == set(reproduce.SCRATCH_SITE_B)
    for method, row in by.items():
        assert row["dataset"] == "site-B" and row["seed"] == 0 and row["epochs"] == 1
        assert all(0.0 <= row[k] <= 100.0 for k in ("acc", "precision", "recall", "f1", "val_acc"))
        settings = row["settings"]
        assert (settings["img_size"], settings["train_subset"], settings["test_subset"]) == (
            112,
            3,
            2,
        )
        assert settings["torch"] == str(torch.__version__)
        assert ("tta_flipped" in row) == method.startswith("full"), method
    # full is the snapmix_cpe model evaluated with the TTA: one training, one checkpoint
    assert by["full"]["train_seconds"] == by["snapmix_cpe"]["train_seconds"]
    assert not (tmp_path / "site_b" / "site-B_full_seed0.pt").exists()
    # with the digits missing no recipe is chosen: the file says why, instead of a stale one
    assert data["recommended"] is None and "site-B" in data["recommended_detail"]["reason"]
    # the baseline's model got every vote rule on val and test (the recommended one: none yet)
    assert set(by["baseline"]["tta_rules"]) == {"threshold", "argmax", "relative"}
    assert "tta_rules" not in by["cpe"]
    for parts in by["baseline"]["tta_rules"].values():
        assert (parts["val"]["n"], parts["test"]["n"]) == (4, 4)  # --subset 3 2: 2 a class
    markdown = (tmp_path / "reproduce_cpu.md").read_text()
    assert "## site-B" in markdown and "| site-B | baseline | argmax |" in markdown
    assert "| snapmix_cpe | 1 | 1 | 1 |" in markdown
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "site_b").glob("*.pt")}
    again = _quiet(argv)  # finished runs are skipped: same rows, no checkpoint rewritten
    assert again == rows
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "site_b").glob("*.pt")} == stamps


def _row(dataset, method, seed, acc, val, epochs=10, **extra):
    settings = {"model": "m", "epochs": epochs, **extra.pop("settings", {})}
    row = {"dataset": dataset, "method": method, "seed": seed, "acc": acc, "val_acc": val}
    row.update(precision=acc, recall=acc, f1=acc, train_seconds=60.0, epochs=epochs)
    row.update(best_epoch=3, settings=settings, **{"n_test": 203, **extra})  # as the runner writes
    return row


def test_the_pretrained_table_chooses_on_its_main_schedule_and_reports_the_factors(tmp_path):
    rows = []
    for seed, shift in enumerate((0.0, 1.0, -1.0, 0.5, 0.0)):
        rows += [
            _row("site-B", "baseline", seed, 70 + shift, 60 + shift),
            _row("site-B", "cutmix", seed, 71 + shift, 61 + shift, settings={"mix": "cutmix"}),
            _row("site-B", "snapmix", seed, 73 + shift, 60.5 + shift, settings={"mix": "x"}),
            _row("site-B", "full", seed, 73 + shift, 60.5 + shift, tta_flipped=seed,
                 tta_forwards=17.0, settings={"mix": "snapmix", "cpe_form": "paper"}),
            # at 30 epochs SnapMix would win on validation: the choice reads 10 epochs only
            _row("site-B", "baseline", seed, 72 + shift, 62 + shift, 30),
            _row("site-B", "snapmix", seed, 75 + shift, 70 + shift, 30, settings={"mix": "x"}),
        ]  # fmt: skip
    merge_results(tmp_path / "pretrained_cpu.json", rows, key=reproduce.ROW_KEY)
    _quiet(["--table", "pretrained", "--report-only", "--results", str(tmp_path)])
    data = json.loads((tmp_path / "pretrained_cpu.json").read_text())
    assert data["recommended"] == "cutmix"  # +1 on val at 10 epochs; snapmix +0.5; full is TTA
    assert data["recommended_detail"]["val_delta"] == pytest.approx({"site-B": 1.0})
    md = (tmp_path / "pretrained_cpu.md").read_text()
    assert "## 10 epochs" in md and "## 30 epochs" in md
    assert "| **cutmix** | 5 |" in md and "+1.00 [+1.00, +1.00]" in md
    assert "SnapMix − CutMix (paired seeds): +2.00 [+2.00, +2.00]" in md
    long = md.split("## 30 epochs")[1].split("##")[0]  # the paired validation column too
    snapmix_30 = next(line for line in long.splitlines() if line.startswith("| snapmix |"))
    assert snapmix_30.split(" | ")[3:6] == [
        "+8.00 [+8.00, +8.00]",
        "75.10 ± 0.74",
        "+3.00 [+3.00, +3.00]",
    ]
    assert "`full` TTA: labels flipped per seed [0, 1, 2, 3, 4] of 203" in md
    factor = md.split("## The schedule as a factor: 30 against 10 epochs")[1]
    factor = next(line for line in factor.splitlines() if line.startswith("| snapmix |"))
    assert factor.startswith("| snapmix | +9.50 [") and "| +2.00 [" in factor  # val, then test
    assert "over the 30-epoch rows alone (only the methods run there) chooses `snapmix`" in md
    assert "Training all the models above took 0.42 h" in md  # 25 trainings of 60 s


def test_the_recipe_is_chosen_on_validation_by_its_worst_dataset():
    val = {  # paired validation accuracies: a gains 2 on site-B but loses 1 on digits
        "site-B": {"baseline": {0: 60, 1: 62, 2: 61}, "a": {0: 62, 1: 64, 2: 63},
                   "b": {0: 60.5, 1: 62.5, 2: 61.5}, "c": {0: 70, 1: 70}},
        "digits": {"baseline": {0: 98, 1: 98, 2: 98}, "a": {0: 97, 1: 97, 2: 97},
                   "b": {0: 98, 1: 98.2, 2: 98.1}, "c": {0: 99, 1: 99, 2: 99}},
    }  # fmt: skip
    gains = {"K>2": {"b": {"threshold": -4.0, "argmax": 0.1}}, "K=2": {"b": {"argmax": -3.0}}}
    chosen = choose_recipe(val, gains)
    # b never loses (worst +0.1); a's mean is higher but it loses on the digits; c has 2 seeds
    assert chosen["method"] == "b" and list(chosen["val_delta_by_method"]) == ["b", "baseline", "a"]
    assert chosen["val_delta"] == pytest.approx({"site-B": 0.5, "digits": 0.1})
    assert (chosen["tta_rule"], chosen["tta_rule_binary"]) == ("argmax", "none")  # K=2: -3
    gains["K>2"]["b"]["argmax"] = 0.0  # no rule gains on validation: no vote
    assert choose_recipe(val, gains)["tta_rule"] == "none"
    del val["site-B"]["b"][2]  # b has 2 paired seeds; a loses on the digits: plain training
    chosen = choose_recipe(val, gains)
    assert chosen["method"] == "baseline" and chosen["val_delta"] == {"site-B": 0, "digits": 0}
    assert list(chosen["val_delta_by_method"]) == ["baseline", "a"]
    val["digits"]["a"] = {0: 98.01, 1: 98.01, 2: 98.01}  # a beats it everywhere, if barely
    assert choose_recipe(val, gains)["method"] == "a"
    assert choose_recipe({"digits": {"baseline": {0: 1.0}}}, {})["method"] is None


def test_the_recommendation_is_tested_against_the_baseline_on_every_dataset(tmp_path):
    rows = []
    for seed, (base, rec) in enumerate([(60.0, 62.0), (61.0, 62.0), (62.0, 65.0)]):
        for method, acc in (("baseline", base), ("cpe_norm_w01", rec)):
            rows.append(_row("site-B", method, seed, acc, acc, 2))
        for dataset in ("mnist-usps", "mnist-mnistm"):
            rules = {r: {"val": {"n": 100, "flips": 3, "accuracy_change": 0.01 * (r == "argmax")},
                         "test": {"n": 100, "flips": 3, "accuracy_change": 0.01}}
                     for r in ("threshold", "argmax", "relative")}  # fmt: skip
            for method, (acc, val) in (("baseline", (80.0, 90.0)), ("cpe_norm_w01", (79.0, 91.0))):
                rows.append(_row(dataset, method, seed, acc, val, 5, tta_rules=rules, n_test=200))
    merge_results(tmp_path / "reproduce_cpu.json", rows, key=reproduce.ROW_KEY)
    _quiet(["--table", "scratch", "--report-only", "--results", str(tmp_path)])
    data = json.loads((tmp_path / "reproduce_cpu.json").read_text())
    assert data["recommended"] == "cpe_norm_w01"
    detail = data["recommended_detail"]
    assert detail["val_delta"] == pytest.approx({"site-B": 2.0, "digits": 1.0})
    assert (detail["tta_rule"], detail["tta_rule_binary"]) == ("argmax", None)  # site-B: no vote
    assert detail["cpe_form"] == {"normalize": True, "temperature": 0.1, "weight": 0.1}
    md = (tmp_path / "reproduce_cpu.md").read_text()
    # USPS: 79 % plain; the arg-max vote gains 1 point on the 100 of 200 images it ran on: +0.5
    usps = next(line for line in md.splitlines() if line.startswith("| mnist-usps | 3 |"))
    assert "| 80.00 ± 0.00 | 79.50 ± 0.00 (vote argmax) | -0.50 [-0.50, -0.50] |" in usps
    assert "loses to the baseline" in usps
    site = next(line for line in md.splitlines() if line.startswith("| site-B | 3 |"))
    assert "63.00 ± 1.73 (no vote measured) | +2.00 [" in site


def test_a_table_refuses_rows_of_different_settings(tmp_path):
    path = tmp_path / "reproduce_cpu.json"
    merge_results(path, [_row("site-B", "baseline", 0, 50.0, 50.0, 2)], key=reproduce.ROW_KEY)
    cpe = _row("site-B", "cpe_norm", 0, 60.0, 60.0, 2, settings={"cpe_normalize": True})
    merge_results(path, [cpe], key=reproduce.ROW_KEY)
    report = ["--table", "scratch", "--report-only", "--results", str(tmp_path)]
    rows = _quiet(report)  # a method's own settings may differ from the others'
    assert [r["method"] for r in rows] == ["baseline", "cpe_norm"]
    merge_results(path, [_row("site-B", "baseline", 1, 70.0, 70.0, 5)], key=reproduce.ROW_KEY)
    with pytest.raises(
        ValueError, match=r"site-B: rows of different settings .*'epochs': \[2, 5\]"
    ):
        _quiet(report)
    path.write_text(json.dumps({"site-B": {"baseline": {"acc": [1.0]}}}))
    with pytest.raises(ValueError, match=r"expected a results file \{'rows'"):
        _quiet(report)


def test_the_pretrained_choice_reads_the_digits_too_once_they_are_there(tmp_path):
    rows = []
    for seed in range(3):
        for method, val in (("baseline", 60.0), ("cutmix", 61.0), ("snapmix", 60.5)):
            rows.append(_row("site-B", method, seed, 70.0, val + seed))
        for dataset in ("mnist-usps", "mnist-mnistm"):
            for method, val in (("baseline", 90.0), ("cutmix", 88.0), ("snapmix", 91.0)):
                rows.append(_row(dataset, method, seed, 80.0, val, 5))
    merge_results(tmp_path / "pretrained_cpu.json", rows, key=reproduce.ROW_KEY)
    _quiet(["--table", "pretrained", "--report-only", "--results", str(tmp_path)])
    data = json.loads((tmp_path / "pretrained_cpu.json").read_text())
    # CutMix gains most on site B but loses 2 points on the digits: SnapMix loses least anywhere
    assert data["recommended"] == "snapmix"
    assert data["recommended_detail"]["val_delta"] == pytest.approx({"site-B": 0.5, "digits": 1.0})
    md = (tmp_path / "pretrained_cpu.md").read_text()
    assert "## mnist-usps: MNIST → USPS" in md and "| cutmix | 3 | 88.00 ± 0.00 | 80.00" in md


def test_the_site_a_table_reports_folds_the_leaking_split_and_the_proxy(tmp_path):
    blocks = {"split": "patient-blocks:5"}
    rows = []
    for fold, shift in enumerate((0.0, 2.0, -2.0, 1.0, -1.0)):
        rows += [
            _row("site-A", "baseline", fold, 80 + shift, 85 + shift, settings=blocks,
                 cam_body_share=95 + shift, body_area=90.0),
            _row("site-A", "cutmix", fold, 79 + shift, 84 + shift,
                 settings={**blocks, "mix": "cutmix"}),
            _row("site-A", "snapmix", fold, 81 + shift, 86 + 2 * shift,
                 settings={**blocks, "mix": "snapmix"}),
            _row("site-A", "baseline", fold, 95 + shift, 96, settings={"split": "leaky-random:5"}),
        ]  # fmt: skip
    merge_results(tmp_path / "site_a_cpu.json", rows, key=reproduce.ROW_KEY)
    _quiet(["--table", "site-a", "--report-only", "--results", str(tmp_path)])
    md = (tmp_path / "site_a_cpu.md").read_text()
    table = md.split("## Every method, 5 patient-block folds")[1].split("##")[0]
    snapmix = next(line for line in table.splitlines() if line.startswith("| **snapmix** |"))
    assert snapmix.split(" | ")[4:6] == ["81.00 ± 1.58", "+1.00 [+1.00, +1.00]"]
    assert snapmix.endswith("| 92.38 |")  # the paper's site-A accuracy
    assert "SnapMix − CutMix (paired seeds): +2.00 [+2.00, +2.00]" in table
    leak = md.split("## What a random split of the slices does")[1].split("##")[0]
    assert "| leaky-random | 5 | 96.00 ± 0.00 | +11.00 [" in leak
    assert "| 95.00 ± 1.58 | +15.00 [+15.00, +15.00] |" in leak
    proxy = md.split("## Validation as a proxy for test")[1]
    assert "Over the 15 models above: validation − test accuracy 5.00 ± " in proxy
    assert "Training the models above took 0.33 h" in md  # 20 trainings of 60 s
    assert "| baseline | 5 | 95.00 ± 1.58 |" in md.split("## Where the CAMs sit")[1]
    assert "evenly over the image would put 90.00 ± 0.00 % inside" in " ".join(md.split())
    assert "cannot tell" not in md
    # slices cropped to the body (site A's): the share is said to be uninformative
    cropped = [{**r, "body_area": 99.9} for r in rows if "body_area" in r]
    merge_results(tmp_path / "site_a_cpu.json", cropped, key=reproduce.ROW_KEY)
    _quiet(["--table", "site-a", "--report-only", "--results", str(tmp_path)])
    where = " ".join(
        (tmp_path / "site_a_cpu.md").read_text().split("## Where the CAMs sit")[1].split()
    )
    assert "cropped to the body (at least 99.90 % of every fold's image area)" in where
    assert "cannot tell one method's maps from another's" in where


def test_the_site_a_recipe_report_shows_the_validation_curves(tmp_path):
    rows = [
        _row("site-A", "baseline", 0, 80, curve[-1], 20, settings={"lr": lr}, val_curve=curve)
        for lr, curve in ((0.1, [70.0, 84.0]), (0.01, [60.0, 75.5]))
    ]
    merge_results(tmp_path / "site_a_recipe_cpu.json", rows, key=reproduce.ROW_KEY)
    _quiet(["--table", "site-a-recipe", "--report-only", "--results", str(tmp_path)])
    md = (tmp_path / "site_a_recipe_cpu.md").read_text()
    assert "| 0.01 | 20 | 75.50 | 3 | 60.0 75.5 |\n| 0.1 | 20 | 84.00 | 3 | 70.0 84.0 |" in md
    assert "80.00" not in md  # test accuracy is not shown
    assert "Not measured yet: lr 0.03; no lr is chosen before all are." in md
    assert "Chosen" not in md


def test_the_site_a_recipe_rule_picks_the_lr_then_the_shortest_schedule_near_it():
    from benchmarks.tables.site_a import choose_site_a_recipe

    def row(lr, epochs, val):
        return {"settings": {"lr": lr}, "epochs": epochs, "val_acc": val}

    lrs = (0.01, 0.03, 0.1)
    long = [row(0.01, 20, 75.25), row(0.03, 20, 75.86), row(0.1, 20, 76.66)]
    assert choose_site_a_recipe(long[:2], lrs) is None  # not every lr measured
    assert choose_site_a_recipe(long, lrs) == (0.1, 20)
    assert choose_site_a_recipe([*long, row(0.1, 10, 75.70)], lrs) == (0.1, 10)  # within 1
    assert choose_site_a_recipe([*long, row(0.1, 10, 75.60)], lrs) == (0.1, 20)  # 1.06 below
    # a shorter schedule at another lr is not read; a tie goes to the smaller lr
    assert choose_site_a_recipe([*long, row(0.03, 10, 80.0)], lrs) == (0.1, 20)
    assert choose_site_a_recipe([row(0.01, 20, 70.0), row(0.03, 20, 70.0)], (0.01, 0.03)) == (
        0.01,
        20,
    )


def test_the_site_a_table_runs_the_recipe_its_study_chose():
    """SITE_A's lr and epochs are what the published recipe study chooses, never set by hand."""
    from benchmarks.runner.io import read_results
    from benchmarks.tables.site_a import choose_site_a_recipe

    path = reproduce.RESULTS / "site_a_recipe_cpu.json"
    chosen = choose_site_a_recipe(read_results(path), reproduce.SITE_A_LRS)
    assert chosen is not None, f"{path}: the recipe study is unfinished"
    recipe = dict(reproduce.SITE_A)
    assert (recipe["lr"], recipe["epochs"]) == chosen
    md = (reproduce.RESULTS / "site_a_recipe_cpu.md").read_text()
    assert f"Chosen: **lr {chosen[0]:g}, {chosen[1]} epochs**" in md


def test_site_a_is_recommended_over_both_sites(tmp_path):
    blocks = {"split": "patient-blocks:5"}
    site_a = [
        _row("site-A", m, s, 80, 85 + (m == "snapmix") + s, settings={**blocks, "mix": m})
        for m in ("baseline", "snapmix")
        for s in range(3)
    ]
    merge_results(tmp_path / "site_a_cpu.json", site_a, key=reproduce.ROW_KEY)
    argv = ["--table", "site-a", "--report-only", "--results", str(tmp_path)]
    _quiet(argv)
    alone = json.loads((tmp_path / "site_a_cpu.json").read_text())["recommended_detail"]
    assert alone["method"] == "snapmix" and alone["val_delta"] == {"site-A": 1.0}
    site_b = [  # SnapMix loses 2 points on site B's validation at 10 epochs (wins at 30)
        _row("site-B", m, s, 70, 60 - 2 * (m == "snapmix") + 9 * (e == 30), e,
             settings={"mix": m, "epochs": e})
        for m in ("baseline", "snapmix") for s in range(3) for e in (10, 30)
    ]  # fmt: skip
    merge_results(tmp_path / "pretrained_cpu.json", site_b, key=reproduce.ROW_KEY)
    _quiet(argv)
    both = json.loads((tmp_path / "site_a_cpu.json").read_text())["recommended_detail"]
    assert both["method"] == "baseline"
    assert both["val_delta_by_method"]["snapmix"] == pytest.approx({"site-A": 1.0, "site-B": -2.0})
    assert "**plain training** (`baseline`)" in (tmp_path / "site_a_cpu.md").read_text()


def test_the_site_a_figures_show_the_recommended_methods_best_fold_of_the_patient_split():
    from benchmarks.figures import site_a_model

    def row(method, seed, val, split="patient-blocks:5"):
        return {"method": method, "seed": seed, "epochs": 10, "val_acc": val,
                "settings": {"split": split}}  # fmt: skip

    rows = [row("baseline", 0, 80.0), row("baseline", 1, 84.0), row("baseline", 2, 84.0),
            row("cpe_norm", 3, 90.0), row("baseline", 0, 99.0, "leaky-random:5")]  # fmt: skip
    assert site_a_model({"rows": rows}, "patient-blocks:5", 10) == ("baseline", 1)  # ties: lowest
    assert (
        site_a_model({"rows": rows, "recommended": None}, "patient-blocks:5", 10)[0] == "baseline"
    )
    assert site_a_model({"rows": rows, "recommended": "cpe_norm"}, "patient-blocks:5", 10) == (
        "cpe_norm",
        3,
    )
    with pytest.raises(SystemExit, match="no cpe_norm rows"):
        site_a_model({"rows": rows, "recommended": "cpe_norm"}, "patient-blocks:5", 30)
