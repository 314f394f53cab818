"""SnapMix's two operations on given draws: the paste (images) and the label weights (CAMs).

`paste` needs no CAMs and `mix_weights` needs no images, so a training step may compute the
weights from the CAMs of the un-mixed batch (exact SnapMix) or from those of the mixed batch it
forwards anyway (no extra forward); `soft_targets` turns the weights into the soft labels.
``snapmix(images, labels, cams, ..., params=p)`` is ``paste`` + ``mix_weights`` + ``soft_targets``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
import torch.nn.functional as F

from camkit._checks import check_choice

if TYPE_CHECKING:
    from camkit.mix._snapmix import SnapMixParams

CamSource = Literal["unmixed", "mixed"]
_SAFE_PEAK = 1e18  # a map's range above which its box sums are computed on the rescaled map


def _params_on(params: SnapMixParams, device: torch.device) -> SnapMixParams:
    """``params`` with its tensors on ``device`` (the host-side ``shared_box`` is kept)."""
    # non_blocking: a host-to-device copy from pageable memory is otherwise a stream sync
    moved = (t.to(device, non_blocking=True) for t in params[:4])
    return params._replace(**dict(zip(("perm", "box_a", "box_b", "apply"), moved, strict=True)))


def _box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, H, W)`` boolean masks, ``True`` inside each half-open ``(y0, x0, y1, x1)`` box."""
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_rows = (rows >= boxes[:, 0, None]) & (rows < boxes[:, 2, None])
    in_cols = (cols >= boxes[:, 1, None]) & (cols < boxes[:, 3, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def _paste_grid(
    box_a: torch.Tensor, box_b: torch.Tensor, height: int, width: int, align_corners: bool
) -> torch.Tensor:
    """``grid_sample`` grid mapping each pixel of box A onto box B (bilinear resize geometry).

    Matches ``F.interpolate(crop_b, size=box_a_size, mode="bilinear",
    align_corners=align_corners)``: source = ``b0 + (dst − a0)·(len_b − 1)/(len_a − 1)``
    (``b0`` when ``len_a`` is 1) with ``align_corners``, else
    ``b0 + (dst − a0 + 0.5)·len_b/len_a − 0.5``; clamped to the crop.
    """
    dtype = torch.float32

    def axis(a0, a1, b0, b1, size):
        pos = torch.arange(size, device=box_a.device, dtype=dtype)
        offset = pos - a0.to(dtype)[:, None]
        if align_corners:
            len_a, len_b = (a1 - a0)[:, None], (b1 - b0)[:, None]
            scale = (len_b - 1).clamp_min(0).to(dtype) / (len_a - 1).clamp_min(1).to(dtype)
            src = b0.to(dtype)[:, None] + offset * torch.where(len_a > 1, scale, 0.0)
        else:
            len_a = (a1 - a0).clamp_min(1).to(dtype)[:, None]
            len_b = (b1 - b0).clamp_min(1).to(dtype)[:, None]
            src = b0.to(dtype)[:, None] + (offset + 0.5) * len_b / len_a - 0.5
        src = torch.minimum(src.clamp_min(0.0), (b1 - 1).clamp_min(0).to(dtype)[:, None])
        src = torch.maximum(src, b0.to(dtype)[:, None])
        return (2.0 * src + 1.0) / size - 1.0

    gy = axis(box_a[:, 0], box_a[:, 2], box_b[:, 0], box_b[:, 2], height)
    gx = axis(box_a[:, 1], box_a[:, 3], box_b[:, 1], box_b[:, 3], width)
    n = box_a.shape[0]
    return torch.stack(
        [gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)], dim=-1
    )


def paste(
    images: torch.Tensor, params: SnapMixParams, *, align_corners: bool = True
) -> torch.Tensor:
    """The mixed batch: box A of each image replaced by the resized box B of its partner.

    Convention:
        ``mixed[i] = images[i]`` outside ``box_a[i]``; inside, the bilinear resize
        (``F.interpolate(..., align_corners=align_corners)``; ``True``: the SnapMix authors'
        code) of ``images[perm[i]]``'s ``box_b[i]``; images with ``apply[i] == False`` are
        unchanged. CutMix's draws (one box tensor for both boxes) are copied, not resampled.

    With ``params.shared_box`` (one box pair drawn on the host) this is one batch copy and a slice
    write: only the partners' crops are gathered and resized, and a batch the coin leaves un-mixed
    is returned as ``images`` itself. Otherwise one ``grid_sample`` pastes every image's own box.

    Args:
        images: ``(B, C, H, W)`` float batch (not modified).
        params: the draws (checked by the caller).
        align_corners: the resize's geometry (see above).

    Returns:
        ``(B, C, H, W)`` mixed batch, ``images``' dtype.
    """
    b, c, h, w = images.shape
    same_boxes = params.box_a is params.box_b  # CutMix's draws (one box tensor)
    params = _params_on(params, images.device)
    autograd = torch.is_grad_enabled() and images.requires_grad
    if params.shared_box is not None:
        (ya0, xa0, ya1, xa1), (yb0, xb0, yb1, xb1), mixed_any = params.shared_box
        if not mixed_any:
            return images
        mixed = images.clone()  # first: it may reuse memory the allocator holds, unfaulted
        # index_select on the crop view gathers only the partners' crops, not whole images
        crops = images[:, :, yb0:yb1, xb0:xb1].index_select(0, params.perm)
        box = mixed[:, :, ya0:ya1, xa0:xa1]
        size = [ya1 - ya0, xa1 - xa0]
        if size == [yb1 - yb0, xb1 - xb0]:
            box.copy_(crops)
            return mixed
        # each plane resized as a one-channel image: the same bilinear resize, and on the CPU the
        # one-channel kernel is several times faster than the (B, C) one (which copies its input
        # and output around the computation)
        planes = crops.flatten(0, 1)[:, None]
        direct = images.dtype == torch.float32 and images.is_contiguous() and not autograd
        if direct and not torch.compiler.is_compiling():  # dynamo refuses a strided out=
            # written straight into the box of the copy (B·C planes: a view of the box)
            out = box.view(b * c, 1, *size)
            torch.ops.aten.upsample_bilinear2d.out(planes, size, align_corners, out=out)
        else:
            resized = F.interpolate(
                planes.float(), size=size, mode="bilinear", align_corners=align_corners
            )
            box.copy_(resized.view(b, c, *size))
        return mixed
    inside = _box_masks(params.box_a, h, w) & params.apply[:, None, None]
    if same_boxes:
        # CutMix's boxes: the partner's pixels copied as they are, no resampling
        return torch.where(inside[:, None], images.index_select(0, params.perm), images)
    grid = _paste_grid(params.box_a, params.box_b, h, w, align_corners)
    pasted = F.grid_sample(
        images[params.perm].float(),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    ).to(images.dtype)
    if autograd:
        return torch.where(inside[:, None], pasted, images)
    # in place: one batch-sized allocation less (out= takes no part in autograd)
    return torch.where(inside[:, None], pasted, images, out=pasted)


class _ResizeTables(NamedTuple):
    """1-D linear resizing ``src → dst`` (``R``, ``(dst, src)``) in the forms the box sums need."""

    cumulative: torch.Tensor  # (dst + 1, src): row i is the sum of R's first i rows
    extremes: torch.Tensor  # the rows of R where a resized signal can reach its extrema
    column_sums: torch.Tensor  # (src,): the sum of all rows of R


@torch.compiler.disable  # host-side, cached: one opaque call under torch.compile
@functools.lru_cache(maxsize=64)
def _resize_tables(
    size: tuple[int, int], image_size: tuple[int, int], device: torch.device
) -> tuple[_ResizeTables, _ResizeTables]:
    """`_axis_tables` of both axes, resizing a ``size`` map to ``image_size``, on ``device``."""
    return tuple(_axis_tables(s, d, device) for s, d in zip(size, image_size, strict=True))


def _axis_tables(src: int, dst: int, device: torch.device) -> _ResizeTables:
    """Tables of ``R``, with ``R @ v == F.interpolate(v, dst, mode="linear", align_corners=False)``.

    Bilinear resizing is this along each axis. Between two knots a resized signal is linear in the
    output position, so over each run of rows sharing a lower knot its extrema lie on the run's
    first or last row: those rows are enough to find the exact minimum of a resized map without
    resizing it. Built once per size pair in float64 on the host, stored as float32.
    """
    eye = torch.eye(src, dtype=torch.float64)[None]
    matrix = F.interpolate(eye, size=dst, mode="linear", align_corners=False)[0].T
    lower = (matrix > 0).to(torch.int8).argmax(1)
    change = torch.ones(dst + 1, dtype=torch.bool)
    change[1:-1] = lower[1:] != lower[:-1]
    rows = torch.unique(torch.cat([change[:-1].nonzero(), change[1:].nonzero()])[:, 0])
    cumulative = torch.cat([matrix.new_zeros(1, src), matrix.cumsum(0)])
    tables = (cumulative, matrix[rows], matrix.sum(0))
    # non_blocking: a host-to-device copy from pageable memory is otherwise a stream sync
    return _ResizeTables(
        *(t.to(device=device, dtype=torch.float32, non_blocking=True) for t in tables)
    )


def _box_cam_shares(
    cams: torch.Tensor,
    box: torch.Tensor,
    height: int,
    width: int,
    tables: tuple[_ResizeTables, _ResizeTables] | None = None,
    fallback: torch.Tensor | None = None,
) -> torch.Tensor:
    """``ΣS(box)`` per map, ``S = normalize_cams(upsample_cams(cams, (H, W)), "distribution")``.

    A constant map (no mass after the shift) gives ``fallback`` (default: the box's area share,
    what the uniform distribution gives).

    Computed at the CAM's resolution: with ``U = Ry·M·Rxᵀ`` the upsampled map, a box sum is
    ``ay·M·ax − min(U)·area`` (``ay``, ``ax`` the summed rows of ``Ry``, ``Rx`` over the box) and
    ``min(U)`` is taken over the rows and columns where it can lie. Mathematically identical to
    upsampling and summing, at ``O(h·w)`` rather than ``O(H·W)`` per map; ``M`` is first shifted
    by its own minimum so that the subtraction does not cancel (a constant map becomes exactly 0,
    hence uniform).
    """
    _, h, w = cams.shape
    if tables is None:
        tables = _resize_tables((h, w), (height, width), cams.device)
    ry, rx = tables
    flat = cams.float().flatten(1)
    shifted = flat - flat.amin(1, keepdim=True)
    # the shares do not depend on the map's scale: a map so large that its weighted sums would
    # overflow float32 (1e36 gives inf, then NaN) is brought to [0, 1] first; every other map is
    # divided by 1, exactly
    peak = shifted.amax(1, keepdim=True)
    shifted = (shifted / torch.where(peak > _SAFE_PEAK, peak, 1.0)).view_as(cams)
    low = (ry.extremes @ shifted @ rx.extremes.T).flatten(1).amin(1)
    total = (shifted * (ry.column_sums[:, None] * rx.column_sums)).sum((1, 2))
    total = total - low * (height * width)
    ay = ry.cumulative[box[:, 2]] - ry.cumulative[box[:, 0]]
    ax = rx.cumulative[box[:, 3]] - rx.cumulative[box[:, 1]]
    area = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).float()
    inside = (ay[:, :, None] * shifted * ax[:, None, :]).sum((1, 2)) - low * area
    if fallback is None:
        fallback = area / (height * width)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), fallback)


