"""Input validation shared by every public camkit function.

One helper, `check_tensor`, states what an argument must look like and raises an error that
names the argument, what was expected and what was given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "check_boxes",
    "check_choice",
    "check_finite",
    "check_in_range",
    "check_input_layer",
    "check_input_rank",
    "check_int",
    "check_labels",
    "check_permutation",
    "check_positive",
    "check_probability",
    "check_size",
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
    if finite:
        check_finite(x, name)
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


def _require(ok: torch.Tensor, x: torch.Tensor, name: str, expected: str, got) -> None:
    """Raise ``ValueError("{name}: expected {expected}, got {got()}")`` unless ``ok`` is all true.

    On the CPU the check runs at once; on an accelerator (or under ``torch.compile``) reading
    ``ok`` back would stall the stream, so it is queued with ``torch._assert_async`` and fails at
    the next synchronisation (the message then says only what was expected).
    """
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok.all()):
            raise ValueError(f"{name}: expected {expected}, got {got()}")
    else:
        torch._assert_async(ok.all(), f"{name}: expected {expected}")


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
    _require(
        (labels >= 0) & (labels < num_classes),
        labels,
        name,
        f"class indices in [0, {num_classes - 1}]",
        lambda: f"values in [{int(labels.min())}, {int(labels.max())}] in a {_describe(labels)}",
    )


def check_finite(x: torch.Tensor, name: str) -> None:
    """Refuse NaN or infinite values in ``x`` without a host sync on an accelerator.

    On the CPU the check runs at once and the error counts the bad values; on an accelerator (or
    under ``torch.compile``) it is queued with ``torch._assert_async`` and fails at the next
    synchronisation. It reads ``x`` once (an elementwise test and a reduction): the training
    step runs it once per batch, unless it is built with ``check_finite=False``.
    """
    ok = torch.isfinite(x)
    _require(
        ok,
        x,
        name,
        "finite values",
        lambda: f"{int((~ok).sum())} NaN or infinite of {x.numel()} in a {_describe(x)}",
    )


def check_in_range(x: torch.Tensor, name: str, low: float, high: float) -> None:
    """Refuse values of ``x`` outside ``[low, high]`` (NaN included), naming the first one.

    No host sync on an accelerator (see `check_finite`).
    """

    def got() -> str:
        bad = ~((x >= low) & (x <= high))
        index = tuple(bad.nonzero()[0].tolist())
        where = f"[{index[0]}]" if len(index) == 1 else str(list(index))
        return (
            f"{int(bad.sum())} value(s) outside it, e.g. {x[index].item()} at {where}, in a "
            f"{_describe(x)}"
        )

    _require((x >= low) & (x <= high), x, name, f"values in [{low}, {high}]", got)


def check_permutation(perm: torch.Tensor, name: str) -> None:
    """Refuse a ``(B,)`` integer tensor that is not a permutation of ``0 … B−1``.

    No host sync on an accelerator (see `check_finite`).
    """
    n = perm.shape[0]
    if n == 0:
        return
    ok = perm.sort().values == torch.arange(n, device=perm.device, dtype=perm.dtype)

    def got() -> str:
        shown = perm.tolist()
        text = ", ".join(str(v) for v in shown[:12]) + (", ..." if n > 12 else "")
        return f"[{text}]"

    _require(ok, perm, name, f"a permutation of 0 … {n - 1} (each image's partner)", got)


def check_boxes(boxes: torch.Tensor, name: str, size: tuple[int, ...]) -> None:
    """Refuse ``(N, 4)`` half-open boxes ``(y0, x0, y1, x1)`` that leave an ``(H, W)`` image
    (volumes: ``(N, 6)`` cuboids ``(z0, y0, x0, z1, y1, x1)`` that leave a ``(D, H, W)`` one).

    No host sync on an accelerator (see `check_finite`).
    """
    rank = len(size)
    columns = boxes.unbind(1)
    ok = None
    for axis, side in enumerate(size):  # for images: y0 ≤ y1 ≤ H, then x0 ≤ x1 ≤ W
        low, high = columns[axis], columns[axis + rank]
        inside = (low >= 0) & (low <= high) & (high <= side)
        ok = inside if ok is None else ok & inside

    def got() -> str:
        count, rows = flagged_rows(~ok, limit=3)
        first = tuple(boxes[int((~ok).nonzero()[0, 0])].tolist())
        return (
            f"{first} in rows {rows} ({count} of {boxes.shape[0]}); were the draws made for "
            "another image size?"
        )

    names = "zyx"[3 - rank :]
    corners = ", ".join([f"{a}0" for a in names] + [f"{a}1" for a in names])
    bounds = " and ".join(f"0 ≤ {a}0 ≤ {a}1 ≤ {side}" for a, side in zip(names, size, strict=True))
    kind = "image" if rank == 2 else "volume"
    expected = f"boxes ({corners}) inside the {'×'.join(map(str, size))} {kind}, {bounds}"
    _require(ok, boxes, name, expected, got)


def check_size(size: object, name: str, ranks: tuple[int, ...] = (2,)) -> tuple[int, ...]:
    """Check an image size ``(H, W)`` of two ints ≥ 1 (with ``ranks=(2, 3)`` also a volume's
    ``(D, H, W)``); returns it as a tuple."""
    if (
        not isinstance(size, (tuple, list, torch.Size))
        or len(size) not in ranks
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size)
    ):
        volumes = "; or (D, H, W), three, for volumes" if 3 in ranks else ""
        raise ValueError(f"{name}: expected (H, W), two ints >= 1, got {size!r}{volumes}")
    return tuple(int(s) for s in size)


def check_input_layer(
    images: torch.Tensor, name: str, layer: torch.nn.Module | None, owner: str
) -> None:
    """``images``' channels and dtype against the model's input convolution ``layer``.

    The dtype must be the layer weights' outside ``torch.autocast``. ``layer`` ``None`` (no input
    convolution found) checks nothing; ``owner`` names the model in the message.
    """
    if layer is None:
        return
    if images.shape[1] != layer.in_channels:
        raise ValueError(
            f"{name}: expected {layer.in_channels} channels (the input layer of {owner}), got a "
            f"{_describe(images)}"
        )
    weight_dtype = layer.weight.dtype
    if images.dtype != weight_dtype and not torch.is_autocast_enabled(images.device.type):
        raise TypeError(
            f"{name}: expected dtype {weight_dtype} (the model's weights; cast the images or run "
            f"under torch.autocast), got a {_describe(images)}"
        )


def input_ndim(layer: torch.nn.Module | None) -> tuple[int, ...]:
    """The batch ranks an input layer takes: ``(4,)`` for a 2-D convolution (images), ``(5,)``
    for a 3-D one (volumes), ``(4, 5)`` when the model has no input convolution."""
    return (layer.weight.ndim,) if layer is not None else (4, 5)


def check_input_rank(images: object, name: str, ndim: tuple[int, ...], owner: str) -> None:
    """``images``: a floating tensor of a rank the model's input layer takes (see `input_ndim`).

    A model with a 2-D input convolution takes ``(B, C, H, W)`` images, one with a 3-D input
    convolution ``(B, C, D, H, W)`` volumes; the message names the expected layout, the model
    (``owner``) and the given shape.
    """
    if isinstance(images, torch.Tensor) and len(ndim) == 1 and images.ndim != ndim[0]:
        layout = "(B, C, H, W) images" if ndim[0] == 4 else "(B, C, D, H, W) volumes"
        raise ValueError(
            f"{name}: expected a {ndim[0]}-D tensor, {layout} (the input layer of {owner} is "
            f"{ndim[0] - 2}-D), got a {_describe(images)}"
        )
    check_tensor(images, name, ndim=ndim, floating=True)


def flagged_rows(flags: torch.Tensor, limit: int = 10) -> tuple[int, str]:
    """``(count, "i, j, ...")`` of the ``True`` rows of a ``(B,)`` mask, for error messages."""
    rows = flags.nonzero()[:, 0].tolist()
    shown = ", ".join(str(r) for r in rows[:limit]) + (", ..." if len(rows) > limit else "")
    return len(rows), shown
