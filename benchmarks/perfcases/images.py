"""The 2-D rows of ``benchmarks/perf.py``: ``train`` (training-step variants), ``finite`` (the
step's finiteness check of its images), ``cam`` (CAM extraction vs pytorch-grad-cam and torchcam)
and ``snapmix`` (the SnapMix op vs a per-sample loop and timm CutMix)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.harness import paired
from benchmarks.perfcases.common import _tag, agreement, log, times_ms
from benchmarks.reference import loop_snapmix
from benchmarks.steps import FINITE_VARIANTS, PART_VARIANTS, STEP_VARIANTS, StepBench

# ------------------------------------------------------------------------------------------------
# training step
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
# CAM extraction
# ------------------------------------------------------------------------------------------------


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
            agree = agreement(outputs["camkit"].cpu(), outputs["gradcam"].cpu())
            flat[f"cam_corr_vs_gradcam_{tag}"] = (
                float("nan") if agree["min"] is None else agree["min"]
            )
            details[tag]["corr_vs_gradcam"] = agree
            log(f"  corr vs GradCAM: min {flat[f'cam_corr_vs_gradcam_{tag}']:.6f}")
        if "torchcam" in outputs:
            flat[f"cam_speedup_vs_torchcam_{tag}"] = comp.median_ratio("torchcam")
            raw = upsample_cams(outputs["camkit_raw"], (size, size))
            agree = agreement(raw.cpu(), outputs["torchcam"].cpu())
            flat[f"cam_corr_vs_torchcam_{tag}"] = (
                float("nan") if agree["min"] is None else agree["min"]
            )
            details[tag]["corr_vs_torchcam"] = {
                **agree,
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
# SnapMix op
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
