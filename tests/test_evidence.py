"""benchmarks/evidence.py: the paired statistics, and a tiny run + report on the real digits."""

from __future__ import annotations

import math

import pytest

from benchmarks import evidence


def test_paired_ci_is_the_t_interval_of_the_differences():
    mean, lo, hi = evidence.paired_ci([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, 2 df) · sd / √n
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert math.isnan(evidence.paired_ci([1.5])[1])


@pytest.mark.data
@pytest.mark.skipif(
    not (evidence.DATA / "mnist.npz").is_file(), reason=f"no digits data in {evidence.DATA}"
)
def test_smoke_run_and_report(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence, "SETTINGS", dict(evidence.SETTINGS))
    evidence.main(["run", "--smoke", "--seeds", "0", "1", "--methods", "baseline", "cpe_norm",
                   "--out", str(tmp_path), "--threads", "1"])  # fmt: skip
    rows = evidence.merge_results(tmp_path / "evidence.json", [], key=("method", "seed"))
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("baseline", 0), ("baseline", 1), ("cpe_norm", 0), ("cpe_norm", 1)
    ]  # fmt: skip
    row = rows[0]
    assert row["settings"]["train_digits"] == 256 and row["settings"]["model"] == "resnet10t"
    for part in ("val", "usps", "mnistm"):
        assert 0.0 <= row[part]["accuracy"] <= 1.0
        for rule in evidence.RULES:
            assert 0 <= row[part][f"tta_{rule}"]["flips"] <= row[part][f"tta_{rule}"]["n"]
    assert 0.0 <= row["deletion_auc_usps"] <= 1.0
    text = evidence.report(type("A", (), {"out": tmp_path, "publish": False})())
    assert "| cpe_norm | 2 |" in text and "[" in text  # paired interval over the two seeds
    # a row with other settings is refused, not blended into the table
    evidence.merge_results(
        tmp_path / "evidence.json",
        [{**row, "seed": 9, "settings": {**row["settings"], "epochs": 99}}],
        key=("dataset", "method", "seed"),
    )
    with pytest.raises(SystemExit, match="other settings"):
        evidence.report(type("A", (), {"out": tmp_path, "publish": False})())
