"""Tests for camkit.metrics against a slow, loop-based float64 reference."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import camkit.metrics
from benchmarks.runner.tables import format_table
from camkit.metrics import classification_metrics

# (num_classes, positive_class, class_names)
CONFIGS = [
    (2, 1, None),
    (3, 2, ["Normal", "Pneumonia", "COVID-19"]),
    (3, None, ["Normal", "Pneumonia", "COVID-19"]),
    (5, 0, None),
]
SEEDS = [0, 1, 2, 3, 4]
SIZES = [7, 40, 101, 3, 64]


def _argmax(row: list[float]) -> int:
    best = 0
    for j in range(1, len(row)):
        if row[j] > row[best]:
            best = j
    return best


def reference(
    pred_labels: list[int],
    target: list[int],
    num_classes: int,
    positive_class: int | None,
    names: list[str],
) -> dict[str, float]:
    """Plain-Python definitions, one class at a time; 0 where a denominator is 0."""
    n = len(target)
    correct = 0
    for p, t in zip(pred_labels, target, strict=True):
        if p == t:
            correct += 1
    out = {"accuracy": correct / n}
    precision, recall = [], []
    for c in range(num_classes):
        tp = fp = fn = 0
        for p, t in zip(pred_labels, target, strict=True):
            if p == c and t == c:
                tp += 1
            elif p == c:
                fp += 1
            elif t == c:
                fn += 1
        precision.append(tp / (tp + fp) if tp + fp > 0 else 0.0)
        recall.append(tp / (tp + fn) if tp + fn > 0 else 0.0)
        out[f"sensitivity_{names[c]}"] = recall[c]
        out[f"ppv_{names[c]}"] = precision[c]
    if positive_class is not None:
        p, r = precision[positive_class], recall[positive_class]
        out["precision"] = p
        out["recall"] = r
        out["f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return out


def random_batch(seed: int, n: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits loosely correlated with random targets, with a random per-class bias."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (n,), generator=g)
    logits = torch.randn(n, num_classes, generator=g) + 2 * torch.randn(num_classes, generator=g)
    logits[torch.arange(n), target] += 1.5 * torch.rand(n, generator=g)
    return logits, target


def reference_for(logits, target, num_classes, positive_class, class_names):
    names = class_names or [str(i) for i in range(num_classes)]
    labels = [_argmax(row) for row in logits.double().tolist()]
    return reference(labels, target.tolist(), num_classes, positive_class, names)


def as_floats(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: v.item() for k, v in result.items()}


def assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert math.isfinite(got[key]), key
        assert got[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("num_classes", "positive_class", "class_names"), CONFIGS)
def test_matches_reference(seed, num_classes, positive_class, class_names):
    logits, target = random_batch(seed, SIZES[seed], num_classes)
    metrics = classification_metrics(num_classes, positive_class, class_names)
    metrics.update(logits, target)
    got = as_floats(metrics.compute())
    assert_close(got, reference_for(logits, target, num_classes, positive_class, class_names))
    assert all(0.0 <= v <= 1.0 for v in got.values())


def test_keys_binary_default():
    metrics = classification_metrics()
    # members: one metric per scalar key, one per-class metric each for sensitivity_* and ppv_*
    assert sorted(metrics.keys()) == ["accuracy", "f1", "ppv", "precision", "recall", "sensitivity"]
    logits, target = random_batch(0, 10, 2)
    want = ["accuracy", "f1", "ppv_0", "ppv_1", "precision", "recall"]
    want += ["sensitivity_0", "sensitivity_1"]
    assert list(metrics(logits, target)) == want  # sorted, as compute()
    assert list(metrics.compute()) == want


def test_keys_covidx_and_prefix():
    names = ["Normal", "Pneumonia", "COVID-19"]
    metrics = classification_metrics(3, positive_class=None, class_names=names, prefix="val_")
    assert sorted(metrics.keys()) == ["val_accuracy", "val_ppv", "val_sensitivity"]
    expected = {"val_accuracy"} | {f"val_{m}_{n}" for m in ("sensitivity", "ppv") for n in names}
    logits, target = random_batch(1, 30, 3)
    metrics.update(logits, target)
    result = metrics.compute()
    assert list(result) == sorted(expected)
    got = {k.removeprefix("val_"): v for k, v in as_floats(result).items()}
    assert_close(got, reference_for(logits, target, 3, None, names))


@pytest.mark.parametrize(("num_classes", "positive_class", "class_names"), CONFIGS)
def test_batch_accumulation_equals_one_shot(num_classes, positive_class, class_names):
    logits, target = random_batch(7, 97, num_classes)
    one_shot = classification_metrics(num_classes, positive_class, class_names)
    one_shot.update(logits, target)
    want = as_floats(one_shot.compute())

    via_update = classification_metrics(num_classes, positive_class, class_names)
    via_forward = classification_metrics(num_classes, positive_class, class_names)
    for lo, hi in [(0, 1), (1, 20), (20, 21), (21, 60), (60, 97)]:
        via_update.update(logits[lo:hi], target[lo:hi])
        batch = via_forward(logits[lo:hi], target[lo:hi])
        # forward returns the values on this batch alone
        want_batch = reference_for(
            logits[lo:hi], target[lo:hi], num_classes, positive_class, class_names
        )
        assert_close(as_floats(batch), want_batch)
    assert_close(as_floats(via_update.compute()), want)
    assert_close(as_floats(via_forward.compute()), want)


@pytest.mark.parametrize(("num_classes", "positive_class", "class_names"), CONFIGS)
def test_logits_probabilities_and_labels_agree(num_classes, positive_class, class_names):
    logits, target = random_batch(3, 50, num_classes)
    results = []
    for preds in (logits, logits.softmax(dim=1), logits.argmax(dim=1)):
        metrics = classification_metrics(num_classes, positive_class, class_names)
        metrics.update(preds, target)
        results.append(as_floats(metrics.compute()))
    assert results[0] == results[1] == results[2]


def test_class_never_predicted_gives_zero_precision():
    metrics = classification_metrics()
    target = torch.tensor([0, 1, 1, 0, 1])
    metrics.update(torch.zeros(5, dtype=torch.long), target)
    got = as_floats(metrics.compute())
    assert got["precision"] == 0.0
    assert got["ppv_1"] == 0.0
    assert got["recall"] == 0.0
    assert got["f1"] == 0.0
    assert got["ppv_0"] == pytest.approx(0.4)
    assert got["sensitivity_0"] == 1.0
    assert got["accuracy"] == pytest.approx(0.4)


def test_class_absent_from_target_gives_zero_recall():
    metrics = classification_metrics(3, positive_class=2)
    metrics.update(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 0, 1, 1]))
    got = as_floats(metrics.compute())
    assert got["recall"] == 0.0
    assert got["sensitivity_2"] == 0.0
    assert got["precision"] == 0.0
    assert got["f1"] == 0.0
    assert all(math.isfinite(v) for v in got.values())


# a metric restored from a state dict has no update count, so torchmetrics warns on compute
@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")
def test_reset_state_dict_and_clone():
    logits, target = random_batch(5, 40, 3)
    metrics = classification_metrics(3, positive_class=1)
    metrics.update(*random_batch(6, 25, 3))
    metrics.reset()
    metrics.update(logits, target)
    want = reference_for(logits, target, 3, 1, None)
    assert_close(as_floats(metrics.compute()), want)

    metrics.persistent(True)
    restored = classification_metrics(3, positive_class=1)
    restored.persistent(True)
    restored.load_state_dict(metrics.state_dict())
    assert_close(as_floats(restored.compute()), want)

    copy = metrics.clone(prefix="test_")
    copy.update(*random_batch(8, 10, 3))  # must not touch the original's state
    assert_close(as_floats(metrics.compute()), want)
    assert all(k.startswith("test_") for k in copy.compute())


def test_empty_batch():
    logits, target = random_batch(9, 20, 3)
    metrics = classification_metrics(3, positive_class=1)
    metrics.update(logits[:0], target[:0])
    metrics.update(logits, target)
    metrics.update(logits.argmax(dim=1)[:0], target[:0])
    assert_close(as_floats(metrics.compute()), reference_for(logits, target, 3, 1, None))
    with pytest.raises(ValueError, match=r"^preds, target: expected a non-empty batch"):
        metrics(logits[:0], target[:0])


def test_docstring_examples_run():
    failures, tried = doctest.testmod(camkit.metrics, verbose=False)
    assert tried > 0
    assert failures == 0


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 1}, ValueError, r"^num_classes: .*>= 2.*got 1"),
        ({"num_classes": 2.0}, TypeError, r"^num_classes: expected an int >= 2, got 2.0 \(float\)"),
        ({"num_classes": True}, TypeError, r"^num_classes: "),
        ({"positive_class": 2}, ValueError, r"^positive_class: .*\[0, 1\].*got 2"),
        ({"positive_class": -1}, ValueError, r"^positive_class: "),
        ({"num_classes": 3, "positive_class": 3}, ValueError, r"^positive_class: .*\[0, 2\]"),
        ({"positive_class": 1.0}, TypeError, r"^positive_class: "),
        ({"class_names": ["a", "b", "c"]}, ValueError, r"^class_names: expected 2 names.*got 3"),
        ({"num_classes": 3, "class_names": ["a", "b"]}, ValueError, r"^class_names: expected 3"),
        ({"class_names": "ab"}, TypeError, r"^class_names: "),
        ({"class_names": ["a", "a"]}, ValueError, r"^class_names: expected unique"),
        ({"class_names": ["a", 1]}, TypeError, r"^class_names: expected str"),
        ({"class_names": ["a", "b.c"]}, ValueError, r"^class_names: .*'\.'"),
        ({"class_names": ["a", ""]}, ValueError, r"^class_names: .*non-empty"),
        ({"prefix": 3}, TypeError, r"^prefix: "),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        classification_metrics(**kwargs)


@pytest.mark.parametrize(
    ("preds", "target", "error", "match"),
    [
        (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), ValueError, r"^preds: expected shape"),
        (torch.randn(5, 2), torch.tensor([0, 1, 0, 1]), ValueError, r"^preds: expected shape"),
        (torch.randn(4, 2, 1), torch.tensor([0, 1, 0, 1]), ValueError, r"^preds: expected a 1 or"),
        (torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0, 1]), ValueError, r"^preds: "),
        (torch.tensor([0.0, 1, 0, 1]), torch.tensor([0, 1, 0, 1]), TypeError, r"^preds: .*integer"),
        (torch.randint(0, 2, (4, 2)), torch.tensor([0, 1, 0, 1]), TypeError, r"^preds: .*float"),
        (torch.tensor([0, 2, 0, 1]), torch.tensor([0, 1, 0, 1]), ValueError, r"^preds: .*\[0, 1\]"),
        (torch.tensor([0, -1, 0, 1]), torch.tensor([0, 1, 0, 1]), ValueError, r"^preds: "),
        (torch.randn(4, 2), torch.tensor([0, 1, 5, 1]), ValueError, r"^target: .*\[0, 1\]"),
        (torch.randn(4, 2), torch.tensor([0.0, 1, 0, 1]), TypeError, r"^target: .*integer"),
        (torch.randn(4, 2), torch.tensor([[0, 1, 0, 1]]), ValueError, r"^target: "),
        (torch.randn(4, 2), [0, 1, 0, 1], TypeError, r"^target: expected a torch.Tensor"),
        ([0, 1, 0, 1], torch.tensor([0, 1, 0, 1]), TypeError, r"^preds: expected a torch.Tensor"),
    ],
)
def test_bad_update_inputs(preds, target, error, match):
    metrics = classification_metrics()
    with pytest.raises(error, match=match):
        metrics.update(preds, target)
    with pytest.raises(error, match=match):
        metrics(preds, target)


# ----------------------------------------------------------------------------- format_table


def test_format_table_pinned():
    rows = {
        "baseline": {"accuracy": [0.9, 0.92], "f1": 0.875},
        "CAM-TTA": {"accuracy": [0.95, 0.96, 0.97], "f1": [0.9]},
    }
    assert format_table(rows) == (
        "| method   |     accuracy |    f1 |\n"
        "| :------- | -----------: | ----: |\n"
        "| baseline | 91.00 ± 1.00 | 87.50 |\n"
        "| CAM-TTA  | 96.00 ± 0.82 | 90.00 |"
    )


def test_format_table_fractions_order_and_missing():
    rows = {
        "a": {"precision": [0.1, 0.3], "recall": torch.tensor([0.5, 0.5])},
        "b": {"recall": np.float64(0.25), "extra": 1.0},
    }
    assert format_table(rows, metrics=["recall", "precision"], percent=False) == (
        "| method |          recall |       precision |\n"
        "| :----- | --------------: | --------------: |\n"
        "| a      | 0.5000 ± 0.0000 | 0.2000 ± 0.1000 |\n"
        "| b      |          0.2500 |               - |"
    )


def test_format_table_default_columns_in_first_appearance_order():
    table = format_table({"a": {"x": 0.1}, "b": {"y": 0.2, "x": torch.tensor(0.3)}})
    assert table.splitlines()[0] == "| method |     x |     y |"
    assert table.splitlines()[3] == "| b      | 30.00 | 20.00 |"


def test_format_table_std_is_population_std():
    values = [0.1, 0.2, 0.6]
    cell = format_table({"m": {"v": values}}).splitlines()[2]
    want_std = 100 * math.sqrt(sum((v - 0.3) ** 2 for v in values) / len(values))
    assert cell == f"| m      | 30.00 ± {want_std:.2f} |"


@pytest.mark.parametrize(
    ("rows", "metrics", "error", "match"),
    [
        ([("a", {"x": 1.0})], None, TypeError, r"^rows: expected a mapping"),
        ({}, None, ValueError, r"^rows: expected at least one"),
        ({"a": [0.1]}, None, TypeError, r"^rows\['a'\]: expected a mapping"),
        ({"a": {"x": 0.1}}, "x", TypeError, r"^metrics: "),
        ({"a": {}}, None, ValueError, r"^metrics: expected at least one"),
        ({"a": {"x": []}}, None, ValueError, r"^rows\['a'\]\['x'\]: .*empty"),
        ({"a": {"x": "high"}}, None, TypeError, r"^rows\['a'\]\['x'\]: expected a number"),
        ({"a": {"x": [[0.1, 0.2]]}}, None, ValueError, r"^rows\['a'\]\['x'\]: .*1-D"),
    ],
)
def test_format_table_bad_inputs(rows, metrics, error, match):
    with pytest.raises(error, match=match):
        format_table(rows, metrics=metrics)


def test_nan_scores_are_rejected_not_counted_as_a_class():
    metrics = classification_metrics()
    nan = float("nan")
    preds, target = torch.tensor([[nan, 0.1], [0.2, 0.9], [0.3, nan]]), torch.tensor([1, 1, 0])
    match = r"^preds: expected scores without NaN, got NaN in 2 of 3 rows \(rows \[0, 2\]\)"
    with pytest.raises(ValueError, match=match):
        metrics.update(preds, target)
    with pytest.raises(ValueError, match=match):
        metrics(preds, target)
    # ±inf scores have a well-defined argmax and are kept
    metrics.update(torch.tensor([[-math.inf, 0.0], [math.inf, 0.0]]), torch.tensor([1, 0]))
    assert metrics.compute()["accuracy"].item() == 1.0


def test_evaluate_matches_a_manual_loop_and_counts_tta_forwards():
    from camkit import CAMMaskingTTA
    from camkit.metrics import evaluate
    from tests.helpers import TinyNet

    torch.manual_seed(0)
    model = TinyNet(num_classes=2, stride=4).eval()
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(10) % 2

    def to_input(batch: torch.Tensor) -> torch.Tensor:
        return batch.float() / 255 - 0.5

    values = evaluate(
        model, images, labels, classification_metrics(2), batch_size=3, transform=to_input
    )
    preds = model(to_input(images)).argmax(1)
    assert values["accuracy"] == pytest.approx(float((preds == labels).float().mean()))
    tta = CAMMaskingTTA(model, k=3, theta=0.2, patch_size=4)
    with_tta = evaluate(
        model, images, labels, classification_metrics(2), batch_size=4, transform=to_input, tta=tta
    )
    result = tta.predict(to_input(images))
    assert with_tta["tta_forwards"] == pytest.approx(float(result.forwards.float().mean()))
    assert with_tta["tta_flipped"] == int(result.flipped.sum())
    assert with_tta["accuracy"] == pytest.approx(float((result.labels == labels).float().mean()))
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        evaluate(model, images, labels, classification_metrics(2), batch_size=0)
