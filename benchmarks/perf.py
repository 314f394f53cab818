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
batch of volumes vs one copy of it and a per-volume loop); the volume rows are in ``perf3d.py``.
Every timing is a median of per-repetition ratios, each contender timed right next to its
baseline in one process (see ``harness.py``); ``--profile`` writes torch.profiler tables instead.

Writes ``perf_<device>.json`` and ``perf_<device>.md`` (``perf_<device>_smoke.*`` with
``--smoke``) into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import importlib
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import perf3d
from benchmarks.harness import machine_info, paired, sync
from benchmarks.reference import loop_snapmix, released_tta
from benchmarks.runner.io import atomic_save, atomic_write_text, load_checkpoint
from benchmarks.steps import FINITE_VARIANTS, PART_VARIANTS, STEP_VARIANTS, StepBench

BENCHMARKS = ("train", "finite", "cam", "snapmix", "tta", "memory", "cam3d", "snapmix3d")
RESULTS_DIR = Path(__file__).resolve().parent / "results"

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
    # MONAI DenseNet121 3-D at 64³ (a 2³ final map); cls: the class of every map (see perf3d.py)
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

# key, target text, predicate (None: informational)
TARGETS: list[tuple[str, str, Callable[[float], bool] | None]] = [
    ("train_step_ratio_cpe", "≤ 1.05× plain", lambda v: v <= 1.05),
    ("train_step_ratio_snapmix", "(info; floor ≈ 1.3×)", None),
    ("train_step_ratio_full", "≤ 1.35× plain", lambda v: v <= 1.35),
    ("train_step_ratio_full_vs_hand", "≤ 1.02× (TrainStep / hand-written)", lambda v: v <= 1.02),
    (
        "train_step_ratio_full_fast",
        "≤ 1.10× plain (SnapMix from the mixed CAMs)",
        lambda v: v <= 1.10,
    ),
    ("train_step_ratio_full_fast_collated", "(info: mixed in the DataLoader)", None),
    ("train_step_ratio_timm_cutmix", "(peer)", None),
    ("finite_check_ratio", "(info: step with / without the images' finiteness check)", None),
    ("finite_check_share", "(info: the check alone / the step without it)", None),
    ("cam_speedup_vs_gradcam", "≥ 3×", lambda v: v >= 3.0),
    ("cam_corr_vs_gradcam", "≥ 0.999", lambda v: v >= 0.999),
    ("cam_speedup_vs_torchcam", "(peer)", None),
    ("cam_ratio_forward_only", "(info: bare no-grad forward / camkit)", None),
    ("cam_corr_vs_torchcam", "(peer)", None),
    ("snapmix_op_speedup_vs_loop", "≥ 10×", lambda v: v >= 10.0),
    ("snapmix_op_speedup_vs_loop_sample_boxes", "(info)", None),
    ("snapmix_op_ratio_vs_timm_cutmix", "(peer: time / timm's)", None),
    ("snapmix_op_ratio_vs_clone", "(info: time / one batch copy)", None),
    ("tta_forwards_per_image", "≤ 20 (released: 66 per spec, 33 as run here)", lambda v: v <= 20),
    ("tta_speedup_vs_full_vote", "≥ 1.6×", lambda v: v >= 1.6),
    ("tta_speedup_vs_released", "(info)", None),
    ("tta_labels_identical", "true", lambda v: v is True),
    ("tta_flips", "(info: labels the vote changed)", None),
    ("tta_stress_forwards_per_image", "(info, θ = 0.5)", None),
    ("tta_stress_speedup_vs_full_vote", "(info, θ = 0.5)", None),
    ("tta_stress_labels_identical", "(info, θ = 0.5) true", lambda v: v is True),
    ("tta_stress_flips", "(info, θ = 0.5)", None),
    ("memory_ratio_cpe", "(info)", None),
    ("memory_ratio_snapmix", "(info)", None),
    ("memory_ratio_full", "≤ 1.25× plain", lambda v: v <= 1.25),
    ("memory_ratio_timm_cutmix", "(peer)", None),
    ("cam3d_speedup_vs_monai_cam", "(peer: MONAI CAM time / camkit's)", None),
    ("cam3d_speedup_vs_monai_gradcam", "(peer: MONAI GradCAM time / camkit's)", None),
    ("cam3d_ratio_forward_only", "(info: bare no-grad forward / camkit)", None),
    ("cam3d_corr_vs_monai_cam", "≥ 0.999", lambda v: v >= 0.999),
    ("cam3d_corr_vs_monai_gradcam", "≥ 0.999", lambda v: v >= 0.999),
    ("snapmix3d_op_ratio_vs_clone", "(info: time / one batch copy)", None),
    ("snapmix3d_op_speedup_vs_loop", "(info: per-volume loop time / camkit's)", None),
]