def mix_weights(
    cams: torch.Tensor,
    params: SnapMixParams,
    size: tuple[int, int],
    *,
    source: CamSource = "unmixed",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The label weights ``(ρ_a, ρ_b)`` of every image from CAMs and the draws.

    Convention:
        ``S`` is a CAM upsampled to the image size ``(H, W)``, shifted by its minimum and divided
        by its sum (uniform when constant); the box sums are computed at the CAMs' resolution.

        - ``source="unmixed"`` (SnapMix): ``cams`` ``(B, h, w)`` are the CAMs of the un-mixed
          images for their own labels; ``ρ_a = 1 − ΣS_a(box A)`` on image ``a``'s CAM and
          ``ρ_b = ΣS_b(box B)`` on its partner's CAM (``cams[perm]``).
        - ``source="mixed"`` (no extra forward): ``cams`` ``(B, 2, h, w)`` are the CAMs of the
          *mixed* images, channel 0 for ``y_a`` and channel 1 for the partner's label
          ``y_perm``; both shares are read over box A: ``ρ_a = 1 − ΣS_{mixed, y_a}(box A)`` and
          ``ρ_b = ΣS_{mixed, y_perm}(box A)``.

        Un-mixed images (``apply == False``) get ``ρ_a = 1``, ``ρ_b = 0``. A constant map (e.g.
        zeros) has no distribution; as in the SnapMix authors' code (whose ``0/0`` is replaced
        by the area ratio) it gives the CutMix area ratios of the mixed image: ``ρ_a = 1 − |A|/HW``
        for the image's own map, ``ρ_b = |A|/HW`` for the partner's (box A's share: the part of
        the mixed image the partner's content covers, not box B's share of the partner).

    Args:
        cams: ``(B, h, w)`` (``"unmixed"``) or ``(B, 2, h, w)`` (``"mixed"``) float maps.
        params: the draws of the batch.
        size: the image size ``(H, W)``.
        source: which CAMs ``cams`` are.

    Returns:
        ``(ρ_a, ρ_b)``, two ``(B,)`` float32 tensors on ``cams``' device.
    """
    check_choice(source, "source", ("unmixed", "mixed"))
    height, width = size
    params = _params_on(params, cams.device)
    tables = _resize_tables(tuple(cams.shape[-2:]), (height, width), cams.device)
    box_a = params.box_a
    area_a = ((box_a[:, 2] - box_a[:, 0]) * (box_a[:, 3] - box_a[:, 1])) / (height * width)
    if source == "unmixed":
        maps = torch.cat([cams, cams[params.perm]])
        boxes = torch.cat([box_a, params.box_b])
    else:
        maps = cams.transpose(0, 1).flatten(0, 1)
        boxes = torch.cat([box_a, box_a])
    fallback = torch.cat([area_a, area_a]).float()
    shares = _box_cam_shares(maps, boxes, height, width, tables, fallback)
    share_a, share_b = shares.chunk(2)
    rho_a = torch.where(params.apply, 1.0 - share_a, 1.0)
    rho_b = torch.where(params.apply, share_b, 0.0)
    return rho_a, rho_b


def soft_targets(
    labels: torch.Tensor,
    perm: torch.Tensor,
    rho_a: torch.Tensor,
    rho_b: torch.Tensor,
    num_classes: int,
    *,
    apply: torch.Tensor | None = None,
    same_label_bonus: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``ρ_a·onehot(y) + ρ_b·onehot(y[perm])``, ``(B, num_classes)`` of ``dtype``.

    ``same_label_bonus=True`` (the released SnapMix code) sets both weights to ``ρ_a + ρ_b`` when
    the two labels agree and the image is mixed (``apply``), i.e. the target
    ``2(ρ_a + ρ_b)·onehot(y)``. ``labels`` are int64 class indices in range (checked by the
    caller).
    """
    perm = perm.to(labels.device, non_blocking=True)
    partner_labels = labels[perm]
    if same_label_bonus:
        both = rho_a + rho_b
        same = labels == partner_labels
        if apply is not None:
            same = same & apply.to(labels.device, non_blocking=True)
        rho_a = torch.where(same, both, rho_a)
        rho_b = torch.where(same, both, rho_b)
    # scatter_add rather than F.one_hot: one_hot checks the label range with a host sync on CUDA.
    soft = torch.zeros(labels.shape[0], num_classes, device=labels.device, dtype=dtype)
    soft.scatter_add_(1, labels[:, None], rho_a[:, None].to(dtype))
    soft.scatter_add_(1, partner_labels[:, None], rho_b[:, None].to(dtype))
    return soft
