"""Reports of result files: per-dataset tables with paired 95 % intervals, and the recipe choice.

Every comparison is paired by seed: the mean of the per-seed differences and its two-sided 95 %
t-interval (`paired_ci`); `verdict` reads an interval. `choose_recipe` is the one rule that picks
camkit's recommended recipe, on validation accuracy only.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from pathlib import Path

from benchmarks.runner.io import RUNNER_ROW, atomic_write_text, read_results

_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
MIN_SEEDS = 3  # a method is a candidate for the recommendation with this many paired seeds
RULES = ("threshold", "argmax", "relative")


def paired_ci(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided 95 % t-interval (NaN with fewer than 2)."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = _T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def verdict(diff: float, lo: float, hi: float) -> str:
    if lo != lo:
        return "n/a (one seed)"
    if lo > 0:
        return "beats the baseline"
    if hi < 0:
        return "loses to the baseline"
    return "no difference resolved"


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def ci_cell(diffs: list[float]) -> str:
    if not diffs:
        return "-"
    mean, lo, hi = paired_ci(diffs)
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo == lo else f"{mean:+.2f} [one seed]"


def by_seed(rows: Iterable[dict], key: str = "acc") -> dict[str, dict[int, float]]:
    """``{method: {seed: row[key]}}`` of rows that have ``key``."""
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if key in r:
            out.setdefault(r["method"], {})[r["seed"]] = r[key]
    return out


def paired_diffs(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """``a − b`` over the seeds both have."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def choose_recipe(
    val: dict[str, dict[str, dict[int, float]]], tta_gain: dict[str, dict[str, dict[str, float]]]
) -> dict:
    """The one recipe for every dataset, chosen on validation accuracy only.

    Args:
        val: ``{dataset: {method: {seed: validation accuracy in points}}}``, the baseline
            included.
        tta_gain: ``{"K>2" | "K=2": {method: {rule: mean validation accuracy change}}}``; either
            kind may be missing.

    Plain training (the baseline) is a candidate, with a difference of 0 everywhere; so is every
    other method with ``MIN_SEEDS`` seeds paired with the baseline on every dataset, with its
    mean paired validation difference to the baseline per dataset. The method whose *worst*
    dataset difference is highest (ties: the higher mean) is recommended only when that worst
    difference is above 0, that is when it beats plain training on every dataset's validation
    split; otherwise the recommendation is plain training, ``"baseline"``. The vote rule of each
    kind (K = 2, K > 2) is the rule with the highest mean validation gain on the recommended
    method's models, ``"none"`` when no rule gains (or none was measured).
    """
    deltas: dict[str, dict[str, float]] = {}
    for method in {m for per in val.values() for m in per} - {"baseline"}:
        per_dataset = {}
        for dataset, methods in val.items():
            base = methods.get("baseline", {})
            paired = sorted(set(methods.get(method, {})) & set(base))
            if len(paired) < MIN_SEEDS:
                break
            per_dataset[dataset] = statistics.fmean(methods[method][s] - base[s] for s in paired)
        else:
            deltas[method] = per_dataset
    if not deltas:
        return {"method": None, "reason": f"no method has {MIN_SEEDS} paired seeds yet"}

    def score(m: str) -> tuple[float, float]:
        return min(deltas[m].values()), statistics.fmean(deltas[m].values())

    best = max(sorted(deltas), key=score)
    method = best if score(best)[0] > 0 else "baseline"
    deltas["baseline"] = dict.fromkeys(val, 0.0)
    by_method = {m: deltas[m] for m in sorted(deltas, key=score, reverse=True)}
    rules = {}
    for kind in ("K=2", "K>2"):
        gains = tta_gain.get(kind, {}).get(method)
        if gains:
            top = max(gains, key=gains.get)
            rules[kind] = top if gains[top] > 0 else "none"
    return {
        "method": method,
        "tta_rule": rules.get("K>2"),
        "tta_rule_binary": rules.get("K=2"),
        "val_delta": by_method[method],
        "val_delta_by_method": by_method,
        "val_tta_gain_by_rule": {kind: per.get(method) for kind, per in tta_gain.items()},
        "chosen_on": "validation only: the highest worst-dataset mean paired difference to the "
        f"baseline ({', '.join(val)}), {MIN_SEEDS}+ seeds, and above 0 (else plain training)",
    }


def _shared(rows: list[dict], skip: tuple[str, ...]) -> dict:
    keys = sorted({k for r in rows for k in r["settings"]} - set(skip))
    values = {k: {json.dumps(r["settings"].get(k), sort_keys=True) for r in rows} for k in keys}
    return {k: json.loads(next(iter(v))) for k, v in values.items() if len(v) == 1}


METHOD_KEYS = ("mix", "cpe_form", "cpe_normalize", "cpe_temperature", "cpe_weight")


def table(rows: list[dict], *, baseline: str = "baseline", extra_pairs=()) -> list[str]:
    """One dataset's markdown table: a row per method and epochs, paired Δ to the baseline."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["epochs"]), []).append(r)
    lines = [
        "| method | epochs | seeds | val acc | accuracy | Δ acc vs baseline [95 % CI] | "
        "precision | recall | F1 | train s/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (method, epochs), group in groups.items():
        base = by_seed(r for r in rows if r["method"] == baseline and r["epochs"] == epochs)
        acc = {r["seed"]: r["acc"] for r in group}
        delta = "—" if method == baseline else ci_cell(paired_diffs(acc, base.get(baseline, {})))
        cells = [mean_sd([r[k] for r in group if k in r]) for k in ("val_acc", "acc")]
        cells.append(delta)
        cells += [mean_sd([r[k] for r in group if k in r]) for k in ("precision", "recall", "f1")]
        seconds = statistics.fmean(r["train_seconds"] for r in group)
        lines.append(
            f"| {method} | {epochs} | {len(group)} | " + " | ".join(cells) + f" | {seconds:.0f} |"
        )
    for a, b in extra_pairs:
        for epochs in sorted({r["epochs"] for r in rows}):
            sel = by_seed(r for r in rows if r["epochs"] == epochs)
            if a in sel and b in sel:
                lines.append("")
                lines.append(
                    f"{a} − {b} at {epochs} epochs (paired seeds): "
                    f"{ci_cell(paired_diffs(sel[a], sel[b]))}"
                )
    return lines


def report(results: Path, md: Path | None = None) -> str:
    """The tables of every dataset in ``results`` (and write them to ``md``).

    The file is only read (no lock: a read-only file will do); a missing, empty or malformed
    file, or rows without the fields the tables need, raise an error naming the file.
    """
    number = (int, float)
    fields = {**RUNNER_ROW, "epochs": int, "acc": number, "train_seconds": number}
    rows = read_results(results, fields=fields)
    if not rows:
        raise ValueError(f"{results}: the results file has no rows yet")
    lines = [f"# Results: {results}", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        sel = [r for r in rows if r["dataset"] == dataset]
        shared = _shared(sel, METHOD_KEYS)
        keep = ("model", "pretrained", "img_size", "batch_size", "lr", "schedule", "selection")
        lines += [f"## {dataset}", ""]
        lines += ["Settings: " + ", ".join(f"{k} {shared[k]}" for k in keep if k in shared), ""]
        lines += table(sel, extra_pairs=[("snapmix", "cutmix")])
        lines.append("")
    text = "\n".join(lines)
    if md is not None:
        atomic_write_text(text + "\n", md)
    return text