def log(msg: str) -> None:
    print(msg, flush=True)


def times_ms(entries: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in entries.items() if isinstance(v, dict) and "median_ms" in v]


def _tag(arch: str, size: int, batch: int) -> str:
    return f"{arch}_{size}px_b{batch}"


# ------------------------------------------------------------------------------------------------
# 1. training step
# ------------------------------------------------------------------------------------------------


def bench_train(cfg: dict, device: torch.device) -> dict:
    flat: dict[str, float] = {}
    details: dict[str, dict] = {}
    for arch, size, batch, reps in cfg["train"]:
        tag = _tag(arch, size, batch)
        log(f"[train] {tag}: {reps} interleaved repetitions")
        bench = StepBench(arch, size, batch, device)
        comp = paired(
            bench.callables(STEP_VARIANTS + PART_VARIANTS),
            "plain",
            reps,
            cfg["train_warmup"],
            device,
        )
        details[tag] = comp.summary()
        for variant in STEP_VARIANTS[1:]:
            flat[f"train_step_ratio_{variant}_{tag}"] = comp.median_ratio(variant)
        for part in PART_VARIANTS:
            flat[f"train_part_ratio_{part}_{tag}"] = comp.median_ratio(part)
        # TrainStep against the same step written by hand, timed in adjacent pairs of their own
        # (three times the repetitions: a 2% target needs a tighter median than the others)
        direct = paired(bench.callables(("full_hand", "full")), "full_hand", 3 * reps, 1, device)
        flat[f"train_step_ratio_full_vs_hand_{tag}"] = direct.median_ratio("full")
        log("  " + ", ".join(f"{k}={v['median_ms']:.0f}ms" for k, v in details[tag].items()))
        del bench
    # headline: the worst configuration
    tags = [_tag(arch, size, batch) for arch, size, batch, _ in cfg["train"]]
    for variant in (*STEP_VARIANTS[1:], "full_vs_hand"):  # exact keys: "full" ≠ "full_hand_…"
        flat[f"train_step_ratio_{variant}"] = max(
            flat[f"train_step_ratio_{variant}_{tag}"] for tag in tags
        )
    return {"flat": flat, "details": details}


def bench_finite(cfg: dict, device: torch.device) -> dict:
    """The cost of the step's finiteness check: the plain step with and without it (paired), and
    the check alone as a share of the step without it."""
    flat: dict[str, float] = {}
    details: dict[str, dict] = {}
    for arch, size, batch, reps in cfg["finite"]:
        tag = _tag(arch, size, batch)
        log(f"[finite] {tag}: {reps} interleaved repetitions")
        bench = StepBench(arch, size, batch, device)
        comp = paired(bench.callables(FINITE_VARIANTS), "unchecked", reps, 1, device)
        details[tag] = comp.summary()
        flat[f"finite_check_ratio_{tag}"] = comp.median_ratio("checked")
        flat[f"finite_check_share_{tag}"] = comp.median_ratio("check_alone")
        log("  " + ", ".join(f"{k}={v['median_ms']:.2f}ms" for k, v in details[tag].items()))
        del bench
    tags = [_tag(arch, size, batch) for arch, size, batch, _ in cfg["finite"]]
    for key in ("finite_check_ratio", "finite_check_share"):
        flat[key] = max(flat[f"{key}_{tag}"] for tag in tags)
    return {"flat": flat, "details": details}


# ------------------------------------------------------------------------------------------------
# 2. CAM extraction
# ------------------------------------------------------------------------------------------------


