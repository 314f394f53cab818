"""``benchmarks/perf.py --profile``: torch.profiler tables of the contenders behind the targets,
where their time goes (no timing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import sync
from benchmarks.perfcases.common import _tag, log
from benchmarks.perfcases.images import _cam_contenders
from benchmarks.reference import loop_snapmix
from benchmarks.runner.io import atomic_write_text
from benchmarks.steps import StepBench


def _profile_table(fn: Callable[[], object], device: torch.device, runs: int = 3) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    fn()  # warm
    with profile(activities=activities) as prof:
        for _ in range(runs):
            fn()
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=48)


def run_profiles(cfg: dict, device: torch.device, out_dir: Path) -> list[Path]:
    """torch.profiler tables (3 calls each) of the contenders behind the targets."""
    import timm
    from timm.data import Mixup

    from camkit import SnapMix

    folder = out_dir / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def write(name: str, fn: Callable[[], object]) -> None:
        log(f"[profile] {name}")
        path = folder / f"{device.type}_{name}.txt"
        atomic_write_text(_profile_table(fn, device) + "\n", path)
        written.append(path)

    arch, size, batch, _ = cfg["train"][0]
    bench = StepBench(arch, size, batch, device)
    tag = _tag(arch, size, batch)
    for name in ("plain", "cpe", "full", "frozen_fwd", "nograd_fwd"):
        write(f"train_{tag}_{name}", bench.callables((name,))[name])
    del bench
    arch, size, batch, _ = cfg["cam"][0]
    model = timm.create_model(arch, pretrained=False, num_classes=2).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 2, (batch,), generator=gen).to(device)
    fns = _cam_contenders(model, x, y, {}, with_torchcam=False)
    for name in ("camkit", "gradcam"):
        write(f"cam_{_tag(arch, size, batch)}_{name}", fns[name])
    c = cfg["snapmix"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(c["batch"], 3, c["size"], c["size"], generator=gen).to(device)
    y = torch.randint(0, 2, (c["batch"],), generator=gen).to(device)
    grid = max(1, c["size"] // 32)
    cams = torch.randn(c["batch"], grid, grid, generator=gen).to(device)
    rng = np.random.default_rng(0)
    timm_mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, num_classes=2)
    mix = SnapMix(2)
    tag = f"b{c['batch']}_{c['size']}px"
    write(f"snapmix_{tag}_camkit", lambda: mix(x, y, cams))
    write(f"snapmix_{tag}_loop", lambda: loop_snapmix(x, y, cams, 2, rng))
    write(f"snapmix_{tag}_timm_cutmix", lambda: timm_mix(x.clone(), y))
    return written
