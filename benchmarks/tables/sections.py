"""The sections several of reproduce.py's tables print: the recommended recipe against the
baseline, the TTA vote rules, and one dataset's table of every method."""

from __future__ import annotations

import statistics

from benchmarks.runner.report import by_seed, ci_cell, mean_sd, paired_ci, paired_diffs, verdict
from benchmarks.tables.rows import DIGITS_TARGETS, _cpe_form, _mean_sd, tta_accuracy


def recommended_section(rows: list[dict], chosen: dict) -> list[str]:
    """The choice (validation differences of every candidate) and, per dataset, the baseline
    against the recommended recipe with its vote rule: paired seeds, 95 % CI, verdict."""
    detail = chosen["recommended_detail"]
    method = chosen["recommended"]

    def vote(rule: str | None, kind: str) -> str:
        if rule is None:
            return f"no vote measured for {kind}"
        return (
            f"no vote for {kind} (no rule gained)"
            if rule == "none"
            else f"vote `{rule}` for {kind}"
        )

    what = (
        "**plain training** (`baseline`): no method beat it on every dataset's validation split"
        if method == "baseline"
        else f"**`{method}`**: mix {detail.get('mix') or 'none'}, CPE {_cpe_form(detail)}"
    )
    lines = [
        "## Recommended recipe",
        "",
        f"{what}; {vote(detail.get('tta_rule_binary'), 'K = 2')}, "
        f"{vote(detail.get('tta_rule'), 'K > 2 classes')}. Chosen on {detail['chosen_on']}; the "
        "differences below are those means, in points.",
        "",
        "| candidate | " + " | ".join(f"{d} val Δ" for d in detail["val_delta"]) + " | worst |",
        "|---|" + "---|" * (len(detail["val_delta"]) + 1),
    ]
    for m, per in detail["val_delta_by_method"].items():
        mark = f"**{m}**" if m == method else m
        cells = [f"{v:+.2f}" for v in per.values()]
        lines.append(f"| {mark} | " + " | ".join(cells) + f" | {min(per.values()):+.2f} |")
    table = [
        "",
        "Test accuracy, the recommended recipe with its vote rule against the baseline, over "
        "paired seeds:",
        "",
        "| dataset | seeds | baseline | recommended | Δ [95 % CI] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += table
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        by = {
            (r["method"], r["seed"]): r
            for r in rows
            if r["dataset"] == dataset and r["method"] in ("baseline", method)
        }
        seeds = sorted(s for (m, s) in by if m == method and ("baseline", s) in by)
        if not seeds:
            continue
        rule = detail["tta_rule"] if dataset in DIGITS_TARGETS else detail["tta_rule_binary"]
        rec = [by[(method, s)] for s in seeds]
        if rule in (None, "none"):
            label, rule = "(no vote)" if rule else "(no vote measured)", None
        elif all(rule in r.get("tta_rules", {}) for r in rec):
            label = f"(vote {rule})"
        else:  # the vote was not measured on every seed: plain accuracy, said so
            measured = sum(rule in r.get("tta_rules", {}) for r in rec)
            label = f"(plain: vote {rule} measured on {measured} of {len(rec)} seeds)"
            rule = None
        if method == "baseline" and rule is None:
            continue  # plain training against itself
        b = [by[("baseline", s)]["acc"] for s in seeds]
        r = [tta_accuracy(row, rule) for row in rec]
        d, lo, hi = paired_ci([x - y for x, y in zip(r, b, strict=True)])
        lines.append(
            f"| {dataset} | {len(seeds)} | {_mean_sd(b)} | {_mean_sd(r)} "
            f"{label} | "
            f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] | {verdict(d, lo, hi)} |"
        )
    if lines[-1] == table[-1]:  # nothing to compare: plain training, no vote
        lines = lines[: -len(table)]
    return [*lines, ""]


