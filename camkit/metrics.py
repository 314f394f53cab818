"""Classification metrics as reported in the paper, and a table printer for results over seeds.

The paper reports accuracy, precision, recall and F1 of the positive class (COVID = class 1) on the
binary site-A/B tasks, and accuracy plus per-class sensitivity (recall) and PPV (precision) on
COVIDx-CT. [`classification_metrics`][camkit.classification_metrics] builds them as one
torchmetrics ``MetricCollection``, so they accumulate over batches and synchronise across
processes; [`evaluate`][camkit.evaluate] runs a model (optionally through the CAM-masking
TTA) over a test set held in memory. Every score is a fraction in ``[0, 1]``; one whose
denominator is zero (no prediction or no target of a class) is ``0``, never NaN (torchmetrics'
``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.wrappers import ClasswiseWrapper

from camkit._checks import _describe, check_int, check_labels, check_tensor, flagged_rows

__all__ = ["classification_metrics", "evaluate"]


class _SelectClass(ClasswiseWrapper):
    """torchmetrics' ``ClasswiseWrapper``, returning the value of one class instead of the dict.

    camkit keeps this for ``precision``/``recall``/``f1`` of the positive class: the plain wrapper
    returns every class under ``<prefix><label>`` keys, and no ``average`` mode picks one class.
    The state lives in the wrapped per-class metric, which also synchronises across processes.
    """

    def __init__(self, metric: Metric, index: int) -> None:
        super().__init__(metric)
        self.index = index

    def _convert_output(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return x[self.index]


class _CheckedCollection(MetricCollection):
    """A ``MetricCollection`` that checks ``preds`` and ``target`` once per call.

    torchmetrics does not reject out-of-range class labels in every case (a predicted label
    ``>= num_classes`` is silently miscounted), nor NaN scores (the argmax counts a NaN as the
    largest score), so both are checked here.
    """

    def __init__(self, metrics: dict[str, Metric], num_classes: int, prefix: str | None) -> None:
        super().__init__(metrics, prefix=prefix, compute_groups=False)
        self.num_classes = num_classes

    def _check_inputs(self, preds: object, target: object) -> None:
        k = self.num_classes
        target = check_tensor(target, "target", ndim=1, floating=False)
        preds = check_tensor(preds, "preds", ndim=(1, 2))
        # metrics synchronise anyway: the labels are checked on the host, at once, on any device
        if preds.ndim == 2:
            check_tensor(preds, "preds", shape=(target.shape[0], k), floating=True)
            _check_no_nan(preds)
        else:
            check_labels(preds.cpu(), "preds", k, batch=target.shape[0])
        check_labels(target.cpu(), "target", k)

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Check the inputs, then update every metric (an empty batch is a no-op)."""
        self._check_inputs(preds, target)
        if target.shape[0] > 0:  # torchmetrics fails on empty batches
            super().update(preds, target)

    def forward(self, preds: Tensor, target: Tensor) -> dict[str, Any]:  # type: ignore[override]
        """Check the inputs, update every metric and return the values on this batch alone."""
        self._check_inputs(preds, target)
        if target.shape[0] == 0:
            raise ValueError(
                "preds, target: expected a non-empty batch to compute batch values on, "
                "got 0 samples (use update() to skip empty batches)"
            )
        return dict(sorted(super().forward(preds, target).items()))

    def compute(self) -> dict[str, Any]:
        """The values over every batch so far, keys sorted alphabetically.

        Raises:
            ValueError: no sample was given since the last ``reset()`` (torchmetrics would return
                0.0 for every score, which reads like a measured zero).
        """
        # the accuracy's counts (also after load_state_dict or a sync; torchmetrics' wrappers
        # report an update from their construction, so update_called cannot tell)
        counted = [m for m in self.values(copy_state=False) if isinstance(m, MulticlassAccuracy)]
        if not any(bool((m.tp + m.fn).sum() > 0) for m in counted):
            raise ValueError(
                "compute: no samples were given (update() was never called with a non-empty "
                "batch since the last reset()); there is nothing to score"
            )
        return dict(sorted(super().compute().items()))


def _check_no_nan(preds: Tensor) -> None:
    """Reject NaN scores: the argmax would count a row with a NaN as the class of its NaN."""
    nan_rows = torch.isnan(preds).any(1)
    if bool(nan_rows.any()):
        count, shown = flagged_rows(nan_rows)
        raise ValueError(
            f"preds: expected scores without NaN, got NaN in {count} of {preds.shape[0]} "
            f"rows (rows [{shown}]) of a {_describe(preds)}; the argmax would count each such "
            "row as the class of its first NaN"
        )


