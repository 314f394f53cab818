"""Timing helpers shared by the benchmarks: interleaved, paired repetitions and medians of ratios.

Every comparison in ``perf.py`` runs its contenders side by side in one process against one
baseline: each repetition visits every contender, in a fresh random order, timing it right next
to a run of the baseline (:func:`paired`), and forms the ratio of that pair. The reported number
is the median of these per-repetition ratios. On a shared machine this cancels most of the load
that other processes put on the cores, which would otherwise dominate absolute times.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping

import torch


def sync(device: torch.device) -> None:
    """Wait for queued device work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in seconds, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class Comparison:
    """Paired timings of contenders against one baseline (see :func:`paired`)."""

    def __init__(self, baseline: str) -> None:
        self.baseline = baseline
        self.times: dict[str, list[float]] = {baseline: []}
        self.ratios: dict[str, list[float]] = {}

    def median_ratio(self, name: str) -> float:
        """Median over repetitions of ``time(name) / time(baseline)`` (paired)."""
        return float(statistics.median(self.ratios[name]))

    def summary(self) -> dict[str, dict[str, float]]:
        """Median time (ms) of each contender; median ratio to the baseline, with quartiles."""
        out: dict[str, dict[str, float]] = {}
        for name, values in self.times.items():
            entry = {"median_ms": 1e3 * float(statistics.median(values))}
            if name in self.ratios:
                lo, hi = quartiles(self.ratios[name])
                entry.update(ratio=self.median_ratio(name), ratio_q1=lo, ratio_q3=hi)
            out[name] = entry
        return out


def paired(
    fns: Mapping[str, Callable[[], object]],
    baseline: str,
    reps: int,
    warmup: int,
    device: torch.device,
    seed: int = 0,
) -> Comparison:
    """Time every contender against the baseline in adjacent pairs, ``reps`` times.

    One repetition visits the contenders in a fresh random order; for each it times the baseline
    and the contender back to back (which of the two goes first is a coin flip) and records the
    ratio of that pair. Pairs are a second or so apart at most, so load from other processes that
    drifts over seconds affects both members alike; the median over repetitions of the per-pair
    ratios is what the benchmarks report.

    Args:
        fns: name → zero-argument callable, the baseline included.
        baseline: the name every ratio is taken against.
        reps: timed repetitions.
        warmup: untimed rounds of every callable first (allocator, thread pools, caches).
        device: synchronised around every call.
        seed: seed of the order and the coin flips.
    """
    names = [name for name in fns if name != baseline]
    for _ in range(warmup):
        for name in fns:
            fns[name]()
    rng = random.Random(seed)
    result = Comparison(baseline)
    for name in names:
        result.times[name], result.ratios[name] = [], []
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(reps):
            order = names[:]
            rng.shuffle(order)
            for name in order:
                pair = [baseline, name] if rng.random() < 0.5 else [name, baseline]
                took = {}
                for member in pair:
                    gc.collect()
                    gc.disable()
                    took[member] = time_once(fns[member], device)
                    gc.enable()
                result.times[baseline].append(took[baseline])
                result.times[name].append(took[name])
                result.ratios[name].append(took[name] / took[baseline])
    finally:
        if gc_was_enabled:
            gc.enable()
    return result


def quartiles(values: list[float]) -> tuple[float, float]:
    """25th and 75th percentiles (the spread reported next to a median)."""
    if len(values) < 2:
        return float(values[0]), float(values[0])
    q = statistics.quantiles(values, n=4, method="inclusive")
    return float(q[0]), float(q[2])


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device) -> dict[str, object]:
    """What the numbers were measured on."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "grad-cam": _version("grad-cam"),
        "torchcam": _version("torchcam"),
        "kornia": _version("kornia"),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