def _pearson(a: torch.Tensor, b: torch.Tensor) -> tuple[list[float], int]:
    """Per-map Pearson correlation of ``(N, H, W)`` maps; both-constant maps are skipped."""
    a = a.double().flatten(1)
    b = b.double().flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    out, skipped = [], 0
    for i in range(a.shape[0]):
        if na[i] == 0 and nb[i] == 0:
            skipped += 1
        elif na[i] == 0 or nb[i] == 0:
            out.append(0.0)
        else:
            out.append(float((a[i] * b[i]).sum() / (na[i] * nb[i])))
    return out, skipped


def _cam_contenders(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    outputs: dict[str, torch.Tensor],
    with_torchcam: bool,
    with_gradcam: bool = True,
) -> dict[str, Callable[[], None]]:
    """The CAM extractors, each producing input-size maps of the classes ``y`` into ``outputs``."""
    from camkit import CAMExtractor, normalize_cams, upsample_cams

    size = (x.shape[-2], x.shape[-1])
    ext = CAMExtractor(model)

    def camkit_maps() -> None:
        # one forward (no autograd) → CAMs of y; then what GradCAM returns: ReLU, upsample, min-max
        with torch.no_grad():
            cams = ext(x, y).cams
            outputs["camkit_raw"] = cams
            outputs["camkit"] = normalize_cams(upsample_cams(cams.relu(), size), "minmax")

    def forward_only() -> None:
        # the floor of any CAM method: one forward without autograd, no CAM
        with torch.no_grad():
            model(x)

    fns: dict[str, Callable[[], None]] = {"camkit": camkit_maps, "forward_only": forward_only}
    if with_gradcam:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def gradcam_maps() -> None:
            # pytorch-grad-cam's documented usage
            targets = [ClassifierOutputTarget(int(c)) for c in y.tolist()]
            with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
                outputs["gradcam"] = torch.from_numpy(cam(input_tensor=x, targets=targets))

        fns["gradcam"] = gradcam_maps
    if with_torchcam:
        from torchcam.methods import CAM as TorchCAM

        def torchcam_maps() -> None:
            # torchcam's documented usage (+ the upsampling to the input size)
            with TorchCAM(model, target_layer="layer4", fc_layer="fc") as extractor:
                with torch.inference_mode():
                    model(x)
                maps = extractor(class_idx=y.tolist())[0]
                outputs["torchcam"] = upsample_cams(maps.clone(), size)

        fns["torchcam"] = torchcam_maps
    return fns


def bench_cam(cfg: dict, device: torch.device) -> dict:
    import timm

    from camkit import upsample_cams

    peers = {}
    for name, module in (("gradcam", "pytorch_grad_cam"), ("torchcam", "torchcam.methods")):
        try:
            importlib.import_module(module)
            peers[name] = True
        except Exception as err:  # optional peers (grad-cam is in camkit's dev extras)
            peers[name] = False
            log(f"[cam] {module} unavailable ({err}); skipping it")

    flat: dict[str, float] = {}
    details: dict[str, dict] = {}
    for arch, size, batch, reps in cfg["cam"]:
        tag = _tag(arch, size, batch)
        log(f"[cam] {tag}: {reps} interleaved repetitions")
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False, num_classes=2).to(device).eval()
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        y = torch.randint(0, 2, (batch,), generator=gen).to(device)
        outputs: dict[str, torch.Tensor] = {}
        fns = _cam_contenders(
            model, x, y, outputs, with_torchcam=peers["torchcam"], with_gradcam=peers["gradcam"]
        )
        comp = paired(fns, "camkit", reps, cfg["cam_warmup"], device)
        details[tag] = comp.summary()
        flat[f"cam_ratio_forward_only_{tag}"] = comp.median_ratio("forward_only")
        if "gradcam" in outputs:
            flat[f"cam_speedup_vs_gradcam_{tag}"] = comp.median_ratio("gradcam")
            corr, skipped = _pearson(outputs["camkit"].cpu(), outputs["gradcam"].cpu())
            flat[f"cam_corr_vs_gradcam_{tag}"] = min(corr) if corr else float("nan")
            details[tag]["corr_vs_gradcam"] = {
                "min": min(corr) if corr else None,
                "mean": statistics.fmean(corr) if corr else None,
                "maps": len(corr),
                "both_constant_skipped": skipped,
            }
            log(f"  corr vs GradCAM: min {flat[f'cam_corr_vs_gradcam_{tag}']:.6f}")
        if "torchcam" in outputs:
            flat[f"cam_speedup_vs_torchcam_{tag}"] = comp.median_ratio("torchcam")
            raw = upsample_cams(outputs["camkit_raw"], (size, size))
            corr_tc, skipped_tc = _pearson(raw.cpu(), outputs["torchcam"].cpu())
            flat[f"cam_corr_vs_torchcam_{tag}"] = min(corr_tc) if corr_tc else float("nan")
            details[tag]["corr_vs_torchcam"] = {
                "min": min(corr_tc) if corr_tc else None,
                "maps": len(corr_tc),
                "both_constant_skipped": skipped_tc,
                "note": "torchcam's CAM has no ReLU: compared with camkit's raw CAM",
            }
        log("  " + ", ".join(f"{k}={v['median_ms']:.0f}ms" for k, v in times_ms(details[tag])))
    for name, pick in (
        ("cam_speedup_vs_gradcam", min),
        ("cam_corr_vs_gradcam", min),
        ("cam_speedup_vs_torchcam", min),
        ("cam_corr_vs_torchcam", min),
        ("cam_ratio_forward_only", max),
    ):
        values = [v for k, v in flat.items() if k.startswith(name + "_")]
        if values:
            flat[name] = pick(values)
    return {"flat": flat, "details": details}


