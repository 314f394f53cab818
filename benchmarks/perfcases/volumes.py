"""The volume rows of ``benchmarks/perf.py``: 3-D CAMs against MONAI's, and SnapMix on volumes.

- ``cam3d``: ``camkit.CAMExtractor`` on a MONAI ``DenseNet121(spatial_dims=3)``
  (through camkit's MONAI adapter, detected from the model) against ``monai.visualize.CAM`` and
  ``monai.visualize.GradCAM`` on the same model weights and the same batch, each used as MONAI's
  docstrings show (``CAM(nn_module=model, target_layers="class_layers.relu",
  fc_layers="class_layers.out")(x, class_idx=...)``, ``GradCAM(nn_module=model,
  target_layers="class_layers.relu")(x, class_idx=...)``, no ``no_grad``: their maps come
  upsampled to the input and normalised). camkit's contender returns the same: one forward
  without autograd, the CAMs of the class, ReLU (what Grad-CAM returns), trilinear upsampling
  and min-max normalisation. ``forward_only`` (a bare no-grad forward) is the floor of any CAM
  method. All maps are of one class for the whole batch: MONAI's ``GradCAM`` reads ``class_idx``
  as one class for the batch (``logits[:, class_idx]``; a tensor of per-image classes would sum
  the batch's classes into every map). MONAI's hooks stay on the module they wrap, so each MONAI
  method gets its own copy of the model (the same weights), and camkit the original.
- ``snapmix3d``: the ``camkit.SnapMix`` op on a batch of volumes ``(B, 1, S, S, S)``
  with given CAMs at DenseNet121's feature resolution, against one copy of the batch
  (``x.clone()``), as the 2-D ``snapmix`` row's ``clone`` entry, and against a per-volume loop
  (``loop``: camkit's draws, ``SnapMix.sample``, applied one volume at a time by
  ``benchmarks/reference/``'s ``loop_snapmix_apply``, the reference the tests pin SnapMix's
  volumes against).

Both time their contenders in adjacent pairs against camkit's (``harness.paired``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from benchmarks.harness import paired
from benchmarks.perfcases.common import agreement, log, op_table


def monai_densenet121(seed: int = 0) -> torch.nn.Module:
    """The row's model: MONAI's 3-D ``DenseNet121``, 1 input channel, 2 classes, eval mode."""
    from monai.networks.nets import DenseNet121

    torch.manual_seed(seed)
    return DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval()


def cam3d_contenders(
    model: torch.nn.Module, x: torch.Tensor, cls: int, outputs: dict[str, torch.Tensor]
) -> dict[str, Callable[[], None]]:
    """The CAM methods on volumes ``x`` for class ``cls``; each writes its ``(B, D, H, W)`` maps
    into ``outputs`` (``camkit_raw``: camkit's CAMs at the feature resolution, before ReLU).

    ``model`` is a MONAI ``DenseNet`` (any depth: the layer names are the family's).
    """
    from monai.visualize import CAM, GradCAM

    from camkit import CAMExtractor, normalize_cams, upsample_cams

    size = tuple(x.shape[2:])
    y = torch.full((x.shape[0],), cls, dtype=torch.long, device=x.device)
    ext = CAMExtractor(model)  # camkit's MONAI adapter, detected from the model
    cam = CAM(
        nn_module=copy.deepcopy(model),
        target_layers="class_layers.relu",
        fc_layers="class_layers.out",
    )
    gradcam = GradCAM(nn_module=copy.deepcopy(model), target_layers="class_layers.relu")

    def camkit_maps() -> None:
        with torch.no_grad():
            cams = ext(x, y).cams
            outputs["camkit_raw"] = cams
            outputs["camkit"] = normalize_cams(upsample_cams(cams.relu(), size), "minmax")

    def monai_cam() -> None:
        outputs["monai_cam"] = cam(x, class_idx=y)[:, 0]

    def monai_gradcam() -> None:
        outputs["monai_gradcam"] = gradcam(x, class_idx=cls)[:, 0]

    def forward_only() -> None:
        with torch.no_grad():
            model(x)

    return {
        "camkit": camkit_maps,
        "monai_cam": monai_cam,
        "monai_gradcam": monai_gradcam,
        "forward_only": forward_only,
    }


def cam3d_agreement(outputs: dict[str, torch.Tensor], size: tuple[int, ...]) -> dict[str, dict]:
    """Pearson r of camkit's maps with MONAI's, as each is returned.

    MONAI's default normaliser maps a map's (min, max) to (1, 0), so ``1 − map`` is compared.
    GradCAM is against camkit's returned maps (ReLU, upsampled, min-max); MONAI's ``CAM`` has no
    ReLU, so it is against camkit's raw CAMs upsampled (min-max scaling does not change r).
    """
    from camkit import upsample_cams

    raw = upsample_cams(outputs["camkit_raw"], size).cpu()
    return {
        "corr_vs_monai_gradcam": agreement(outputs["camkit"].cpu(), 1 - outputs["monai_gradcam"]),
        "corr_vs_monai_cam": agreement(raw, 1 - outputs["monai_cam"].cpu()),
    }


def bench_cam3d(cfg: dict, device: torch.device) -> dict:
    """camkit's 3-D CAM against MONAI's ``CAM`` and ``GradCAM`` (see the module docstring)."""
    c = cfg["cam3d"]
    s, b = c["size"], c["batch"]
    tag = f"densenet121_3d_{s}cube_b{b}"
    try:
        import monai.visualize  # noqa: F401  (the peer: camkit's optional extra `monai`)
    except Exception as err:
        log(f"[cam3d] monai unavailable ({err}); skipping the row (pip install camkit[monai])")
        return {"flat": {}, "details": {"skipped": f"monai unavailable: {err}"}}
    log(f"[cam3d] {tag}: {c['reps']} interleaved repetitions")
    model = monai_densenet121().to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, 1, s, s, s, generator=gen).to(device)
    outputs: dict[str, torch.Tensor] = {}
    fns = cam3d_contenders(model, x, c["cls"], outputs)
    comp = paired(fns, "camkit", c["reps"], c["warmup"], device)
    details = {tag: {**comp.summary(), **cam3d_agreement(outputs, (s, s, s))}}
    details[tag]["class"] = c["cls"]
    flat = {
        "cam3d_speedup_vs_monai_cam": comp.median_ratio("monai_cam"),
        "cam3d_speedup_vs_monai_gradcam": comp.median_ratio("monai_gradcam"),
        "cam3d_ratio_forward_only": comp.median_ratio("forward_only"),
    }
    for key in ("corr_vs_monai_cam", "corr_vs_monai_gradcam"):
        value = details[tag][key]["min"]
        flat[f"cam3d_{key}"] = float("nan") if value is None else value
    times = ", ".join(f"{k}={v['median_ms']:.0f}ms" for k, v in comp.summary().items())
    log(f"  {times}; min r vs MONAI CAM {flat['cam3d_corr_vs_monai_cam']:.6f}, "
         f"GradCAM {flat['cam3d_corr_vs_monai_gradcam']:.6f}")  # fmt: skip
    return {"flat": flat, "details": details}


def bench_snapmix3d(cfg: dict, device: torch.device) -> dict:
    """The SnapMix op on ``(B, 1, S, S, S)`` volumes against one copy of the batch and a
    per-volume loop."""
    from benchmarks.reference import loop_snapmix_apply, params_to_lists
    from camkit import SnapMix

    c = cfg["snapmix3d"]
    b, s, grid = c["batch"], c["size"], max(1, c["size"] // 32)
    log(f"[snapmix3d] batch {b} at {s}³: {c['reps']} interleaved repetitions")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 1, s, s, s, generator=gen).to(device)
    y = torch.randint(0, 2, (b,), generator=gen).to(device)
    cams = torch.randn(b, grid, grid, grid, generator=gen).to(device)
    mix = SnapMix(2)

    def loop() -> None:
        params = params_to_lists(mix.sample(b, s, s, depth=s, cams=cams))
        loop_snapmix_apply(x, y, cams, *params, 2)

    fns = {"camkit": lambda: mix(x, y, cams), "clone": lambda: x.clone(), "loop": loop}
    comp = paired(fns, "camkit", c["reps"], c["warmup"], device)
    details = comp.summary()
    flat = {
        "snapmix3d_op_ratio_vs_clone": 1.0 / comp.median_ratio("clone"),
        "snapmix3d_op_speedup_vs_loop": comp.median_ratio("loop"),
    }
    log("  " + ", ".join(f"{k}={v['median_ms']:.1f}ms" for k, v in details.items()))
    return {"flat": flat, "details": details}


def report_lines(details: dict) -> list[str]:
    """The markdown sections of the volume rows (for `report.write_report`)."""
    lines: list[str] = []
    for tag, entries in details.get("cam3d", {}).items():
        if tag == "skipped":
            lines += ["## 3-D CAM vs MONAI", "", f"Not run: {entries}", ""]
            continue
        lines += [
            "## 3-D CAM vs MONAI (median ms; time / camkit)",
            "",
            f"**{tag}**",
            "",
            "| method | median ms | time / camkit |",
            "|---|---|---|",
        ]
        for name, e in entries.items():
            if isinstance(e, dict) and "median_ms" in e:
                ratio = f"{e['ratio']:.2f}" if "ratio" in e else "1"
                lines.append(f"| {name} | {e['median_ms']:.1f} | {ratio} |")
        lines += [
            "",
            f"correlation vs MONAI GradCAM: {entries.get('corr_vs_monai_gradcam')}  ",
            f"correlation vs MONAI CAM (camkit's raw CAM): {entries.get('corr_vs_monai_cam')}",
            "",
        ]
    if "snapmix3d" in details:
        lines += op_table("SnapMix op on volumes (median ms; time / camkit)", details["snapmix3d"])
    return lines
