"""camkit performance benchmarks: speed and memory, side by side with what users would use instead.

Usage (from the repository root)::

    python benchmarks/perf.py                      # full CPU run, ~15-22 min on 2 cores
    python benchmarks/perf.py --smoke --out /tmp/b # every benchmark, tiny sizes, seconds (CI)
    python benchmarks/perf.py --only train,memory  # a subset
    python benchmarks/perf.py --device cuda        # on a GPU
    python benchmarks/perf.py --checkpoint m.pt    # TTA with a trained resnet18 state_dict

Benchmarks (``--only`` names): ``train`` (training-step variants), ``finite`` (the cost of the
step's finiteness check of its images: ``TrainStep(model)`` vs ``check_finite=False``), ``cam``
(CAM extraction vs
pytorch-grad-cam and torchcam), ``snapmix`` (the SnapMix op vs a per-sample loop and timm CutMix),
``tta`` (CAM-masking TTA with early exit vs full vote vs the released protocol), ``memory`` (peak
memory of each training-step variant, one subprocess each), ``cam3d`` (camkit's CAM of a MONAI
3-D DenseNet121 at 64³ vs MONAI's ``CAM`` and ``GradCAM``) and ``snapmix3d`` (the SnapMix op on a
batch of volumes vs one copy of it and a per-volume loop).
This file is the command line (its flags, the full and smoke sizes); the benchmarks and the
report are in the package ``perfcases/``, one module by job (``images``: the 2-D rows, ``tta``,
``memory``, ``volumes``: the 3-D rows, ``profiles``, ``report``).
Every timing is a median of per-repetition ratios, each contender timed right next to its
baseline in one process (see ``harness.py``); ``--profile`` writes torch.profiler tables instead.

Writes ``perf_<device>.json`` and ``perf_<device>.md`` (``perf_<device>_smoke.*`` with
``--smoke``) into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import machine_info
from benchmarks.perfcases.common import RESULTS_DIR, log
from benchmarks.perfcases.images import bench_cam, bench_finite, bench_snapmix, bench_train
from benchmarks.perfcases.memory import bench_memory, memory_worker
from benchmarks.perfcases.profiles import run_profiles
from benchmarks.perfcases.report import TARGETS, _fmt, write_report
from benchmarks.perfcases.tta import bench_tta
from benchmarks.perfcases.volumes import bench_cam3d, bench_snapmix3d
from benchmarks.steps import STEP_VARIANTS

BENCHMARKS = ("train", "finite", "cam", "snapmix", "tta", "memory", "cam3d", "snapmix3d")

# Full run: the sizes. Smoke: the same code paths on tiny inputs.
FULL = {
    "train": [("resnet18", 112, 32, 10), ("resnet50", 224, 8, 6)],  # arch, size, batch, reps
    "train_warmup": 1,
    "finite": [("resnet18", 112, 32, 20)],  # arch, size, batch, reps (a ~1% effect: more reps)
    "cam": [("resnet18", 112, 32, 10), ("resnet50", 224, 8, 8)],
    "cam_warmup": 2,
    "snapmix": {"batch": 64, "size": 224, "reps": 15, "warmup": 2},
    "tta": {
        "size": 112,
        "k": 31,
        "theta": 0.2,
        "stress_theta": 0.5,
        "chunk": 29,
        "limit": None,
        "epochs": 15,
    },
    "memory": [("resnet18", 112, 32), ("resnet50", 224, 8)],
    "memory_variants": tuple(v for v in STEP_VARIANTS if v != "full_hand"),
    "memory_steps": 2,
    "memory_parallel": 2,
    # MONAI DenseNet121 3-D at 64³ (a 2³ final map); cls: the class of every map (see volumes.py)
    "cam3d": {"size": 64, "batch": 2, "reps": 8, "warmup": 1, "cls": 1},
    "snapmix3d": {"batch": 32, "size": 64, "reps": 15, "warmup": 2},
}
SMOKE = {
    "train": [("resnet18", 64, 4, 1)],  # 64 px: a 2×2 feature map, the least CPE accepts
    "train_warmup": 1,
    "finite": [("resnet18", 64, 4, 1)],
    "cam": [("resnet18", 64, 4, 1)],
    "cam_warmup": 1,
    "snapmix": {"batch": 8, "size": 32, "reps": 2, "warmup": 1},
    "tta": {
        "size": 64,
        "k": 5,
        "theta": 0.2,
        "stress_theta": None,
        "chunk": 3,
        "limit": 6,
        "epochs": 0,
    },
    "memory": [("resnet18", 64, 4)],
    "memory_variants": ("plain", "full"),  # three processes: keep the smoke run short
    "memory_steps": 1,
    "memory_parallel": 3,
    "cam3d": {"size": 64, "batch": 1, "reps": 1, "warmup": 1, "cls": 1},
    "snapmix3d": {"batch": 4, "size": 32, "reps": 2, "warmup": 1},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every benchmark, seconds")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}"
    )
    parser.add_argument(
        "--checkpoint", help="resnet18 state_dict (2 classes) for the TTA benchmark"
    )
    parser.add_argument("--save-checkpoint", help="save the TTA model trained here to this path")
    parser.add_argument("--tta-epochs", type=int, help="epochs of the TTA model's training")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's, the number of cores; 1 with --smoke); 1 is "
        "steadier when other processes load the cores",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="output folder")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing, write torch.profiler tables to <out>/profiles/",
    )
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--mem-config", default="resnet18,112,32", help=argparse.SUPPRESS)
    parser.add_argument("--mem-steps", type=int, default=2, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.smoke:
        # tiny tensors gain nothing from threads, and two OpenMP threads on cores that other
        # processes share stall at every barrier (a 2-s smoke run took a minute under load)
        torch.set_num_threads(1)
    if args.memory_worker:
        memory_worker(args)
        return {}
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"--only: unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.tta_epochs is not None:
        cfg["tta"] = {**cfg["tta"], "epochs": args.tta_epochs}
    torch.manual_seed(0)
    np.random.seed(0)
    if args.profile:
        for path in run_profiles(cfg, device, args.out):
            log(f"wrote {path}")
        return {}
    start = time.perf_counter()
    argv_text = sys.argv[1:] if argv is None else argv
    results: dict = {
        "meta": {
            "command": shlex.join(["python", "benchmarks/perf.py", *argv_text]),
            "device": str(device),
            "smoke": bool(args.smoke),
            "benchmarks": only,
            "machine": machine_info(device),
        }
    }
    details: dict[str, object] = {}
    runners = {
        "train": lambda: bench_train(cfg, device),
        "finite": lambda: bench_finite(cfg, device),
        "cam": lambda: bench_cam(cfg, device),
        "snapmix": lambda: bench_snapmix(cfg, device),
        "tta": lambda: bench_tta(cfg, device, args),
        "memory": lambda: bench_memory(cfg, device),
        "cam3d": lambda: bench_cam3d(cfg, device),
        "snapmix3d": lambda: bench_snapmix3d(cfg, device),
    }
    for name in BENCHMARKS:
        if name not in only:
            continue
        t0 = time.perf_counter()
        out = runners[name]()
        results.update(out["flat"])
        details[name] = out["details"]
        log(f"[{name}] done in {time.perf_counter() - t0:.0f} s")
    results["details"] = details
    results["meta"]["wall_seconds"] = time.perf_counter() - start
    if hasattr(os, "getloadavg"):
        results["meta"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    stem = f"perf_{device.type}" + ("_smoke" if args.smoke else "")
    json_path, md_path = write_report(results, args.out, stem)
    log(f"wrote {json_path} and {md_path}")
    for key, target, pred in TARGETS:
        if key in results:
            holds = "" if pred is None else ("ok" if pred(results[key]) else "MISSED")
            log(f"  {key:42s} {_fmt(results[key]):>10s}  {target} {holds}")
    return results


if __name__ == "__main__":
    main()