# ------------------------------------------------------------------------------------------------
# 3. SnapMix op
# ------------------------------------------------------------------------------------------------


def bench_snapmix(cfg: dict, device: torch.device) -> dict:
    from timm.data import Mixup

    from camkit import SnapMix

    c = cfg["snapmix"]
    b, s = c["batch"], c["size"]
    log(f"[snapmix] batch {b} at {s}²: {c['reps']} interleaved repetitions")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, s, s, generator=gen).to(device)
    y = torch.randint(0, 2, (b,), generator=gen).to(device)
    grid = max(1, s // 32)
    cams = torch.randn(b, grid, grid, generator=gen).to(device)
    rng = np.random.default_rng(0)
    mix_batch = SnapMix(2)
    mix_sample = SnapMix(2, box_mode="sample")
    timm_mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, num_classes=2)
    fns = {
        "camkit": lambda: mix_batch(x, y, cams),
        "loop": lambda: loop_snapmix(x, y, cams, 2, rng, box_mode="batch"),
        "timm_cutmix": lambda: timm_mix(x.clone(), y),
        "clone": lambda: x.clone(),
    }
    comp = paired(fns, "camkit", c["reps"], c["warmup"], device)
    fns_sample = {
        "camkit_sample_boxes": lambda: mix_sample(x, y, cams),
        "loop_sample_boxes": lambda: loop_snapmix(x, y, cams, 2, rng, box_mode="sample"),
    }
    comp_sample = paired(fns_sample, "camkit_sample_boxes", c["reps"], c["warmup"], device)
    details = {
        **comp.summary(),
        **{
            f"{k} (pair baseline)" if k == "camkit_sample_boxes" else k: v
            for k, v in comp_sample.summary().items()
        },
    }
    flat = {
        "snapmix_op_speedup_vs_loop": comp.median_ratio("loop"),
        "snapmix_op_speedup_vs_loop_sample_boxes": comp_sample.median_ratio("loop_sample_boxes"),
        "snapmix_op_ratio_vs_timm_cutmix": 1.0 / comp.median_ratio("timm_cutmix"),
        "snapmix_op_ratio_vs_clone": 1.0 / comp.median_ratio("clone"),
    }
    log("  " + ", ".join(f"{k}={v['median_ms']:.1f}ms" for k, v in details.items()))
    return {"flat": flat, "details": details}


# ------------------------------------------------------------------------------------------------
# 4. TTA
# ------------------------------------------------------------------------------------------------


class _ForwardCounter:
    """Counts images entering the model's first convolution (one per image-forward)."""

    def __init__(self, model: torch.nn.Module) -> None:
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        self.count = 0
        self.handle = first.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args) -> None:
        self.count += int(args[0].shape[0])

    def take(self) -> int:
        value, self.count = self.count, 0
        return value


