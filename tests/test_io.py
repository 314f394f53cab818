"""The runner's files (`benchmarks.runner.io`, on camkit's one atomic write in `camkit._io`):
atomic writes, stale temporary files, checkpoint errors, merges."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.runner import io

PROCESSES, ROWS = 4, 20


def _merge_worker(path: str, worker: int) -> None:
    for i in range(ROWS):
        io.merge_results(path, [{"method": f"w{worker}", "seed": i, "acc": float(i)}])


@pytest.mark.slow
def test_concurrent_merges_from_several_processes_lose_no_row(tmp_path):
    path = tmp_path / "results.json"
    io.merge_results(path, [{"method": "first", "seed": 0, "acc": 1.0}])
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_merge_worker, args=(str(path), w)) for w in range(PROCESSES)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(120)
        assert proc.exitcode == 0
    rows = json.loads(path.read_text())["rows"]
    keys = [(r["method"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == 1 + PROCESSES * ROWS
    assert ("first", 0) in keys
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_merge_replaces_only_the_row_with_the_same_key(tmp_path):
    path = tmp_path / "results.json"
    key = ("method", "seed", "settings")
    io.merge_results(path, [{"method": "a", "seed": 0, "settings": {"lr": 1}, "acc": 1.0}], key=key)
    io.merge_results(path, [{"method": "a", "seed": 0, "settings": {"lr": 2}, "acc": 2.0}], key=key)
    rows = io.merge_results(
        path, [{"method": "a", "seed": 0, "settings": {"lr": 1}, "acc": 3.0}], key=key
    )
    assert [(r["settings"]["lr"], r["acc"]) for r in rows] == [(1, 3.0), (2, 2.0)]
    path.write_text('{"site": {}}')
    with pytest.raises(ValueError, match=r"results\.json: expected a results file"):
        io.merge_results(path, [{"method": "a", "seed": 0}])


def test_merge_keeps_and_sets_top_level_keys(tmp_path):
    path = tmp_path / "results.json"
    io.merge_results(path, [{"method": "a", "seed": 0}], extra={"recommended": "a"})
    io.merge_results(path, [{"method": "b", "seed": 0}])  # no extra: the key survives
    data = json.loads(path.read_text())
    assert data["recommended"] == "a" and [r["method"] for r in data["rows"]] == ["a", "b"]
    io.merge_results(path, [], extra={"recommended": "b", "rows": "ignored"})
    data = json.loads(path.read_text())
    assert data["recommended"] == "b" and len(data["rows"]) == 2


def test_atomic_save_leaves_no_temporary_file_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pt"
    io.atomic_save({"x": torch.ones(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        io.atomic_save({"x": lambda: None}, path)
    assert torch.equal(io.load_checkpoint(path)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    io.atomic_write_text("a\n", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_text() == "a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "ckpt.pt"]


def test_a_write_killed_half_way_leaves_a_temp_that_clean_stale_temps_removes(tmp_path):
    # a child process starts an atomic write and is killed inside it (os._exit, no cleanup)
    code = (
        "import os, sys, torch\n"
        "from benchmarks.runner import io\n"
        "def die(obj, handle):\n"
        "    handle.write(b'half a checkpoint'); handle.flush(); os._exit(9)\n"
        "torch.save = die\n"
        "io.atomic_save({'x': 1}, sys.argv[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt.pt")], check=False)
    assert proc.returncode == 9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".ckpt.pt.camkit-") and left[0].endswith(".tmp")
    keep = [tmp_path / "notes.tmp", tmp_path / ".other.tmp", tmp_path / "ckpt.pt.tmp"]
    for other in keep:  # not camkit's pattern: never touched
        other.write_text("mine")
    live = tmp_path / f".live.pt.camkit-{os.getpid()}-0123abcd.tmp"  # a write in progress
    live.write_text("writing")
    removed = io.clean_stale_temps(tmp_path)
    assert [p.name for p in removed] == left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [*keep, live])
    assert io.clean_stale_temps(tmp_path / "missing") == []


def test_unreadable_checkpoints_name_the_file_and_what_was_expected(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt: the checkpoint file is empty \(0 bytes\)"):
        io.load_checkpoint(empty)

    good = io.atomic_save({"config": {}, "model": {"w": torch.ones(100)}}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.pt: cannot read the checkpoint .*truncated"):
        io.load_checkpoint(truncated)

    bare = io.atomic_save({"fc.weight": torch.ones(2, 2)}, tmp_path / "bare.pt")
    with pytest.raises(
        ValueError,
        match=r"bare\.pt: expected a run checkpoint with keys \['config', 'model'\], "
        r"got a bare state_dict \(1 tensors\)",
    ):
        io.load_checkpoint(bare, required=("config", "model"))
    assert set(io.load_checkpoint(good, required=("config", "model"))) == {"config", "model"}
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        io.load_checkpoint(tmp_path / "missing.pt")


def test_merge_refuses_nan_rather_than_writing_invalid_json(tmp_path):
    from benchmarks.runner.io import merge_results

    path = tmp_path / "results.json"
    merge_results(path, [{"method": "a", "seed": 0, "acc": 1.0}])
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        merge_results(path, [{"method": "b", "seed": 0, "acc": float("nan")}])
    assert [r["method"] for r in merge_results(path, [])] == ["a"]  # the file is intact
