"""The ``memory`` row of ``benchmarks/perf.py``: the peak memory of each training-step variant,
one worker process each.

A worker is ``python benchmarks/perf.py --memory-worker VARIANT --mem-config ARCH,SIZE,BATCH``
(hidden flags of the command line), which runs `memory_worker` and prints one JSON line.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.perfcases.common import _tag, log
from benchmarks.steps import StepBench

_PERF_PY = Path(__file__).resolve().parents[1] / "perf.py"  # the command a worker runs


def _reset_peak_rss() -> bool:
    """Return freed heap pages to the OS, then reset the kernel's peak-RSS mark to the current RSS.

    Without the trim, a step could reuse pages that set-up freed but the allocator kept, and its
    memory would not show in the peak. Linux ≥ 4.0 (``/proc/self/clear_refs``); False elsewhere.
    """
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kb() -> int:
    """This process's peak RSS in KiB: ``VmHWM`` on Linux, else ``ru_maxrss``.

    On Linux ``getrusage(RUSAGE_SELF).ru_maxrss`` is the larger of the process's own peak
    (``VmHWM``) and the peak RSS of the process image it replaced at ``exec`` — the *parent's* RSS
    at fork time — so a worker started by a big benchmark process would report the parent's size.
    ``VmHWM`` is the same counter without that inheritance (and the one ``clear_refs`` resets).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def memory_worker(args: argparse.Namespace) -> None:
    """Subprocess mode: build model + batch, run ``--memory-worker`` steps, print the peak."""
    arch, size, batch = args.mem_config.split(",")
    device = torch.device(args.device)
    bench = StepBench(arch, int(size), int(batch), device)
    gc.collect()
    # Start the peak at the current RSS: construction transients (CAMExtractor probes its head on
    # a copy of the model) would otherwise set the peak of the baseline process too.
    reset = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    if args.memory_worker != "baseline":
        step = bench.callables((args.memory_worker,))[args.memory_worker]
        for _ in range(args.mem_steps):
            step()
    result = {
        "variant": args.memory_worker,
        "peak_kb": _peak_rss_kb(),
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "peak_reset_after_setup": reset,
    }
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    print(json.dumps(result), flush=True)


def _run_worker(variant: str, config: str, steps: int, device: torch.device) -> dict:
    cmd = [
        sys.executable,
        str(_PERF_PY),
        "--memory-worker",
        variant,
        "--mem-config",
        config,
        "--mem-steps",
        str(steps),
        "--device",
        str(device),
        "--threads",
        str(torch.get_num_threads()),
    ]
    # A fixed mmap threshold (glibc) maps every large tensor on its own and unmaps it when freed,
    # so the peak RSS follows live memory; with glibc's adaptive threshold it also holds whatever
    # freed heap happened to be kept, which varies by ±20 MiB from one process to the next.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {variant} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(cfg: dict, device: torch.device) -> dict:
    steps = cfg["memory_variants"]
    variants = ("baseline", *steps)
    flat: dict[str, float] = {}
    details: dict[str, dict] = {}
    for arch, size, batch in cfg["memory"]:
        tag = _tag(arch, size, batch)
        config = f"{arch},{size},{batch}"
        log(f"[memory] {tag}: one process per variant ({', '.join(variants)})")
        with ThreadPoolExecutor(max_workers=cfg["memory_parallel"]) as pool:
            peaks = dict(
                zip(
                    variants,
                    pool.map(
                        lambda v, config=config: _run_worker(
                            v, config, cfg["memory_steps"], device
                        ),
                        variants,
                    ),
                    strict=True,
                )
            )
        key = "cuda_peak_bytes" if device.type == "cuda" else "peak_kb"
        scale = 2**20 if device.type == "cuda" else 2**10  # → MiB
        mib = {v: peaks[v][key] / scale for v in variants}
        extra = {v: mib[v] - mib["baseline"] for v in steps}
        details[tag] = {
            "peak_mib": mib,
            "peak_reset_after_setup": all(peaks[v]["peak_reset_after_setup"] for v in variants),
            "step_mib_over_baseline": extra,
            "measure": "cuda.max_memory_allocated"
            if device.type == "cuda"
            else "peak RSS (VmHWM; ru_maxrss without the parent's inherited peak)",
        }
        for v in steps[1:]:
            flat[f"memory_ratio_{v}_{tag}"] = extra[v] / extra["plain"]
        log("  " + ", ".join(f"{v}: +{extra[v]:.0f} MiB" for v in steps))
    for v in steps[1:]:
        flat[f"memory_ratio_{v}"] = max(
            val for k, val in flat.items() if k.startswith(f"memory_ratio_{v}_")
        )
    return {"flat": flat, "details": details}
