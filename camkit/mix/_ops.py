"""SnapMix's two operations on given draws: the paste (images) and the label weights (CAMs).

`paste` needs no CAMs and `mix_weights` needs no images, so a training step may compute the
weights from the CAMs of the un-mixed batch (exact SnapMix) or from those of the mixed batch it
forwards anyway (no extra forward); `soft_targets` turns the weights into the soft labels.
``snapmix(images, labels, cams, ..., params=p)`` is ``paste`` + ``mix_weights`` + ``soft_targets``.
Images ``(B, C, H, W)`` and volumes ``(B, C, D, H, W)`` take the same code: boxes or cuboids,
bilinear or trilinear by rank.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from camkit._checks import check_choice
from camkit.mix._boxes import _box_masks, _box_sizes
from camkit.mix._shares import _box_cam_shares, _resize_tables

if TYPE_CHECKING:
    from camkit.mix._snapmix import SnapMixParams

CamSource = Literal["unmixed", "mixed"]
_MODES = {2: "bilinear", 3: "trilinear"}  # the resize of a box, by the images' spatial rank
_UPSAMPLE = {2: torch.ops.aten.upsample_bilinear2d, 3: torch.ops.aten.upsample_trilinear3d}


def _params_on(params: SnapMixParams, device: torch.device) -> SnapMixParams:
    """``params`` with its tensors on ``device`` (the host-side ``shared_box`` is kept)."""
    # non_blocking: a host-to-device copy from pageable memory is otherwise a stream sync
    moved = (t.to(device, non_blocking=True) for t in params[:4])
    return params._replace(**dict(zip(("perm", "box_a", "box_b", "apply"), moved, strict=True)))


def _paste_grid(
    box_a: torch.Tensor, box_b: torch.Tensor, size: tuple[int, ...], align_corners: bool
) -> torch.Tensor:
    """``grid_sample`` grid mapping each pixel (voxel) of box A onto box B (the resize geometry).

    Matches ``F.interpolate(crop_b, size=box_a_size, mode="bilinear"`` (``"trilinear"`` for
    volumes) ``, align_corners=align_corners)``, along each axis: source =
    ``b0 + (dst − a0)·(len_b − 1)/(len_a − 1)`` (``b0`` when ``len_a`` is 1) with
    ``align_corners``, else ``b0 + (dst − a0 + 0.5)·len_b/len_a − 0.5``; clamped to the crop.
    Returns ``(N, *size, rank)``, the coordinates in ``grid_sample``'s order (x first).
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

    rank, n = len(size), box_a.shape[0]
    coords = []
    for k, side in enumerate(size):
        g = axis(box_a[:, k], box_a[:, k + rank], box_b[:, k], box_b[:, k + rank], side)
        coords.append(g.view(n, *(side if a == k else 1 for a in range(rank))).expand(n, *size))
    return torch.stack(coords[::-1], dim=-1)


