"""SnapMix (Huang et al., AAAI 2021): CAM-weighted CutMix with soft labels, batched on the device.

Each image ``a`` receives, in a box A, the content of a box B of its partner ``b`` (a random
permutation of the batch), resized bilinearly. Its soft target is::

    y = ρ_a · onehot(y_a) + ρ_b · onehot(y_b),
    ρ_a = 1 − Σ_{box A} S_a,    ρ_b = Σ_{box B} S_b,

with ``S`` the class activation map of each un-mixed image for its own label, upsampled to the
image size and normalised to a spatial distribution (:func:`camkit.normalize_cams`,
``"distribution"``). ``ρ_a + ρ_b`` need not be 1. The loss ``ρ_a·CE(y_a) + ρ_b·CE(y_b)`` is
timm's ``SoftTargetCrossEntropy`` on these targets.

The random draws (:func:`sample_snapmix_params`) are separate from their application
(:func:`apply_snapmix`), as in kornia: both are pure tensor code without per-sample Python loops
or host synchronisation. Batch-mode draws are made on the host (nothing is read back from the
device), so the shared box is pasted as a slice; the label weights are computed at the CAMs'
resolution, never on maps upsampled to the image size.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from camkit._checks import check_labels, check_positive, check_probability, check_tensor

__all__ = [
    "SnapMix",
    "SnapMixParams",
    "apply_snapmix",
    "box_masks",
    "sample_beta",
    "sample_boxes",
    "sample_snapmix_params",
    "snapmix",
]

BoxMode = Literal["batch", "sample"]
LabelWeights = Literal["cam", "area"]

_GAMMA_PROPOSALS = 16


def _sample_gamma(
    shape: tuple[int, ...], alpha: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Gamma(alpha, 1) draws by Marsaglia–Tsang, vectorised with a fixed number of proposals.

    Each proposal is accepted with probability > 0.95 (for the boosted shape ≥ 1), so the chance
    that all ``_GAMMA_PROPOSALS`` fail is below 1e-20; such a draw would return the mode ``d``.
    """
    shape_boosted = alpha + 1.0 if alpha < 1.0 else alpha
    d = shape_boosted - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    x = torch.randn((*shape, _GAMMA_PROPOSALS), generator=generator, device=device)
    u = torch.rand((*shape, _GAMMA_PROPOSALS), generator=generator, device=device)
    v = (1.0 + c * x) ** 3
    safe_v = v.clamp_min(1e-30)
    accept = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * safe_v + d * torch.log(safe_v))
    first = accept.to(torch.uint8).argmax(-1, keepdim=True)
    value = torch.where(
        accept.any(-1), d * safe_v.gather(-1, first)[..., 0], torch.full(shape, d, device=device)
    )
    if alpha < 1.0:
        boost = torch.rand(shape, generator=generator, device=device).clamp_min(1e-30)
        value = value * boost ** (1.0 / alpha)
    return value


