"""Result tables: ``mean ± std`` over seeds as markdown that also reads as plain text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["format_table"]


def format_table(
    rows: Mapping[str, Mapping[str, Sequence[float] | float]],
    metrics: Sequence[str] | None = None,
    percent: bool = True,
) -> str:
    """Format results as a markdown table, one row per method and one column per metric.

    A cell given as a sequence of values (one per seed) shows ``mean ± std``, with the population
    standard deviation (``ddof=0``); a cell given as a single number, or as a sequence of one
    value, shows just that value. Values are printed with 2 decimals as percentages
    (``percent=True``, values multiplied by 100) or with 4 decimals as fractions. A metric missing
    from a method's row shows ``-``. The columns are padded so that the table also reads as plain
    text.

    Args:
        rows: ``{method: {metric: value or values over seeds}}``; values may be floats, 0-d or 1-D
            tensors or arrays.
        metrics: the columns, in order; default: every metric of ``rows`` in order of first
            appearance.
        percent: multiply values by 100 (metrics in ``[0, 1]`` shown as percentages).

    Returns:
        The table, one line per row, without a trailing newline.

    Raises:
        TypeError: ``rows`` is not a mapping of mappings, ``metrics`` is a single string, or a
            value is not numeric.
        ValueError: ``rows`` or the list of metrics is empty, or a value is an empty sequence or
            has more than one dimension.

    Examples:
        >>> print(format_table({
        ...     "baseline": {"accuracy": [0.90, 0.92], "f1": 0.875},
        ...     "CAM-TTA": {"accuracy": [0.95, 0.96, 0.97], "f1": [0.9]},
        ... }))
        | method   |     accuracy |    f1 |
        | :------- | -----------: | ----: |
        | baseline | 91.00 ± 1.00 | 87.50 |
        | CAM-TTA  | 96.00 ± 0.82 | 90.00 |
    """
    if not isinstance(rows, Mapping):
        raise TypeError(
            f"rows: expected a mapping {{method: {{metric: value}}}}, got {type(rows).__name__}"
        )
    if not rows:
        raise ValueError("rows: expected at least one method, got an empty mapping")
    for method, row in rows.items():
        if not isinstance(row, Mapping):
            raise TypeError(
                f"rows[{method!r}]: expected a mapping {{metric: value}}, got {type(row).__name__}"
            )
    if metrics is not None and (isinstance(metrics, str) or not isinstance(metrics, Sequence)):
        kind = type(metrics).__name__
        raise TypeError(f"metrics: expected None or a sequence of metric names, got {kind}")
    found = dict.fromkeys(m for row in rows.values() for m in row)  # in order of appearance
    columns = list(found if metrics is None else metrics)
    if not columns:
        raise ValueError("metrics: expected at least one metric to show, got none")

    header = ["method", *(str(c) for c in columns)]
    body = [
        [str(method), *(_cell(row, c, f"rows[{method!r}][{c!r}]", percent) for c in columns)]
        for method, row in rows.items()
    ]
    widths = [max(3, *(len(line[j]) for line in [header, *body])) for j in range(len(header))]
    rule = [":" + "-" * (widths[0] - 1), *("-" * (w - 1) + ":" for w in widths[1:])]
    aligns = ["<"] + [">"] * len(columns)  # method names left, numbers right
    return "\n".join(
        "| "
        + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(line, aligns, widths, strict=True))
        + " |"
        for line in [header, rule, *body]
    )


def _cell(row: Mapping[str, object], key: str, name: str, percent: bool) -> str:
    if key not in row:
        return "-"
    value = row[key]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    try:
        values = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name}: expected a number or a sequence of numbers, got {type(value).__name__}"
        ) from None
    if values.ndim > 1:
        raise ValueError(f"{name}: expected a number or a 1-D sequence, got shape {values.shape}")
    values = values.reshape(-1)
    if values.size == 0:
        raise ValueError(f"{name}: expected a number or a non-empty sequence, got an empty one")
    scale, decimals = (100.0, 2) if percent else (1.0, 4)
    mean = f"{values.mean() * scale:.{decimals}f}"
    if values.size == 1:
        return mean
    return f"{mean} ± {values.std(ddof=0) * scale:.{decimals}f}"