def tta_section(rows: list[dict]) -> list[str]:
    """Each vote rule's accuracy change and flips, on validation and test, per dataset."""
    lines = [
        "## TTA vote rules",
        "",
        "CAM-masking TTA, k = 31: accuracy change in points and labels flipped, mean over the "
        "seeds measured (digits: on the first images of each set, counted in the last column). "
        "`threshold` is the paper's vote "
        "(p_j > 0.2), `argmax` keeps a copy's vote while the prediction stays its arg-max, "
        "`relative` while p_j > 0.5 · p_0.",
        "",
        "| dataset | method | rule | seeds | val Δ | val flips | test Δ | test flips "
        "| images (val, test) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for r in rows:
        for rule, parts in r.get("tta_rules", {}).items():
            groups.setdefault((r["dataset"], r["method"], rule), []).append(parts)
    for (dataset, method, rule), runs in groups.items():
        cells = []
        for split in ("val", "test"):
            change = [100 * p[split]["accuracy_change"] for p in runs]
            flips = [p[split]["flips"] for p in runs]
            cells += [f"{statistics.fmean(change):+.2f}", f"{statistics.fmean(flips):.1f}"]
        n = f"{runs[0]['val']['n']}, {runs[0]['test']['n']}"
        lines.append(
            f"| {dataset} | {method} | {rule} | {len(runs)} | " + " | ".join(cells) + f" | {n} |"
        )
    return [*lines, ""]


def method_groups(sel: list[dict], chosen: dict):
    """Per method of ``sel`` in row order: its name as the table prints it (bold when
    recommended), its rows by seed, and its paired test-accuracy difference to the baseline."""
    base = by_seed(r for r in sel if r["method"] == "baseline").get("baseline", {})
    for method in dict.fromkeys(r["method"] for r in sel):
        group = sorted((r for r in sel if r["method"] == method), key=lambda r: r["seed"])
        acc = {r["seed"]: r["acc"] for r in group}
        delta = "—" if method == "baseline" else ci_cell(paired_diffs(acc, base))
        name = f"**{method}**" if chosen.get("recommended") == method else method
        yield method, name, group, delta


def method_table(sel: list[dict], chosen: dict, paper: dict) -> list[str]:
    """One dataset's rows as a table: per method validation and test accuracy with the paired
    differences to the baseline, precision, recall, F1, the chosen epochs, the CPU time and the
    paper's accuracy; then SnapMix against CutMix and the TTA's flips, where the rows have them."""
    lines = [
        "| method | seeds | val acc | Δ val vs baseline [95 % CI] | accuracy "
        "| Δ acc vs baseline [95 % CI] | precision | recall | F1 | best val epochs "
        "| train s/run | paper acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    val = by_seed(sel, "val_acc")
    for method, name, group, delta in method_groups(sel, chosen):
        cells = [mean_sd([r["val_acc"] for r in group if "val_acc" in r])]
        cells.append(
            "—" if method == "baseline"
            else ci_cell(paired_diffs(val.get(method, {}), val.get("baseline", {})))
        )  # fmt: skip
        cells += [mean_sd([r["acc"] for r in group]), delta]
        cells += [mean_sd([r[k] for r in group]) for k in ("precision", "recall", "f1")]
        cells.append(", ".join(str(r["best_epoch"]) for r in group))
        cells.append(f"{statistics.fmean(r['train_seconds'] for r in group):.0f}")
        cells.append("-" if method not in paper else f"{paper[method][0]:.2f}")
        lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")
    accs = by_seed(sel)
    if "snapmix" in accs and "cutmix" in accs:
        lines += ["", f"SnapMix − CutMix (paired seeds): "
                  f"{ci_cell(paired_diffs(accs['snapmix'], accs['cutmix']))}"]  # fmt: skip
    flips = [r for r in sel if "tta_flipped" in r]
    if flips:
        counts = ", ".join(str(r["tta_flipped"]) for r in flips)
        forwards = statistics.fmean(r["tta_forwards"] for r in flips)
        n = flips[0]["n_test"]
        lines += ["", f"`full` TTA: labels flipped per seed [{counts}] of {n}, "
                  f"{forwards:.1f} forwards per image."]  # fmt: skip
    return lines