def paste(
    images: torch.Tensor, params: SnapMixParams, *, align_corners: bool = True
) -> torch.Tensor:
    """The mixed batch: box A of each image replaced by the resized box B of its partner.

    Convention:
        ``mixed[i] = images[i]`` outside ``box_a[i]``; inside, the bilinear resize
        (``F.interpolate(..., align_corners=align_corners)``; ``True``: the SnapMix authors'
        code) of ``images[perm[i]]``'s ``box_b[i]``; images with ``apply[i] == False`` are
        unchanged. CutMix's draws (one box tensor for both boxes) are copied, not resampled.
        Volumes ``(B, C, D, H, W)`` take cuboids ``(z0, y0, x0, z1, y1, x1)``, resized
        trilinearly (the same code with one more axis).

    With ``params.shared_box`` (one box pair drawn on the host) this is one batch copy and a slice
    write: only the partners' crops are gathered and resized, and a batch the coin leaves un-mixed
    is returned as ``images`` itself. Otherwise one ``grid_sample`` pastes every image's own box.

    Args:
        images: ``(B, C, H, W)`` float batch, or ``(B, C, D, H, W)`` volumes (not modified).
        params: the draws (checked by the caller).
        align_corners: the resize's geometry (see above).

    Returns:
        The mixed batch, of ``images``' shape and dtype.
    """
    b, c = images.shape[:2]
    spatial = tuple(images.shape[2:])
    rank = len(spatial)
    same_boxes = params.box_a is params.box_b  # CutMix's draws (one box tensor)
    params = _params_on(params, images.device)
    autograd = torch.is_grad_enabled() and images.requires_grad
    if params.shared_box is not None:
        box_a, box_b, mixed_any = params.shared_box
        if not mixed_any:
            return images
        mixed = images.clone()  # first: it may reuse memory the allocator holds, unfaulted
        # index_select on the crop view gathers only the partners' crops, not whole images
        crop_a, crop_b = (
            tuple(slice(r[k], r[k + rank]) for k in range(rank)) for r in (box_a, box_b)
        )
        crops = images[(slice(None), slice(None), *crop_b)].index_select(0, params.perm)
        box = mixed[(slice(None), slice(None), *crop_a)]
        size = [box_a[k + rank] - box_a[k] for k in range(rank)]
        if size == [box_b[k + rank] - box_b[k] for k in range(rank)]:
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
            _UPSAMPLE[rank].out(planes, size, align_corners, out=out)
        else:
            resized = F.interpolate(
                planes.float(), size=size, mode=_MODES[rank], align_corners=align_corners
            )
            box.copy_(resized.view(b, c, *size))
        return mixed
    inside = _box_masks(params.box_a, *spatial) & params.apply.view(-1, *(1,) * rank)
    if same_boxes:
        # CutMix's boxes: the partner's pixels copied as they are, no resampling
        return torch.where(inside[:, None], images.index_select(0, params.perm), images)
    grid = _paste_grid(params.box_a, params.box_b, spatial, align_corners)
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


def mix_weights(
    cams: torch.Tensor,
    params: SnapMixParams,
    size: tuple[int, ...],
    *,
    source: CamSource = "unmixed",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The label weights ``(ρ_a, ρ_b)`` of every image from CAMs and the draws.

    Convention:
        ``S`` is a CAM upsampled to the image size ``(H, W)``, shifted by its minimum and divided
        by its sum (uniform when constant); the box sums are computed at the CAMs' resolution.
        Volumes: ``(B, d, h, w)`` maps upsampled trilinearly to ``(D, H, W)``, summed over the
        cuboids, the fallback ``|A|/DHW`` (the same code with one more axis).

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
        cams: ``(B, h, w)`` (``"unmixed"``) or ``(B, 2, h, w)`` (``"mixed"``) float maps;
            volumes ``(B, d, h, w)`` or ``(B, 2, d, h, w)``.
        params: the draws of the batch.
        size: the image size ``(H, W)`` (volumes: ``(D, H, W)``).
        source: which CAMs ``cams`` are.

    Returns:
        ``(ρ_a, ρ_b)``, two ``(B,)`` float32 tensors on ``cams``' device.
    """
    check_choice(source, "source", ("unmixed", "mixed"))
    size = tuple(size)
    rank = len(size)
    want = rank + (1 if source == "unmixed" else 2)
    if cams.ndim != want:  # a shape, read on the host: no sync
        layout = "(B, h, w)" if rank == 2 else "(B, d, h, w)"
        if source == "mixed":
            layout = layout.replace("(B, ", "(B, 2, ")
        raise ValueError(
            f"cams: expected {want}-D maps {layout} for the {'×'.join(map(str, size))} "
            f"{'images' if rank == 2 else 'volumes'}, got shape {tuple(cams.shape)}"
        )
    params = _params_on(params, cams.device)
    tables = _resize_tables(tuple(cams.shape[-rank:]), size, cams.device)
    box_a = params.box_a
    area_a = _box_sizes(box_a) / math.prod(size)
    if source == "unmixed":
        maps = torch.cat([cams, cams[params.perm]])
        boxes = torch.cat([box_a, params.box_b])
    else:
        maps = cams.transpose(0, 1).flatten(0, 1)
        boxes = torch.cat([box_a, box_a])
    fallback = torch.cat([area_a, area_a]).float()
    shares = _box_cam_shares(maps, boxes, *size, tables=tables, fallback=fallback)
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
