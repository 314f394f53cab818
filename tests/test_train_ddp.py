"""Two-process DDP runs (gloo, CPU) of the training step, with a negative control."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(mode: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{mode}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent.parent)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(WORKER),
        "--mode",
        mode,
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["step", "accumulate"])
def test_ddp_train_step_keeps_ranks_in_sync(mode, tmp_path):
    report = _torchrun(mode, tmp_path)
    assert report["world"] == 2
    assert report["moved"] > 1e-3  # the weights did train
    assert report["max_param_diff"] == 0.0
    # one BatchNorm update per training forward: the frozen CAM pass leaves the buffers alone
    steps = 3 if mode == "step" else 6
    assert report["num_batches_tracked"] == [steps, steps]
    for name, message in report["errors"].items():
        assert "DistributedDataParallel" in message, name
        assert "TrainStep" in message, name


@pytest.mark.slow
def test_ddp_negative_control_catches_desync(tmp_path):
    """The README loop of old around ``CAMExtractor(ddp.module)`` bypasses DDP: ranks drift."""
    report = _torchrun("naive", tmp_path)
    assert report["max_param_diff"] > 1e-3
