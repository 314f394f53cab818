"""The report of ``benchmarks/perf.py``: the targets, the merge with the previous run's numbers
and the JSON and markdown files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from benchmarks.perfcases import volumes
from benchmarks.perfcases.common import op_table
from benchmarks.runner.io import atomic_write_text

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
        heading = "SnapMix op (median ms; time / camkit; per-sample boxes: time / camkit's)"
        lines += op_table(heading, details["snapmix"])
    lines += volumes.report_lines(details)
    if "tta" in details:
        lines += ["## TTA", "", "```", json.dumps(details["tta"], indent=2), "```", ""]
    if "memory" in details:
        lines += ["## Memory (MiB)", "", "```", json.dumps(details["memory"], indent=2), "```", ""]
    atomic_write_text("\n".join(lines) + "\n", md_path)
    return json_path, md_path