def bench_tta(cfg: dict, device: torch.device, args: argparse.Namespace) -> dict:
    import timm

    from benchmarks.runner.data import data_root
    from benchmarks.runner.loop import selected_weights
    from benchmarks.runner.models import create_model
    from benchmarks.runner.recipes import RECIPES, RunConfig
    from benchmarks.runner.run import Runner

    c = cfg["tta"]
    size, k, theta = c["size"], c["k"], c["theta"]
    patch = max(1, size // 28)  # 8 px at 224², 4 px at 112²: a 28×28 grid as in the paper
    info: dict[str, object] = {"size": size, "k": k, "theta": theta, "patch_size": patch}
    root = data_root()
    recipe = RECIPES["site-B"].replace(img_size=size, epochs=c["epochs"])
    folder = RESULTS_DIR.parents[1] / "runs" / "perf_tta"  # the runner's checkpoints and rows
    run = RunConfig("site-B", "baseline", 0, recipe, folder)
    runner = Runner(folder / "results.json", device, log=lambda msg: log(f"[tta] {msg}"))
    if root is not None and (root / "COVID-CT").is_dir():
        data = runner.data(run)
        x_test, y_test = data.tests["site-B"]
        if c["limit"] is not None and c["limit"] < len(y_test):  # evenly spaced: both classes
            keep = [int(i * len(y_test) / c["limit"]) for i in range(c["limit"])]
            x_test, y_test = x_test[keep], y_test[keep]
        x_test = torch.cat([data.to_input(x_test[i : i + 64]) for i in range(0, len(y_test), 64)])
        info["data"] = f"COVID-CT test split ({len(y_test)} images) from {root / 'COVID-CT'}"
    else:
        log("[tta] COVID-CT not found (set CAMKIT_DATA): using synthetic images")
        gen = torch.Generator().manual_seed(0)
        n = c["limit"] or 32
        x_test, y_test = torch.randn(n, 3, size, size, generator=gen), torch.arange(n) % 2
        info["data"] = f"synthetic ({n} random images): COVID-CT not found"

    if args.checkpoint:
        model = timm.create_model("resnet18", pretrained=False, num_classes=2)
        model.load_state_dict(load_checkpoint(args.checkpoint))
        model = model.to(device).eval()
        info["model"] = f"resnet18 from --checkpoint {args.checkpoint}"
    elif c["epochs"] > 0 and root is not None:
        log(f"[tta] the site-B baseline of the runner: resnet18 at {size}², {c['epochs']} epochs")
        rows = runner.run(run)
        state = selected_weights(run)
        model = create_model(recipe, 2, device, state=state).eval()
        info["model"] = (
            f"resnet18 trained here from scratch by the runner (site-B baseline recipe, "
            f"{c['epochs']} epochs, the epoch chosen on validation)"
        )
        info["training"] = {k: rows[0][k] for k in ("train_seconds", "epochs", "best_epoch")}
        if args.save_checkpoint:
            atomic_save(model.state_dict(), args.save_checkpoint)
            info["saved_checkpoint"] = str(args.save_checkpoint)
    else:
        torch.manual_seed(0)
        model = timm.create_model("resnet18", pretrained=False, num_classes=2).to(device).eval()
        info["model"] = "resnet18, random init (smoke mode)"
    with torch.no_grad():
        preds = torch.cat([model(x_test[i : i + 64].to(device)).argmax(1).cpu()
                           for i in range(0, len(y_test), 64)])  # fmt: skip
    info["accuracy_plain"] = float((preds == y_test.cpu()).float().mean())

    log(f"[tta] plain accuracy {info['accuracy_plain']:.3f}; θ = {theta} (paper)")
    main = _tta_protocols(model, x_test, y_test, k, theta, patch, c["chunk"], device)
    info["paper_theta"] = main
    flat = {
        "tta_forwards_per_image": main["forwards_per_image"]["early_exit"],
        "tta_forwards_per_image_full_vote": main["forwards_per_image"]["full_vote"],
        "tta_forwards_per_image_released": main["forwards_per_image"]["released"],
        "tta_speedup_vs_full_vote": main["speedup_vs_full_vote"],
        "tta_speedup_vs_released": main["speedup_vs_released"],
        "tta_labels_identical": main["labels_identical"],
        "tta_flips": float(main["flips"]),
        "tta_accuracy_plain": info["accuracy_plain"],
        "tta_accuracy_tta": main["accuracy_tta"],
    }
    stress_theta = c.get("stress_theta")
    if stress_theta is not None:
        # θ = 0.5: a copy supports the prediction only while it keeps it, so votes split and
        # labels flip — the setting that exercises the early exit and the vote count
        log(f"[tta] stress setting θ = {stress_theta}")
        # (early exit vs full vote only: the released protocol's vote is checked against camkit's
        # with flips in tests/test_benchmarks.py)
        stress = _tta_protocols(
            model, x_test, y_test, k, stress_theta, patch, c["chunk"], device, released=False
        )
        info["stress_theta"] = stress
        flat.update(
            tta_stress_forwards_per_image=stress["forwards_per_image"]["early_exit"],
            tta_stress_speedup_vs_full_vote=stress["speedup_vs_full_vote"],
            tta_stress_labels_identical=stress["labels_identical"],
            tta_stress_flips=float(stress["flips"]),
        )
    return {"flat": flat, "details": info}


def _tta_protocols(
    model: torch.nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    k: int,
    theta: float,
    patch: int,
    chunk: int,
    device: torch.device,
    *,
    released: bool = True,
) -> dict:
    """Early exit, full vote and the released protocol over the test images, chunk by chunk.

    Each chunk runs the methods back to back (who goes first rotates); the speedups are medians
    over chunks of the per-chunk time ratios. Image-forwards are counted by a hook on the model's
    first convolution. ``released=False`` leaves the released protocol out.
    """
    from camkit import CAMMaskingTTA

    early = CAMMaskingTTA(model, k=k, theta=theta, patch_size=patch, early_exit=True)
    full = CAMMaskingTTA(model, k=k, theta=theta, patch_size=patch, early_exit=False)
    counter = _ForwardCounter(model)
    methods = ("early_exit", "full_vote", "released") if released else ("early_exit", "full_vote")
    labels: dict[str, list[torch.Tensor]] = {name: [] for name in methods}
    forwards = {name: 0 for name in labels}
    reported_forwards: list[torch.Tensor] = []
    times: dict[str, list[float]] = {name: [] for name in labels}
    n = len(y_test)
    log(f"  {n} test images in chunks of {chunk}, {', '.join(methods)} back to back per chunk")
    try:
        for ci, lo in enumerate(range(0, n, chunk)):
            xb = x_test[lo : lo + chunk].to(device)
            runs: dict[str, Callable[[], object]] = {
                "early_exit": partial(early.predict, xb),
                "full_vote": partial(full.predict, xb),
                "released": partial(released_tta, model, xb, k=k, theta=theta, patch_size=patch),
            }
            order = list(methods)
            order = order[ci % len(order) :] + order[: ci % len(order)]  # rotate who goes first
            for name in order:
                counter.take()
                sync(device)
                t0 = time.perf_counter()
                result = runs[name]()
                sync(device)
                times[name].append(time.perf_counter() - t0)
                forwards[name] += counter.take()
                if name == "released":
                    labels[name].append(result.cpu())
                else:
                    labels[name].append(result.labels.cpu())
                    if name == "early_exit":
                        reported_forwards.append(result.forwards.cpu())
            log(
                f"  chunk {ci + 1}: "
                + ", ".join(f"{name} {times[name][-1]:.1f}s" for name in labels)
            )
    finally:
        counter.handle.remove()
    lab = {name: torch.cat(v) for name, v in labels.items()}
    mismatch_full = int((lab["early_exit"] != lab["full_vote"]).sum())
    mismatch_released = int((lab["early_exit"] != lab["released"]).sum()) if released else None
    per_image = {name: forwards[name] / n for name in forwards}

    def speedup(name: str) -> float:
        return float(
            statistics.median(a / b for a, b in zip(times[name], times["early_exit"], strict=True))
        )

    out = {
        "theta": theta,
        "images": n,
        "chunks": len(times["early_exit"]),
        "forwards_per_image": per_image,
        "forwards_reported_by_camkit": int(torch.cat(reported_forwards).sum()) / n,
        "median_chunk_seconds": {name: statistics.median(v) for name, v in times.items()},
        "total_seconds": {name: sum(v) for name, v in times.items()},
        "speedup_vs_full_vote": speedup("full_vote"),
        "speedup_vs_released": speedup("released") if released else None,
        "label_mismatches_vs_full_vote": mismatch_full,
        "label_mismatches_vs_released": mismatch_released,
        "labels_identical": mismatch_full == 0 and not mismatch_released,
        "flips": int((lab["early_exit"] != _argmax_labels(model, x_test, device)).sum()),
        "accuracy_tta": float((lab["early_exit"] == y_test).float().mean()),
    }
    log(
        f"  forwards/image {per_image}, speedup vs full vote {out['speedup_vs_full_vote']:.2f}×"
        + (f", vs released {out['speedup_vs_released']:.2f}×" if released else "")
        + f", labels identical {out['labels_identical']}, flips {out['flips']}"
    )
    return out


@torch.no_grad()
def _argmax_labels(model: torch.nn.Module, images: torch.Tensor, device: torch.device):
    return torch.cat(
        [model(images[i : i + 64].to(device)).argmax(1).cpu() for i in range(0, len(images), 64)]
    )


# ------------------------------------------------------------------------------------------------
# 5. memory
# ------------------------------------------------------------------------------------------------


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
        str(Path(__file__).resolve()),
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


# ------------------------------------------------------------------------------------------------
# profiles (--profile): where the time of the contenders of the missed targets goes
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.3f}"
    return str(value)


