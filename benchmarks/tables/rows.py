"""What reproduce.py's tables share: the rows (loaded, nested, their shared settings), the
recommended recipe (`choose`), the paper's figures, and cell formats."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.runner.methods import METHODS
from benchmarks.runner.report import choose_recipe, paired_ci

KEYS = ("acc", "precision", "recall", "f1", "val_acc", "train_seconds", "epochs", "best_epoch")
# what a run's name sets: may differ between the rows of one table
METHOD_SETTINGS = ("cpe_normalize", "cpe_temperature", "cpe_weight", "snapmix_cams")
METHOD_SETTINGS += ("cpe_form", "snapmix", "mix")
DIGITS_TARGETS = ("mnist-usps", "mnist-mnistm")

# Paper, Table 2 (site-B, ImageNet-pretrained ResNet-50, 200 epochs): accuracy, F1
PAPER = {
    "site-B": {
        "baseline": (85.23, 84.51),
        "cpe": (85.96, 85.22),
        "snapmix": (87.56, 86.85),
        "snapmix_cpe": (87.02, 86.95),
        "full": (88.76, 88.25),
    },
    # Table 1 (site-A, the same model and schedule, Wang et al.'s patient split)
    "site-A": {
        "baseline": (89.68, 89.13),
        "cpe": (91.71, 90.03),
        "snapmix": (92.38, 91.92),
        "snapmix_cpe": (95.73, 95.59),
        "full": (95.90, 95.87),
    },
    "mnist-usps": {"baseline": (98.13, None), "snapmix": (98.11, None), "full": (98.25, None)},
    "mnist-mnistm": {"baseline": (98.70, None), "snapmix": (98.65, None), "full": (98.92, None)},
}


def load(path: Path) -> list[dict]:
    """The rows of a results file (none when it is missing)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(
            f"{path}: expected {{'rows': [...]}} (one row per dataset, method and seed), got the "
            "nested form of an older reproduce.py; rerun the reproduction into another folder"
        )
    return data["rows"]


def shared_settings(dataset: str, rows: list[dict]) -> dict:
    """The settings every row of ``dataset``'s table shares; refuse rows of different settings.

    ``METHOD_SETTINGS`` may differ between methods (the ``*_norm`` rows), not within one.
    """

    def differing(group: list[dict], skip: tuple[str, ...]) -> dict[str, list]:
        keys = sorted({k for r in group for k in r["settings"]} - set(skip))
        values = {k: {json.dumps(r["settings"].get(k)) for r in group} for k in keys}
        return {k: sorted(map(json.loads, v), key=str) for k, v in values.items() if len(v) > 1}

    groups = [
        [r for r in rows if r["method"] == m] for m in dict.fromkeys(r["method"] for r in rows)
    ]
    for group in [rows, *groups]:
        bad = differing(group, METHOD_SETTINGS if group is rows else ())
        if bad:
            where = "" if group is rows else f" (method {group[0]['method']})"
            raise ValueError(
                f"{dataset}{where}: rows of different settings cannot share a table; they differ "
                f"in {bad}; rerun them with the same settings, or write to another --out"
            )
    return {k: v for k, v in rows[0]["settings"].items() if k not in METHOD_SETTINGS}


def nest(rows: list[dict]) -> dict:
    """``{dataset: {method: {key: [value per seed], "seeds": [...]}}}``, in order of the rows."""
    out: dict = {}
    for row in rows:
        entry = out.setdefault(row["dataset"], {}).setdefault(row["method"], {})
        entry.setdefault("seeds", []).append(row["seed"])
        for key in (*KEYS, "tta_forwards", "tta_flipped"):
            if key in row:
                entry.setdefault(key, []).append(row[key])
    return out


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def recipe_detail(method: str | None) -> dict:
    """What method ``method`` trains with: its mix and CPE form (for the report)."""
    m = METHODS.get(method)
    if m is None:
        return {"mix": None, "snapmix": None, "cpe_form": None}
    snapmix = {"snapmix": "exact", "snapmix_mixed": "mixed-CAM"}.get(m.mix)
    form = m.settings()
    cpe = None
    if m.cpe:
        cpe = {k: form[f"cpe_{k}"] for k in ("normalize", "temperature", "weight")}
    return {"mix": m.mix, "snapmix": snapmix, "cpe_form": cpe}


def choose(
    rows: list[dict], datasets=("site-B", "digits"), epochs: dict[str, int] | None = None
) -> dict:
    """``{"recommended": key, "recommended_detail": {...}}``: the recipe chosen on the validation
    splits of ``datasets`` together (`benchmarks.runner.report.choose_recipe`), over the rows of
    ``epochs[dataset]`` epochs where given; the key is None, with the reason in the detail, while
    any lacks the seeds."""
    val: dict = {}
    gains: dict = {}
    for row in rows:
        if "val_acc" not in row or METHODS.get(row["method"], METHODS["baseline"]).tta:
            continue
        if _split(row).startswith("leaky"):  # it measures the leak; it never chooses
            continue
        if epochs and row["epochs"] != epochs.get(row["dataset"], row["epochs"]):
            continue
        name = "digits" if row["dataset"] in DIGITS_TARGETS else row["dataset"]
        val.setdefault(name, {}).setdefault(row["method"], {})[row["seed"]] = row["val_acc"]
        kind = "K>2" if name == "digits" else "K=2"
        for rule, parts in row.get("tta_rules", {}).items():
            per = gains.setdefault(kind, {}).setdefault(row["method"], {}).setdefault(rule, {})
            per[(row["dataset"], row["seed"])] = 100 * parts["val"]["accuracy_change"]
    gains = {
        kind: {m: {r: statistics.fmean(v.values()) for r, v in by.items()} for m, by in per.items()}
        for kind, per in gains.items()
    }
    if set(val) != set(datasets):
        chosen = {"method": None, "reason": f"validation accuracy of {sorted(val)} only"}
    else:
        chosen = choose_recipe(val, gains)
        chosen.update(recipe_detail(chosen["method"]))
    return {"recommended": chosen["method"], "recommended_detail": chosen}  # never a stale one


def tta_accuracy(row: dict, rule: str | None) -> float:
    """A row's test accuracy in points with a vote rule: the rule's net change where it ran (the
    first ``n`` test images) added to the plain accuracy over all ``n_test``."""
    if rule in (None, "none"):
        return row["acc"]
    test = row["tta_rules"][rule]["test"]
    return row["acc"] + 100 * test["accuracy_change"] * test["n"] / row.get("n_test", test["n"])


def paired_cell(entry: dict, base: dict[int, float]) -> str:
    """Mean paired accuracy difference to the baseline over the shared seeds, with its CI."""
    diffs = [a - base[s] for s, a in zip(entry["seeds"], entry["acc"], strict=True) if s in base]
    if not diffs:
        return "-"
    mean, lo, hi = paired_ci(diffs)
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo == lo else f"{mean:+.2f} [one seed]"


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def _cpe_form(detail: dict) -> str:
    form = detail.get("cpe_form")
    if not form:
        return "off"
    norm = f"L2-normalised, τ = {form['temperature']:g}" if form["normalize"] else "Eq. 1 (raw)"
    return f"{norm}, weight {form['weight']:g}"


def _split(row: dict) -> str:
    return row["settings"].get("split") or "patient-blocks:5"