def sample_beta(
    alpha: float,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draws from the symmetric Beta(α, α) distribution, on the device, seeded by ``generator``.

    ``torch.distributions.Beta`` cannot take a generator; this draws two Gamma(α) variables
    (Marsaglia–Tsang) and returns ``g1 / (g1 + g2)``.

    Args:
        alpha: shape α > 0.
        shape: output shape.
        generator: random generator on ``device`` (``None``: the global one).
        device: output device (default: the generator's, else CPU).

    Returns:
        float32 tensor of ``shape`` with values in [0, 1].

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_beta(1.0, (3,), generator=g).shape
        torch.Size([3])
    """
    check_positive(alpha, "alpha")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    g1, g2 = _sample_gamma((2, *shape), float(alpha), generator, device)
    total = g1 + g2
    return torch.where(total > 0, g1 / total.clamp_min(1e-30), torch.full_like(total, 0.5))


def sample_boxes(
    lam: torch.Tensor,
    height: int,
    width: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CutMix boxes: side ratio ``sqrt(1 − λ)``, uniform centre, clipped to the image.

    Convention:
        Boxes are ``(y0, x0, y1, x1)`` int64 pixel indices, half-open (rows ``y0 … y1−1``).
        ``cut_h = floor(H·sqrt(1−λ))``, centre ``cy ~ U{0 … H−1}``,
        ``y0 = clip(cy − cut_h // 2, 0, H)``, ``y1 = clip(cy + cut_h // 2, 0, H)``; the same for x.
        A box may be empty (``y0 == y1`` or ``x0 == x1``).

    Args:
        lam: ``(N,)`` values in [0, 1].
        height: image height ``H``.
        width: image width ``W``.
        generator: random generator on ``lam``'s device.

    Returns:
        ``(N, 4)`` int64 boxes on ``lam``'s device.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_boxes(torch.tensor([0.0]), 8, 8, generator=g).shape
        torch.Size([1, 4])
    """
    check_tensor(lam, "lam", ndim=1, floating=True)
    ratio = torch.sqrt((1.0 - lam).clamp(0.0, 1.0))
    cut_h = torch.floor(height * ratio).long()
    cut_w = torch.floor(width * ratio).long()
    centre = torch.rand((lam.shape[0], 2), generator=generator, device=lam.device)
    cy = torch.floor(centre[:, 0] * height).long().clamp(max=height - 1)
    cx = torch.floor(centre[:, 1] * width).long().clamp(max=width - 1)
    y0 = (cy - cut_h // 2).clamp(0, height)
    y1 = (cy + cut_h // 2).clamp(0, height)
    x0 = (cx - cut_w // 2).clamp(0, width)
    x1 = (cx + cut_w // 2).clamp(0, width)
    return torch.stack([y0, x0, y1, x1], dim=1)


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, H, W)`` boolean masks, ``True`` inside each half-open ``(y0, x0, y1, x1)`` box.

    Examples:
        >>> box_masks(torch.tensor([[0, 0, 1, 2]]), 2, 2).tolist()
        [[[True, True], [False, False]]]
    """
    check_tensor(boxes, "boxes", shape=(None, 4), floating=False)
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_rows = (rows >= boxes[:, 0, None]) & (rows < boxes[:, 2, None])
    in_cols = (cols >= boxes[:, 1, None]) & (cols < boxes[:, 3, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


class SnapMixParams(NamedTuple):
    """The random draws of one SnapMix call (see :func:`sample_snapmix_params`).

    Attributes:
        perm: ``(B,)`` partner index of each image.
        box_a: ``(B, 4)`` box receiving the paste in each image, ``(y0, x0, y1, x1)``.
        box_b: ``(B, 4)`` box cut from the partner.
        apply: ``(B,)`` bool, whether the image is mixed (the ``prob`` coin, and both boxes
            non-empty).
    """

    perm: torch.Tensor
    box_a: torch.Tensor
    box_b: torch.Tensor
    apply: torch.Tensor


@torch.compiler.disable  # host-side draws: one opaque call under torch.compile
def sample_snapmix_params(
    batch_size: int,
    height: int,
    width: int,
    *,
    alpha: float = 1.0,
    prob: float = 1.0,
    box_mode: BoxMode = "batch",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> SnapMixParams:
    """Draw SnapMix's partner permutation, boxes and coin.

    Convention:
        ``λ_a, λ_b ~ Beta(α, α)`` independently give the sizes of box A (in the image) and box B
        (in its partner), each placed by :func:`sample_boxes`. ``box_mode="batch"`` draws one box
        pair and one coin for the whole batch (the released SnapMix code); ``"sample"`` draws
        them per image. An image with an empty box A or B is not mixed. Self-pairs are allowed.

    Args:
        batch_size: ``B`` ≥ 1.
        height: image height.
        width: image width.
        alpha: Beta parameter α > 0.
        prob: probability that a batch (``"batch"``) or an image (``"sample"``) is mixed.
        box_mode: ``"batch"`` or ``"sample"``.
        generator: random generator on ``device``.
        device: where to draw (default: the generator's device, else CPU).

    Returns:
        :class:`SnapMixParams`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    check_positive(alpha, "alpha")
    check_probability(prob, "prob")
    if box_mode not in ("batch", "sample"):
        raise ValueError(f"box_mode: expected 'batch' or 'sample', got {box_mode!r}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    draws = 1 if box_mode == "batch" else batch_size
    perm = torch.randperm(batch_size, generator=generator, device=device)
    lam = sample_beta(alpha, (2, draws), generator=generator, device=device)
    boxes = sample_boxes(lam.flatten(), height, width, generator=generator).view(2, draws, 4)
    box_a, box_b = boxes[0].expand(batch_size, 4), boxes[1].expand(batch_size, 4)
    coin = (torch.rand(draws, generator=generator, device=device) < prob).expand(batch_size)
    area_a = (box_a[:, 2] - box_a[:, 0]) * (box_a[:, 3] - box_a[:, 1])
    area_b = (box_b[:, 2] - box_b[:, 0]) * (box_b[:, 3] - box_b[:, 1])
    apply = coin & (area_a > 0) & (area_b > 0)
    return SnapMixParams(perm=perm, box_a=box_a.contiguous(), box_b=box_b.contiguous(), apply=apply)


def _paste_grid(box_a: torch.Tensor, box_b: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``grid_sample`` grid mapping each pixel of box A onto box B (bilinear resize geometry).

    Matches ``F.interpolate(crop_b, size=box_a_size, mode="bilinear", align_corners=False)``:
    source = ``b0 + (dst − a0 + 0.5)·len_b/len_a − 0.5``, clamped to the crop.
    """
    dtype = torch.float32

    def axis(a0, a1, b0, b1, size):
        pos = torch.arange(size, device=box_a.device, dtype=dtype)
        len_a = (a1 - a0).clamp_min(1).to(dtype)[:, None]
        len_b = (b1 - b0).clamp_min(1).to(dtype)[:, None]
        src = b0.to(dtype)[:, None] + (pos - a0.to(dtype)[:, None] + 0.5) * len_b / len_a - 0.5
        src = torch.minimum(src.clamp_min(0.0), (b1 - 1).clamp_min(0).to(dtype)[:, None])
        src = torch.maximum(src, b0.to(dtype)[:, None])
        return (2.0 * src + 1.0) / size - 1.0

    gy = axis(box_a[:, 0], box_a[:, 2], box_b[:, 0], box_b[:, 2], height)
    gx = axis(box_a[:, 1], box_a[:, 3], box_b[:, 1], box_b[:, 3], width)
    n = box_a.shape[0]
    return torch.stack(
        [gx[:, None, :].expand(n, height, width), gy[:, :, None].expand(n, height, width)], dim=-1
    )


class _ResizeTables(NamedTuple):
    """1-D linear resizing ``src → dst`` (``R``, ``(dst, src)``) in the forms the box sums need."""

    cumulative: torch.Tensor  # (dst + 1, src): row i is the sum of R's first i rows
    extremes: torch.Tensor  # the rows of R where a resized signal can reach its extrema
    column_sums: torch.Tensor  # (src,): the sum of all rows of R


@torch.compiler.disable
@functools.lru_cache(maxsize=64)
def _resize_tables(src: int, dst: int, device: torch.device) -> _ResizeTables:
    """Tables of ``R``, with ``R @ v == F.interpolate(v, dst, mode="linear", align_corners=False)``.

    Bilinear resizing is this along each axis. Between two knots a resized signal is linear in the
    output position, so over each run of rows sharing a lower knot its extrema lie on the run's
    first or last row: those rows are enough to find the exact minimum of a resized map without
    resizing it.
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


def _box_cam_shares(cams: torch.Tensor, box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``ΣS(box)`` per map, ``S = normalize_cams(upsample_cams(cams, (H, W)), "distribution")``.

    Computed at the CAM's resolution: with ``U = Ry·M·Rxᵀ`` the upsampled map, a box sum is
    ``ay·M·ax − min(U)·area`` (``ay``, ``ax`` the summed rows of ``Ry``, ``Rx`` over the box) and
    ``min(U)`` is taken over the rows and columns where it can lie. Mathematically identical to
    upsampling and summing, at ``O(h·w)`` rather than ``O(H·W)`` per map; ``M`` is first shifted
    by its own minimum so that the subtraction does not cancel (a constant map becomes exactly 0,
    hence uniform).
    """
    _, h, w = cams.shape
    ry = _resize_tables(h, height, cams.device)
    rx = _resize_tables(w, width, cams.device)
    flat = cams.float().flatten(1)
    shifted = (flat - flat.amin(1, keepdim=True)).view_as(cams)
    low = (ry.extremes @ shifted @ rx.extremes.T).flatten(1).amin(1)
    total = (shifted * (ry.column_sums[:, None] * rx.column_sums)).sum((1, 2))
    total = total - low * (height * width)
    ay = ry.cumulative[box[:, 2]] - ry.cumulative[box[:, 0]]
    ax = rx.cumulative[box[:, 3]] - rx.cumulative[box[:, 1]]
    area = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).float()
    inside = (ay[:, :, None] * shifted * ax[:, None, :]).sum((1, 2)) - low * area
    uniform = area / (height * width)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), uniform)


@torch.compiler.disable  # reads host tensors back as Python ints
def _host_box(params: SnapMixParams) -> tuple[list[int], list[int], bool] | None:
    """The shared boxes and coin as Python ints when the draws live on the host, else ``None``."""
    if any(t.device.type != "cpu" for t in (params.box_a, params.box_b, params.apply)):
        return None
    if not (
        bool((params.box_a == params.box_a[:1]).all())
        and bool((params.box_b == params.box_b[:1]).all())
    ):
        return None
    if not bool((params.apply == params.apply[:1]).all()):
        return None
    return params.box_a[0].tolist(), params.box_b[0].tolist(), bool(params.apply[0])


def apply_snapmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor,
    params: SnapMixParams,
    num_classes: int,
    *,
    label_weights: LabelWeights = "cam",
    same_label_bonus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with given SnapMix draws.

    Convention:
        ``mixed[i] = images[i]`` outside ``box_a[i]``; inside, the bilinear resize of
        ``images[perm[i]]``'s ``box_b[i]``. ``S = normalize_cams(upsample_cams(cams, (H, W)),
        "distribution")``; ``ρ_a = 1 − ΣS_i(box_a)``, ``ρ_b = ΣS_{perm[i]}(box_b)``; target
        ``ρ_a·onehot(y_i) + ρ_b·onehot(y_{perm[i]})``. Un-mixed images keep ``onehot(y_i)``.
        ``label_weights="area"`` uses uniform maps (box areas, CutMix-like); a constant CAM gives
        the same area ratios. ``same_label_bonus=True`` (the released SnapMix code) sets both
        weights to ``ρ_a + ρ_b`` when the two labels agree, i.e. target ``2(ρ_a + ρ_b)·onehot(y)``.

    The box sums are computed at the CAMs' resolution (the upsampled maps are never formed).
    When the draws are on the host and shared by the batch (``box_mode="batch"`` drawn with a
    CPU generator, what :class:`SnapMix` does by default) the paste is one resize of the partner
    crops into a slice of a copy of the batch, and a batch the coin leaves un-mixed is returned
    as ``images`` itself; otherwise one ``grid_sample`` pastes every image's own box.

    Args:
        images: ``(B, C, H, W)`` float batch (not modified).
        labels: ``(B,)`` int64 class indices in ``[0, num_classes)``.
        cams: ``(B, h, w)`` CAMs of the un-mixed images for their labels, any resolution.
        params: draws from :func:`sample_snapmix_params` for this batch.
        num_classes: ``K``.
        label_weights: ``"cam"`` (SnapMix) or ``"area"``.
        same_label_bonus: reproduce the released code's same-label weighting.

    Returns:
        ``(mixed (B, C, H, W), soft_targets (B, K))``.

    Raises:
        ValueError: a label outside ``[0, num_classes)`` (on an accelerator the check is queued
            with ``torch._assert_async`` and fails at the next synchronisation), or an argument
            of the wrong shape or value.
        TypeError: an argument of the wrong dtype.
    """
    check_tensor(images, "images", ndim=4, floating=True)
    b, _, h, w = images.shape
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected an int >= 1, got {num_classes!r}")
    # checked at once on the CPU, queued with torch._assert_async (no host sync) on the device
    check_labels(labels, "labels", num_classes, batch=b)
    labels = labels.long()  # uint8/int32 labels are valid; the scatters need int64
    check_tensor(cams, "cams", ndim=3, floating=True)
    if cams.shape[0] != b:
        raise ValueError(f"cams: expected {b} maps (one per image), got shape {tuple(cams.shape)}")
    if label_weights not in ("cam", "area"):
        raise ValueError(f"label_weights: expected 'cam' or 'area', got {label_weights!r}")
    for name in ("perm", "apply"):
        check_tensor(getattr(params, name), f"params.{name}", shape=(b,))
    check_tensor(params.box_a, "params.box_a", shape=(b, 4), floating=False)
    check_tensor(params.box_b, "params.box_b", shape=(b, 4), floating=False)

    host = _host_box(params)
    # non_blocking: a host-to-device copy from pageable memory is otherwise a stream sync
    perm, apply, box_a, box_b = (
        t.to(images.device, non_blocking=True)
        for t in (params.perm, params.apply, params.box_a, params.box_b)
    )
    if host is None:
        partners = images[perm]
        grid = _paste_grid(box_a, box_b, h, w)
        pasted = F.grid_sample(
            partners.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        ).to(images.dtype)
        mask_a = box_masks(box_a, h, w) & apply[:, None, None]
        mixed = torch.where(mask_a[:, None], pasted, images)
    elif not host[2]:
        mixed = images
    else:
        (ya0, xa0, ya1, xa1), (yb0, xb0, yb1, xb1), _ = host
        crops = images[:, :, yb0:yb1, xb0:xb1][perm]
        if (ya1 - ya0, xa1 - xa0) != (yb1 - yb0, xb1 - xb0):
            crops = F.interpolate(
                crops.float(), size=(ya1 - ya0, xa1 - xa0), mode="bilinear", align_corners=False
            ).to(images.dtype)
        mixed = images.clone()
        mixed[:, :, ya0:ya1, xa0:xa1] = crops

    maps = torch.zeros_like(cams, dtype=torch.float32) if label_weights == "area" else cams
    share_a, share_b = _box_cam_shares(
        torch.cat([maps, maps[perm]]), torch.cat([box_a, box_b]), h, w
    ).chunk(2)
    rho_a = torch.where(apply, 1.0 - share_a, 1.0)
    rho_b = torch.where(apply, share_b, 0.0)
    if same_label_bonus:
        both = rho_a + rho_b
        same = (labels == labels[perm]) & apply
        rho_a = torch.where(same, both, rho_a)
        rho_b = torch.where(same, both, rho_b)
    target_dtype = torch.promote_types(images.dtype, torch.float32)
    # scatter_add rather than F.one_hot: one_hot checks the label range with a host sync on CUDA.
    soft = torch.zeros(b, num_classes, device=images.device, dtype=target_dtype)
    soft.scatter_add_(1, labels[:, None], rho_a[:, None].to(target_dtype))
    soft.scatter_add_(1, labels[perm][:, None], rho_b[:, None].to(target_dtype))
    return mixed, soft


def snapmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    cams: torch.Tensor,
    num_classes: int,
    *,
    alpha: float = 1.0,
    prob: float = 1.0,
    box_mode: BoxMode = "batch",
    label_weights: LabelWeights = "cam",
    same_label_bonus: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SnapMix a batch: draw the parameters and apply them (functional form of :class:`SnapMix`).

    See :func:`sample_snapmix_params` and :func:`apply_snapmix` for the conventions. The draws are
    made where ``generator`` lives; without one, on the host for ``box_mode="batch"`` (the shared
    box is then known as Python ints, without a device sync, and pasted as a slice) and on the
    images' device for ``"sample"``.

    Examples:
        >>> images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
        >>> mixed, soft = snapmix(images, labels, torch.rand(4, 4, 4), num_classes=2)
        >>> mixed.shape, soft.shape
        (torch.Size([4, 3, 32, 32]), torch.Size([4, 2]))
    """
    check_tensor(images, "images", ndim=4, floating=True)
    b, _, h, w = images.shape
    if generator is not None:
        device = generator.device
    else:
        device = torch.device("cpu") if box_mode == "batch" else images.device
    params = sample_snapmix_params(
        b,
        h,
        w,
        alpha=alpha,
        prob=prob,
        box_mode=box_mode,
        generator=generator,
        device=device,
    )
    return apply_snapmix(
        images,
        labels,
        cams,
        params,
        num_classes,
        label_weights=label_weights,
        same_label_bonus=same_label_bonus,
    )


class SnapMix(nn.Module):
    """SnapMix as a batch transform for the training step (like timm's ``Mixup``).

    It needs the CAMs of the un-mixed batch for its labels, so it runs on the device inside the
    training step, not in a DataLoader worker: get them from
    :meth:`camkit.CAMExtractor.forward_frozen` (no autograd, model state untouched), mix, then
    train on ``mixed`` with timm's ``SoftTargetCrossEntropy`` and ``soft``. Nothing is read back
    from the device: with ``box_mode="batch"`` the draws are made on the host (a CPU generator),
    with ``"sample"`` on the images' device.

    Convention:
        See :func:`apply_snapmix`: ``soft = ρ_a·onehot(y) + ρ_b·onehot(y[perm])``,
        ``ρ_a = 1 − ΣS_a(box A)``, ``ρ_b = ΣS_b(box B)``, ``S`` the min-shifted, sum-normalised
        CAM upsampled to the image size. Box sizes from ``Beta(α, α)``.

    Args:
        num_classes: number of classes ``K``.
        alpha: Beta parameter α (paper: 1.0).
        prob: probability of mixing (paper: 1.0).
        box_mode: ``"batch"`` (one box pair per batch, the released code) or ``"sample"``.
        label_weights: ``"cam"`` (SnapMix) or ``"area"`` (CutMix-style area ratios).
        same_label_bonus: the released code's weighting of same-label pairs (off by default).
        generator: random generator for reproducible draws: a CPU generator for
            ``box_mode="batch"`` (a generator on the images' device also works, but the paste
            then takes the general ``grid_sample`` path), one on the images' device for
            ``"sample"``.

    Examples:
        >>> import timm, torch
        >>> from camkit import CAMExtractor, SnapMix
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=2)
        >>> ext, mix = CAMExtractor(model), SnapMix(num_classes=2)
        >>> images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 1, 0])
        >>> cams = ext.forward_frozen(images, labels).cams
        >>> mixed, soft = mix(images, labels, cams)
        >>> soft.shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        num_classes: int,
        alpha: float = 1.0,
        prob: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        box_mode: BoxMode = "batch",
        label_weights: LabelWeights = "cam",
        same_label_bonus: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected an int >= 1, got {num_classes!r}")
        check_positive(alpha, "alpha")
        check_probability(prob, "prob")
        if box_mode not in ("batch", "sample"):
            raise ValueError(f"box_mode: expected 'batch' or 'sample', got {box_mode!r}")
        if label_weights not in ("cam", "area"):
            raise ValueError(f"label_weights: expected 'cam' or 'area', got {label_weights!r}")
        self.num_classes = num_classes
        self.alpha = float(alpha)
        self.prob = float(prob)
        self.generator = generator
        self.box_mode: BoxMode = box_mode
        self.label_weights: LabelWeights = label_weights
        self.same_label_bonus = bool(same_label_bonus)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, cams: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix ``images`` (B, C, H, W) with labels (B,) using CAMs (B, h, w); see the class doc."""
        return snapmix(
            images,
            labels,
            cams,
            self.num_classes,
            alpha=self.alpha,
            prob=self.prob,
            box_mode=self.box_mode,
            label_weights=self.label_weights,
            same_label_bonus=self.same_label_bonus,
            generator=self.generator,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, alpha={self.alpha}, prob={self.prob}, "
            f"box_mode={self.box_mode!r}, label_weights={self.label_weights!r}, "
            f"same_label_bonus={self.same_label_bonus}"
        )
