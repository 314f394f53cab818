"""The boxes of the box mixes (SnapMix, CutMix): their masks, sizes and the checks of their draws.

An image's box is ``(y0, x0, y1, x1)``, half-open; a volume's is a cuboid
``(z0, y0, x0, z1, y1, x1)``. Everything here is the same maths with one more axis, so one code
path serves both: the rank is ``len(size)`` (or half the box tensor's width).
"""

from __future__ import annotations

import torch

from camkit._checks import _require, check_boxes, check_permutation, check_tensor, flagged_rows


def _box_masks(boxes: torch.Tensor, *size: int) -> torch.Tensor:
    """``(N, *size)`` boolean masks, ``True`` inside each half-open box of ``boxes``
    ``(N, 2·len(size))``: ``_box_masks(boxes, H, W)`` for images, ``(boxes, D, H, W)`` for
    volumes."""
    rank = len(size)
    mask = None
    for axis, side in enumerate(size):
        index = torch.arange(side, device=boxes.device)
        along = (index >= boxes[:, axis, None]) & (index < boxes[:, axis + rank, None])
        along = along.view(-1, *(side if a == axis else 1 for a in range(rank)))
        mask = along if mask is None else mask & along
    return mask


def _box_sizes(boxes: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 pixel (voxel) counts of ``(N, 2·rank)`` half-open boxes."""
    rank = boxes.shape[1] // 2
    return (boxes[:, rank:] - boxes[:, :rank]).prod(1)


def _check_box_params(
    params: object,
    batch: int,
    kind: type,
    size: tuple[int, ...],
    *,
    nonempty: bool = False,
    name: str = "params",
) -> None:
    """``params`` is a ``kind`` of box draws for ``batch`` images of ``size``: shapes, dtypes and
    values (``perm`` a permutation, boxes inside the image, non-empty where applied when
    ``nonempty``, a ``shared_box`` that agrees with the tensors). A volume's ``size``
    ``(D, H, W)`` takes cuboids ``(B, 6)``."""
    if not isinstance(params, kind):
        raise TypeError(f"{name}: expected a {kind.__name__}, got {type(params).__name__}")
    check_tensor(params.perm, f"{name}.perm", shape=(batch,), floating=False)
    check_tensor(params.apply, f"{name}.apply", shape=(batch,), dtype=torch.bool)
    fields = [field for field in params._fields if field.startswith("box")]
    rank = len(size)
    n = 2 * rank  # (y0, x0, y1, x1); volumes (z0, y0, x0, z1, y1, x1)
    for field in fields:
        check_tensor(getattr(params, field), f"{name}.{field}", shape=(batch, n), floating=False)
    check_permutation(params.perm, f"{name}.perm")
    for field in fields:
        boxes = getattr(params, field)
        check_boxes(boxes, f"{name}.{field}", size)
        if nonempty:  # a mixed image whose box is empty would be weighed as if it were pasted
            empty = params.apply & (boxes[:, rank:] <= boxes[:, :rank]).any(1)
            _require(
                ~empty,
                boxes,
                f"{name}.{field}",
                "a non-empty box wherever apply is True",
                lambda empty=empty: f"empty boxes in the mixed rows {flagged_rows(empty)[1]}",
            )
    if params.shared_box is not None:
        _check_shared_box(params, fields, size, name)


def _check_shared_box(params: object, fields: list[str], size: tuple[int, ...], name: str) -> None:
    """The host copy of a batch-wide draw: ``(box, ..., mixed)``, equal to every tensor row."""
    shared = params.shared_box
    n, box = 2 * len(size), "(y0, x0, y1, x1)" if len(size) == 2 else "(z0, y0, x0, z1, y1, x1)"
    want = f"({', '.join([box] * len(fields))}, mixed) of host ints and a bool"
    if (
        not isinstance(shared, tuple)
        or len(shared) != len(fields) + 1
        or not isinstance(shared[-1], bool)
        or any(
            not isinstance(box, tuple) or len(box) != n or not all(type(v) is int for v in box)
            for box in shared[:-1]
        )
    ):
        raise TypeError(f"{name}.shared_box: expected None or {want}, got {shared!r}")
    for field, box in zip(fields, shared[:-1], strict=True):
        check_boxes(torch.tensor([box]), f"{name}.shared_box", size)
        rows = getattr(params, field)
        same = (rows == torch.tensor(box, device=rows.device, dtype=rows.dtype)).all(1)

        def got(rows=rows, same=same, field=field) -> str:
            i = int((~same).nonzero()[0, 0])
            return f"{tuple(rows[i].tolist())} in row {i} of {name}.{field}"

        _require(
            same,
            rows,
            f"{name}.shared_box",
            f"the box of every row of {name}.{field} ({box}); after editing the tensors, set "
            "shared_box=None",
            got,
        )
    _require(
        params.apply == shared[-1],
        params.apply,
        f"{name}.shared_box",
        f"mixed = {shared[-1]} in every row of {name}.apply; after editing the tensors, set "
        "shared_box=None",
        lambda: f"apply = {params.apply.tolist()}",
    )
