"""What the benchmark cases share: the results folder, the log, configuration tags, and the
per-map Pearson r of two stacks of maps (the CAM rows' agreement with their peers)."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def log(msg: str) -> None:
    print(msg, flush=True)


def times_ms(entries: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in entries.items() if isinstance(v, dict) and "median_ms" in v]


def _tag(arch: str, size: int, batch: int) -> str:
    return f"{arch}_{size}px_b{batch}"


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


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Smallest and mean per-map Pearson r of two ``(N, ...)`` map stacks (`_pearson`)."""
    corr, skipped = _pearson(a, b)
    return {
        "min": min(corr) if corr else None,
        "mean": statistics.fmean(corr) if corr else None,
        "maps": len(corr),
        "both_constant_skipped": skipped,
    }


def op_table(heading: str, entries: dict) -> list[str]:
    """A markdown section of an op's contenders: median ms and the ratio to camkit's."""
    lines = [f"## {heading}", "", "| op | median ms | ratio |", "|---|---|---|"]
    for name, e in entries.items():
        ratio = f"{e['ratio']:.3f}" if "ratio" in e else "1"
        lines.append(f"| {name} | {e['median_ms']:.1f} | {ratio} |")
    return [*lines, ""]
