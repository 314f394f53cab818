"""The runner's files (`benchmarks.runner.io`, on camkit's one atomic write in `camkit._io`):
atomic writes, stale temporary files, checkpoint errors, merges."""

from __future__ import annotations

import errno
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


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes, as on a full disk."""

    def __init__(self, handle, room: int):
        self._handle, self._room = handle, room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)


def test_a_full_disk_is_named_with_the_path_and_the_old_files_are_kept(tmp_path, monkeypatch):
    ckpt, results = tmp_path / "ckpt.pt", tmp_path / "results.json"
    io.atomic_save({"w": torch.ones(2)}, ckpt)
    io.merge_results(results, [{"method": "a", "seed": 0}])
    before = results.read_text()
    import camkit._io

    monkeypatch.setattr(
        camkit._io, "open", lambda *a, **k: _FullDisk(open(*a, **k), 100), raising=False
    )
    # torch.save reports the failed write as RuntimeError('... unexpected pos ...'): the cause
    # is recovered, with the path
    message = (
        rf"^{ckpt}: no space left on device \(disk or quota full in {tmp_path}\); the previous"
    )
    with pytest.raises(OSError, match=message) as info:
        io.atomic_save({"w": torch.ones(10_000)}, ckpt)
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match=rf"^{results}: no space left on device"):
        io.merge_results(results, [{"method": "b", "seed": 0, "notes": "x" * 200}])
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(ckpt)["w"], torch.ones(2))
    assert results.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt.pt",
        "results.json",
        "results.json.lock",
    ]


def _weights_files(folder):
    good = io.atomic_save({"w": torch.ones(1000)}, folder / "good.pt")
    data = good.read_bytes()
    (folder / "cut.pt").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(data) - 300 : len(data) - 200] = bytes(100)
    (folder / "corrupt.pt").write_bytes(bytes(corrupt))
    (folder / "notes.pth").write_text("these are not weights\n")
    (folder / "random.pt").write_bytes(bytes(range(7, 207)))

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo ran > " + str(folder / "ran.txt"),))

    torch.save({"w": Payload()}, folder / "evil.pt")
    import safetensors.torch

    safetensors.torch.save_file({"w": torch.ones(3)}, folder / "good.safetensors")
    whole = (folder / "good.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(whole[:-8])


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (
            "cut.pt",
            r"truncated: a torch\.save zip archive whose end \(the central directory\) is "
            r"missing; an interrupted copy or download\?$",
        ),
        (
            "corrupt.pt",
            r"a corrupt torch\.save zip archive \(PytorchStreamReader failed reading "
            r"zip archive: invalid header or archive is corrupted\)$",
        ),
        (
            "notes.pth",
            r"a text file \(it starts with 'these are not weights'\), not a weights file$",
        ),
        (
            "random.pt",
            r"not a torch\.save file \(it starts with the bytes 07 08 09 0a 0b 0c 0d 0e\)$",
        ),
        (
            "evil.pt",
            r"refused: it needs pickle globals outside torch's weights-only allowlist \("
            r".*GLOBAL posix\.system.*\); nothing in it was run",
        ),
        ("cut.safetensors", r"truncated or not a safetensors file \(SafetensorError: .*incomplete"),
    ],
)
def test_unreadable_weights_files_say_what_is_wrong_with_them(tmp_path, name, why):
    _weights_files(tmp_path)
    size = (tmp_path / name).stat().st_size
    with pytest.raises(
        ValueError, match=rf"^{tmp_path / name}: cannot read the checkpoint \({size} bytes\): {why}"
    ):
        io.load_checkpoint(tmp_path / name)
    assert not (tmp_path / "ran.txt").exists()
    assert torch.equal(io.load_checkpoint(tmp_path / "good.safetensors")["w"], torch.ones(3))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (
            '{"rows": [{"method": "a", "seed": 0}, {"meth',
            r"not valid JSON \(Unterminated string starting at: line 1, column 40\): a "
            r"truncated or corrupt results file; move it aside",
        ),
        ('{"rows": [["a", 0]]}', r"row 0 is a JSON list, expected an object"),
        ('{"rows": {"a": 0}}', r"expected a results file \{'rows': \[\.\.\.\]\}"),
        ("\x00\xff", r"expected a JSON results file \(UTF-8 text\), got binary data"),
    ],
)
def test_a_corrupt_or_truncated_results_file_is_named_with_the_problem(tmp_path, text, why):
    path = tmp_path / "results.json"
    path.write_text(text, encoding="latin-1")
    for call in (lambda: io.merge_results(path, []), lambda: io.read_results(path, fields={})):
        with pytest.raises(ValueError, match=rf"^{path}: {why}"):
            call()
    assert path.read_text(encoding="latin-1") == text  # left as it was


def test_read_results_checks_the_runners_fields_and_needs_no_lock(tmp_path):
    path = tmp_path / "ro" / "results.json"
    row = {"dataset": "site-B", "method": "a", "seed": 0, "settings": {}}
    io.merge_results(path, [row, {**row, "seed": 1}])
    (path.parent / "results.json.lock").unlink()
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        assert [r["seed"] for r in io.read_results(path)] == [0, 1]  # no lock file made
        assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]
        if os.geteuid() != 0:  # root writes anyway
            with pytest.raises(PermissionError, match=rf"^{path}: the results file cannot be"):
                io.check_writable(path)
    finally:
        path.parent.chmod(0o755)
    path.write_text(json.dumps({"rows": [{**row, "seed": "0"}]}))
    with pytest.raises(
        ValueError, match=rf"^{path}: row 0: expected 'seed' to be a int, got str \('0'\)$"
    ):
        io.read_results(path)
    path.write_text(json.dumps({"rows": [{"method": "a"}]}))
    with pytest.raises(
        ValueError, match=rf"^{path}: row 0: expected 'dataset' to be a str, got nothing$"
    ):
        io.read_results(path)
    with pytest.raises(
        FileNotFoundError, match=rf"^{tmp_path / 'nope.json'}: no such results file$"
    ):
        io.read_results(tmp_path / "nope.json")
    assert io.read_results(tmp_path / "nope.json", missing_ok=True) == []
    assert not (tmp_path / "nope.json").exists()


def test_a_16_bit_grey_png_is_scaled_by_its_range_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from camkit.datasets._io import open_rgb

    values = np.array([[0, 128, 257, 32767], [32768, 65278, 65535, 4095]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "ct16.png")
    with Image.open(tmp_path / "ct16.png") as img:
        assert img.mode == "I;16"
    rgb = np.asarray(open_rgb(tmp_path / "ct16.png"))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert (rgb == rgb[..., :1]).all()  # grey on the three channels
    expected = np.array([[0, 0, 1, 127], [128, 254, 255, 16]], dtype=np.uint8)  # round(v/257)
    assert np.array_equal(rgb[..., 0], expected)
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "ct32.tif")  # mode I, 16-bit range
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "ct32.tif"))[..., 0], expected)
    Image.fromarray(np.array([[-1, 70000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(
        OSError,
        match=r"wide\.tif: expected 8- or 16-bit pixels \(0 to 65535\), got 32-bit integers "
        r"from -1 to 70000$",
    ):
        open_rgb(tmp_path / "wide.tif")
    Image.fromarray(np.ones((2, 2), dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(
        OSError, match=r"float\.tif: expected 8- or 16-bit integer pixels, got 32-bit floats"
    ):
        open_rgb(tmp_path / "float.tif")
    eight = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    Image.fromarray(eight).save(tmp_path / "rgb8.png")
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "rgb8.png")), eight)  # 8-bit: as it was