def merge_previous(results: dict, path: Path) -> dict:
    """``results`` over the benchmarks of the previous run in ``path`` that this run did not redo.

    A run of a subset (``--only train``) so replaces only its own benchmarks' numbers; each
    benchmark keeps the ``meta`` of the run that measured it in ``meta["runs"]``.
    """
    if not path.is_file():
        results["meta"]["runs"] = {
            name: _run_meta(results) for name in results["meta"]["benchmarks"]
        }
        return results
    previous = json.loads(path.read_text())
    if previous.get("meta", {}).get("smoke") != results["meta"]["smoke"]:
        return results
    redone = set(results["meta"]["benchmarks"])
    prefixes = {"train": ("train_",), "cam": ("cam_",), "snapmix": ("snapmix_",)}
    prefixes.update(finite=("finite_",))
    prefixes.update(tta=("tta_",), memory=("memory_",))
    prefixes.update(cam3d=("cam3d_",), snapmix3d=("snapmix3d_",))
    kept = {
        key: value
        for key, value in previous.items()
        if key not in ("meta", "details")
        and not any(key.startswith(prefixes[name]) for name in redone)
    }
    old_runs = previous["meta"].get("runs") or {
        name: _run_meta(previous) for name in previous["meta"].get("benchmarks", [])
    }
    runs = {name: meta for name, meta in old_runs.items() if name not in redone}
    runs.update({name: _run_meta(results) for name in redone})
    details = {k: v for k, v in previous.get("details", {}).items() if k not in redone}
    meta = {**results["meta"], "benchmarks": sorted(runs), "runs": runs}
    return {
        "meta": meta,
        **kept,
        **{k: v for k, v in results.items() if k not in ("meta", "details")},
        "details": {**details, **results["details"]},
    }