def classification_metrics(
    num_classes: int = 2,
    positive_class: int | None = 1,
    class_names: Sequence[str] | None = None,
    prefix: str | None = None,
) -> MetricCollection:
    """Build the paper's classification metrics as one torchmetrics collection.

    The keys of ``compute()`` and of a call's result, sorted alphabetically, each preceded by
    ``prefix``:

    - ``accuracy``: overall accuracy (fraction of correctly classified samples).
    - ``precision``, ``recall``, ``f1``: of class ``positive_class`` against all others; only
      when ``positive_class`` is not None.
    - ``sensitivity_<name>`` and ``ppv_<name>`` for every class: its recall and its precision
      (one-vs-rest), with ``<name>`` from ``class_names``.

    Feed it with ``update(preds, target)`` (or call it, which also returns the values on that batch
    alone): ``preds`` is either a ``(B, num_classes)`` float tensor of probabilities or logits, of
    which the argmax is taken, or a ``(B,)`` integer tensor of predicted labels; ``target`` is a
    ``(B,)`` integer tensor of labels in ``[0, num_classes)``; ``update`` skips an empty batch
    (``B = 0``). Every value is a 0-d float tensor in ``[0, 1]``, 0 where a denominator is zero.

    The metrics are torchmetrics' ``MulticlassAccuracy`` (``average="micro"``) and
    ``MulticlassPrecision`` / ``MulticlassRecall`` / ``MulticlassF1Score`` (``average=None``,
    ``zero_division=0``), the per-class keys through ``ClasswiseWrapper``: the collection's members
    are ``accuracy``, ``precision``, ``recall``, ``f1``, ``sensitivity`` and ``ppv``.

    Args:
        num_classes: number of classes, at least 2 (2 for the site-A/B tasks, 3 for COVIDx-CT).
        positive_class: the class whose precision, recall and F1 are reported (COVID = 1 in the
            binary tasks); ``None`` to report only accuracy and the per-class values.
        class_names: one name per class, used in the per-class keys; default ``"0"``, ``"1"``, ...
            Names must be unique, non-empty and without ``"."``.
        prefix: string put in front of every key, e.g. ``"val_"``.

    Returns:
        A torchmetrics ``MetricCollection``; move it to the predictions' device with ``.to``.

    Raises:
        TypeError: an argument has a wrong type; on update, ``preds`` or ``target`` has a wrong
            dtype.
        ValueError: ``num_classes < 2``, ``positive_class`` outside ``[0, num_classes)``,
            ``class_names`` of the wrong length or with duplicate or invalid names; on update,
            ``preds`` or ``target`` has a wrong shape or labels outside ``[0, num_classes)``, or
            float ``preds`` hold a NaN (the argmax would count it as a class; ±inf is accepted).

    Examples:
        >>> import torch
        >>> from camkit.metrics import classification_metrics
        >>> metrics = classification_metrics()
        >>> logits = torch.tensor([[2.0, -1.0], [0.1, 0.9], [-0.5, 0.5], [0.0, 1.0], [-1.0, 3.0]])
        >>> metrics.update(logits, torch.tensor([0, 1, 0, 0, 1]))
        >>> for key, value in metrics.compute().items():
        ...     print(f"{key}: {value.item():.4f}")
        accuracy: 0.6000
        f1: 0.6667
        ppv_0: 1.0000
        ppv_1: 0.5000
        precision: 0.5000
        recall: 1.0000
        sensitivity_0: 0.3333
        sensitivity_1: 1.0000

        COVIDx-CT: accuracy plus per-class sensitivity and PPV, predictions given as labels.

        >>> covidx = classification_metrics(
        ...     3, positive_class=None, class_names=["Normal", "Pneumonia", "COVID-19"]
        ... )
        >>> covidx.update(torch.tensor([0, 1, 2, 2, 1]), torch.tensor([0, 1, 2, 1, 1]))
        >>> for key, value in covidx.compute().items():
        ...     print(f"{key}: {100 * value.item():.1f}")
        accuracy: 80.0
        ppv_COVID-19: 50.0
        ppv_Normal: 100.0
        ppv_Pneumonia: 100.0
        sensitivity_COVID-19: 100.0
        sensitivity_Normal: 100.0
        sensitivity_Pneumonia: 66.7
    """
    num_classes = check_int(num_classes, "num_classes", minimum=2)
    if positive_class is not None:
        positive_class = check_int(positive_class, "positive_class")
        if not 0 <= positive_class < num_classes:
            raise ValueError(
                f"positive_class: expected None or an int in [0, {num_classes - 1}] "
                f"(num_classes={num_classes}), got {positive_class}"
            )
    names = _check_class_names(class_names, num_classes)
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix: expected None or a str, got {type(prefix).__name__}")

    per_class: dict[str, Any] = {"num_classes": num_classes, "average": None, "zero_division": 0}
    metrics: dict[str, Metric] = {"accuracy": MulticlassAccuracy(num_classes, average="micro")}
    if positive_class is not None:
        metrics["precision"] = _SelectClass(MulticlassPrecision(**per_class), positive_class)
        metrics["recall"] = _SelectClass(MulticlassRecall(**per_class), positive_class)
        metrics["f1"] = _SelectClass(MulticlassF1Score(**per_class), positive_class)
    metrics["sensitivity"] = ClasswiseWrapper(MulticlassRecall(**per_class), names, "sensitivity_")
    metrics["ppv"] = ClasswiseWrapper(MulticlassPrecision(**per_class), names, "ppv_")
    return _CheckedCollection(metrics, num_classes=num_classes, prefix=prefix)


