"""Input validation shared by every public camkit function.

One helper, `check_tensor`, states what an argument must look like and raises an error that
names the argument, what was expected and what was given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "check_choice",
    "check_finite",
    "check_int",
    "check_labels",
    "check_positive",
    "check_probability",
    "check_tensor",
    "flagged_rows",
]


def _describe(x: torch.Tensor) -> str:
    return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool | None = None,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    finite: bool = False,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of the expected rank, shape and dtype.

    Args:
        x: the value to check.
        name: the argument's name, used in the error message.
        ndim: allowed number(s) of dimensions.
        shape: expected shape; ``None`` entries match any size. Implies ``ndim``.
        floating: require a floating (``True``) or integer (``False``) dtype.
        dtype: allowed dtype(s).
        finite: require every element to be finite (costs a host sync: not for hot paths).

    Returns:
        ``x`` unchanged.

    Raises:
        TypeError: ``x`` is not a tensor or has a wrong dtype.
        ValueError: ``x`` has a wrong rank, shape, or non-finite values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name}: expected a {want}-D tensor, got a {_describe(x)}")
    if shape is not None:
        for got, want in zip(x.shape, shape, strict=True):
            if want is not None and got != want:
                pretty = tuple("*" if s is None else s for s in shape)
                raise ValueError(f"{name}: expected shape {pretty}, got a {_describe(x)}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got a {_describe(x)}")
    if floating is False and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name}: expected an integer tensor, got a {_describe(x)}")
    if dtype is not None:
        allowed_dt = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if x.dtype not in allowed_dt:
            want = " or ".join(str(d) for d in allowed_dt)
            raise TypeError(f"{name}: expected dtype {want}, got a {_describe(x)}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf in a {_describe(x)}")
    return x


def check_positive(value: float, name: str, *, strict: bool = True) -> float:
    """Check that a number is finite and positive (``strict``) or non-negative."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if (value <= 0 if strict else value < 0) or not math.isfinite(value):
        want = "> 0" if strict else ">= 0"
        raise ValueError(f"{name}: expected a finite value {want}, got {value}")
    return float(value)


def check_probability(value: float, name: str) -> float:
    """Check that a number lies in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number in [0, 1], got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1], got {value}")
    return float(value)


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """Check that ``value`` is an ``int`` (not a ``bool``), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, int):
        want = "an int" if minimum is None else f"an int >= {minimum}"
        raise TypeError(f"{name}: expected {want}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_choice(value: object, name: str, allowed: Sequence[object]) -> object:
    """Check that ``value`` is one of ``allowed``; the error lists the choices."""
    if value not in tuple(allowed):
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def check_labels(labels: object, name: str, num_classes: int, *, batch: int | None = None) -> None:
    """Check ``(B,)`` integer class labels in ``[0, num_classes)`` without a host sync on CUDA.

    On the CPU the range is checked at once and the error names the offending values. On an
    accelerator reading the values back would stall the stream, so the check is queued with
    ``torch._assert_async`` (the error then surfaces at the next synchronisation).
    """
    check_tensor(labels, name, shape=(batch,), floating=False)
    assert isinstance(labels, torch.Tensor)
    if labels.numel() == 0:
        return
    if labels.device.type == "cpu" and not torch.compiler.is_compiling():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name}: expected class indices in [0, {num_classes - 1}], got values in "
                f"[{lo}, {hi}] in a {_describe(labels)}"
            )
    else:
        torch._assert_async(
            ((labels >= 0) & (labels < num_classes)).all(),
            f"{name}: expected class indices in [0, {num_classes - 1}]",
        )


def check_finite(x: torch.Tensor, name: str) -> None:
    """Refuse NaN or infinite values in ``x`` without a host sync on an accelerator.

    On the CPU the check runs at once and the error counts the bad values; on an accelerator (or
    under ``torch.compile``) it is queued with ``torch._assert_async`` and fails at the next
    synchronisation. Not for a step's hot path: the training step checks what it is given once.
    """
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise ValueError(
                f"{name}: expected finite values, got {int(bad.sum())} NaN or infinite of "
                f"{x.numel()} in a {_describe(x)}"
            )
    else:
        torch._assert_async(torch.isfinite(x).all(), f"{name}: expected finite values")


def flagged_rows(flags: torch.Tensor, limit: int = 10) -> tuple[int, str]:
    """``(count, "i, j, ...")`` of the ``True`` rows of a ``(B,)`` mask, for error messages."""
    rows = flags.nonzero()[:, 0].tolist()
    shown = ", ".join(str(r) for r in rows[:limit]) + (", ..." if len(rows) > limit else "")
    return len(rows), shown