def _run_meta(results: dict) -> dict:
    meta = results["meta"]
    return {k: meta[k] for k in ("command", "machine", "wall_seconds", "loadavg_end") if k in meta}


def _ratio_tables(by_tag: dict, ms: int, digits: int) -> list[str]:
    """One table per configuration: each variant's median ms and its ratio with quartiles."""
    lines = []
    for tag, entries in by_tag.items():
        lines += [f"**{tag}**", "", "| variant | median ms | ratio | q1–q3 |", "|---|---|---|---|"]
        for name, e in entries.items():
            ratio = f"{e['ratio']:.{digits}f}" if "ratio" in e else "1"
            spread = (
                f"{e['ratio_q1']:.{digits}f}–{e['ratio_q3']:.{digits}f}" if "ratio" in e else ""
            )
            lines.append(f"| {name} | {e['median_ms']:.{ms}f} | {ratio} | {spread} |")
        lines.append("")
    return lines


def write_report(results: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    results = merge_previous(results, json_path)
    atomic_write_text(json.dumps(results, indent=2, sort_keys=False) + "\n", json_path)
    flat, meta = results, results["meta"]
    lines = [
        f"# camkit performance ({meta['device']}{', smoke' if meta['smoke'] else ''})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']['platform']}, {meta['machine']['processor']}, "
        f"{meta['machine']['cpu_count']} CPUs (torch threads {meta['machine']['torch_threads']}), "
        f"torch {meta['machine']['torch']}, timm {meta['machine']['timm']}, "
        f"grad-cam {meta['machine']['grad-cam']}, torchcam {meta['machine']['torchcam']}"
        + (f", GPU {meta['machine']['gpu']}" if "gpu" in meta["machine"] else "")
        + "  ",
        f"Load average at start / end: {meta['machine'].get('loadavg_start')} / "
        f"{meta.get('loadavg_end')}; wall time {meta['wall_seconds']:.0f} s  ",
        "Timings: medians of per-repetition ratios, each contender timed next to its baseline "
        "in one process (see benchmarks/README.md). Headline ratios are the worst over the "
        "configurations (per-configuration values below).",
        "",
        "| metric | value | target | holds |",
        "|---|---|---|---|",
    ]
    for key, target, pred in TARGETS:
        if key not in flat:
            continue
        value = flat[key]
        holds = "" if pred is None else ("yes" if pred(value) else "**no**")
        lines.append(f"| `{key}` | {_fmt(value)} | {target} | {holds} |")
    lines += ["", "## Per configuration", "", "| metric | value |", "|---|---|"]
    for key, value in flat.items():
        if key == "meta" or key == "details" or any(key == t[0] for t in TARGETS):
            continue
        lines.append(f"| `{key}` | {_fmt(value)} |")
    details = results.get("details", {})
    if "finite" in details:
        lines += [
            "",
            "## Finiteness check of the step's images (median ms; ratio to unchecked)",
            "",
        ]
        lines += _ratio_tables(details["finite"], ms=2, digits=4)
    if "train" in details:
        lines += ["", "## Training step (median ms; ratio to plain with quartiles)", ""]
        lines += _ratio_tables(details["train"], ms=1, digits=3)
    if "cam" in details:
        lines += ["## CAM extraction (median ms; ratio to camkit)", ""]
        for tag, entries in details["cam"].items():
            lines += [f"**{tag}**", "", "| method | median ms | time / camkit |", "|---|---|---|"]
            for name, e in entries.items():
                if "median_ms" in e:
                    ratio = f"{e['ratio']:.2f}" if "ratio" in e else "1"
                    lines.append(f"| {name} | {e['median_ms']:.1f} | {ratio} |")
            lines += ["", f"correlation vs GradCAM: {entries.get('corr_vs_gradcam')}", ""]
    if "snapmix" in details:
        lines += [
            "## SnapMix op (median ms; time / camkit; per-sample boxes: time / camkit's)",
            "",
            "| op | median ms | ratio |",
            "|---|---|---|",
        ]
        for name, e in details["snapmix"].items():
            ratio = f"{e['ratio']:.3f}" if "ratio" in e else "1"
            lines.append(f"| {name} | {e['median_ms']:.1f} | {ratio} |")
        lines.append("")
    lines += perf3d.report_lines(details)
    if "tta" in details:
        lines += ["## TTA", "", "```", json.dumps(details["tta"], indent=2), "```", ""]
    if "memory" in details:
        lines += ["## Memory (MiB)", "", "```", json.dumps(details["memory"], indent=2), "```", ""]
    atomic_write_text("\n".join(lines) + "\n", md_path)
    return json_path, md_path


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


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
        "cam3d": lambda: perf3d.bench_cam3d(cfg, device),
        "snapmix3d": lambda: perf3d.bench_snapmix3d(cfg, device),
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