def _check_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError(
            f"class_names: expected None or a sequence of {num_classes} str, "
            f"got {type(class_names).__name__}"
        )
    names = list(class_names)
    if len(names) != num_classes:
        raise ValueError(
            f"class_names: expected {num_classes} names (num_classes={num_classes}), "
            f"got {len(names)}: {names!r}"
        )
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"class_names: expected str names, got {type(name).__name__} {name!r}")
        if not name or "." in name:
            raise ValueError(f"class_names: expected non-empty names without '.', got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names: expected unique names, got {names!r}")
    return names


@torch.no_grad()
def evaluate(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    metrics: MetricCollection,
    *,
    batch_size: int = 64,
    transform: Callable[[Tensor], Tensor] | None = None,
    tta: Any = None,
    amp: bool = False,
) -> dict[str, float]:
    """Fill ``metrics`` with ``model``'s predictions on ``images`` in batches; return the values.

    The test set stays where it is (e.g. resident on the GPU as uint8): each batch of ``images``
    goes through ``transform`` (decode, resize, normalise, channels-last, ...) to the model input,
    then through ``model`` or, with ``tta``, through ``tta.predict``. Each ``metrics.update``
    checks its batch on the host (labels in range, no NaN scores): evaluation is not a hot path,
    and a wrong score must not be counted silently. ``model`` should be in eval mode.

    Args:
        model: the classifier, ``(B, C, H, W) -> (B, K)`` logits.
        images: ``(N, ...)`` the test inputs, any dtype, on the model's device.
        labels: ``(N,)`` int64 labels on the same device.
        metrics: the collection to fill, e.g. `classification_metrics` (reset first).
        batch_size: images per forward.
        transform: maps a slice of ``images`` to the model input (default: unchanged).
        tta: a [`CAMMaskingTTA`][camkit.CAMMaskingTTA] (or anything with its ``predict``).
        amp: run the forwards under bfloat16 autocast on the images' device.

    Returns:
        ``{name: float}`` of ``metrics.compute()``; with ``tta`` also ``tta_forwards`` (mean
        image-forwards per image, from `TTAResult.forwards`) and ``tta_flipped``
        (the number of labels the vote flipped).

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
        >>> values = evaluate(model, torch.randn(10, 1, 2, 2), torch.arange(10) % 2,
        ...                   classification_metrics(2), batch_size=4)
        >>> sorted(values)[:3], 0.0 <= values["accuracy"] <= 1.0
        (['accuracy', 'f1', 'ppv_0'], True)
    """
    check_tensor(labels, "labels", shape=(images.shape[0],), floating=False)
    check_int(batch_size, "batch_size", minimum=1)
    device = images.device
    metrics = metrics.to(device)
    forwards = torch.zeros((), dtype=torch.long, device=device)
    flipped = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        x = transform(x) if transform is not None else x
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if tta is not None:
                result = tta.predict(x)
                probs = result.probs
                forwards += result.forwards.sum()
                flipped += result.flipped.sum()
            else:
                probs = model(x).float().softmax(1)
        metrics.update(probs, labels[start : start + batch_size])
    values = {name: float(value) for name, value in metrics.compute().items()}
    if tta is not None:
        values["tta_forwards"] = float(forwards) / max(1, images.shape[0])
        values["tta_flipped"] = int(flipped)
    return values
