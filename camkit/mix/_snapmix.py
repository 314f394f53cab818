"""SnapMix: its draws (`SnapMixParams`), its settings, the function and the Module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from camkit._checks import check_choice, check_int, check_positive, check_probability
from camkit._config import config_setting
from camkit.mix._base import Mix
from camkit.mix._boxes import _check_box_params
from camkit.mix._ops import CamSource, mix_weights, paste, soft_targets
from camkit.mix._random import (
    _sample_beta_device,
    _sample_beta_host,
    _sample_boxes,
    _sample_cuboids,
)

BoxMode = Literal["batch", "sample"]
LabelWeights = Literal["cam", "area"]
Box = tuple[int, ...]  # (y0, x0, y1, x1); volumes (z0, y0, x0, z1, y1, x1)


class SnapMixParams(NamedTuple):
    """The random draws of one SnapMix call ([`SnapMix.sample`][camkit.Mix.sample]).

    Attributes:
        perm: ``(B,)`` partner index of each image.
        box_a: ``(B, 4)`` box receiving the paste in each image, ``(y0, x0, y1, x1)``, half-open
            (volumes: ``(B, 6)`` cuboids ``(z0, y0, x0, z1, y1, x1)``).
        box_b: ``(B, 4)`` box cut from the partner (volumes: ``(B, 6)``).
        apply: ``(B,)`` bool, whether the image is mixed (the ``prob`` coin, and both boxes
            non-empty).
        shared_box: ``(box_a, box_b, mixed)`` as host ints when the whole batch shares one box
            pair and coin drawn on the host (``box_mode="batch"`` with a CPU generator or none),
            recorded at sampling; ``None`` otherwise. With it the paste is a slice write and
            nothing is read back from the tensors. It must agree with them: when editing the
            tensors by hand, set it to ``None`` (``params._replace(apply=..., shared_box=None)``).
    """

    perm: torch.Tensor
    box_a: torch.Tensor
    box_b: torch.Tensor
    apply: torch.Tensor
    shared_box: tuple[Box, Box, bool] | None = None


@dataclass(frozen=True)
class _SnapMixConfig:
    """SnapMix's settings, validated once when built (by `SnapMix` or `snapmix`)."""

    num_classes: int
    alpha: float = 1.0
    prob: float = 1.0
    box_mode: BoxMode = "batch"
    label_weights: LabelWeights = "cam"
    same_label_bonus: bool = False
    cam_source: CamSource = "unmixed"
    align_corners: bool = True

    def __post_init__(self) -> None:
        check_int(self.num_classes, "num_classes", minimum=1)
        set_ = object.__setattr__
        set_(self, "alpha", check_positive(self.alpha, "alpha"))
        set_(self, "prob", check_probability(self.prob, "prob"))
        check_choice(self.box_mode, "box_mode", ("batch", "sample"))
        check_choice(self.label_weights, "label_weights", ("cam", "area"))
        set_(self, "same_label_bonus", bool(self.same_label_bonus))
        check_choice(self.cam_source, "cam_source", ("unmixed", "mixed"))
        if not isinstance(self.align_corners, bool):
            raise TypeError(
                f"align_corners: expected True or False, got {type(self.align_corners).__name__}"
            )


@torch.compiler.disable  # host-side draws (numpy, Python ints): one opaque call under compile
def _sample_snapmix_params(
    config: _SnapMixConfig,
    batch_size: int,
    size: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
) -> SnapMixParams:
    """Draw the partner permutation, the boxes and the coin on ``device`` (see `SnapMix.sample`);
    ``size`` ``(H, W)``, or ``(D, H, W)`` for cuboids."""
    draws = 1 if config.box_mode == "batch" else batch_size
    host = device.type == "cpu"
    rank = len(size)
    perm = torch.randperm(batch_size, generator=generator, device=device)
    if host:
        lam = _sample_beta_host(config.alpha, (2 * draws,), generator)
    else:
        lam = _sample_beta_device(config.alpha, (2 * draws,), generator, device)
    if rank == 2:
        boxes = _sample_boxes(lam, *size, generator)
    else:  # the authors' far edge (c + cut // 2) on each axis, as their 2-D rand_bbox
        boxes = _sample_cuboids(lam, size, generator, far_edge_up=False)
    boxes = boxes.view(2, draws, 2 * rank)
    coin = torch.rand(draws, generator=generator, device=device) < config.prob
    apply = coin & (boxes[..., rank:] > boxes[..., :rank]).all(-1).all(0)  # both non-empty
    shared = None
    if host and config.box_mode == "batch":  # CPU tensors: reading them is no device sync
        box_a, box_b = (tuple(boxes[k, 0].tolist()) for k in (0, 1))
        shared = (box_a, box_b, bool(apply[0]))
    return SnapMixParams(
        perm=perm,
        box_a=boxes[0].expand(batch_size, 2 * rank).contiguous(),
        box_b=boxes[1].expand(batch_size, 2 * rank).contiguous(),
        apply=apply.expand(batch_size).contiguous(),
        shared_box=shared,
    )


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
    align_corners: bool = True,
    generator: torch.Generator | None = None,
    params: SnapMixParams | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SnapMix a batch: the functional form of [`SnapMix`][camkit.SnapMix] (same arguments).

    Without ``params`` the draws are made where ``generator`` lives; without one, on the host for
    ``box_mode="batch"`` (the shared box is then pasted as a slice) and on the images' device for
    ``"sample"``. With ``params`` (from [`SnapMix.sample`][camkit.Mix.sample]) those draws
    are replayed and ``alpha``, ``prob``, ``box_mode`` and ``generator`` are not used.

    Returns:
        ``(mixed (B, C, H, W), soft_targets (B, K))`` (volumes: ``mixed`` ``(B, C, D, H, W)``).

    Examples:
        >>> images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
        >>> mixed, soft = snapmix(images, labels, torch.rand(4, 4, 4), num_classes=2)
        >>> mixed.shape, soft.shape
        (torch.Size([4, 3, 32, 32]), torch.Size([4, 2]))
    """
    mix = SnapMix(
        num_classes,
        alpha,
        prob,
        generator,
        box_mode=box_mode,
        label_weights=label_weights,
        same_label_bonus=same_label_bonus,
        align_corners=align_corners,
    )
    return mix(images, labels, cams, params)


class SnapMix(Mix):
    """SnapMix (Huang et al., AAAI 2021) as a batch transform for the training step.

    Each image ``a`` receives, in a box A, the content of a box B of its partner ``b`` (a random
    permutation of the batch), resized bilinearly, and the soft target
    ``ρ_a·onehot(y_a) + ρ_b·onehot(y_b)`` weighted by the CAMs of the un-mixed images. It needs
    those CAMs, so it runs inside the training step (not in a DataLoader worker): get them from
    [`CAMExtractor.forward_frozen`][camkit.CAMExtractor.forward_frozen], mix, then train on
    ``mixed`` with timm's ``SoftTargetCrossEntropy`` and ``soft``. Nothing is read back from the
    device: with ``box_mode="batch"`` the draws are made on the host (a CPU generator), with
    ``"sample"`` on the images' device. [`sample`][camkit.Mix.sample] draws a
    [`SnapMixParams`][camkit.SnapMixParams] that ``forward`` (or `snapmix`) replays exactly.

    Convention:
        ``mixed[i] = images[i]`` outside ``box_a[i]``; inside, the bilinear resize
        (``align_corners=True``, as the SnapMix authors' code) of ``images[perm[i]]``'s
        ``box_b[i]``.
        ``S = normalize_cams(upsample_cams(cams, (H, W)), "distribution")`` (computed at the CAMs'
        resolution); ``ρ_a = 1 − ΣS_i(box_a)``, ``ρ_b = ΣS_{perm[i]}(box_b)``; ``ρ_a + ρ_b``
        need not be 1. Un-mixed images keep ``onehot(y_i)``. Box sizes: ``λ ~ Beta(α, α)``, side
        ratio ``sqrt(1 − λ)``, uniform centre, ``cut // 2`` on each side of it, clipped to the
        image (the CutMix authors' and the SnapMix authors' ``rand_bbox``); ``box_mode="batch"``
        draws one box pair and one coin for the batch (the released code), ``"sample"`` one per
        image; an image with an empty box is not mixed; self-pairs are allowed.
        A constant CAM falls back, as the authors' code, to the area ratios of the mixed image:
        ``ρ_a = 1 − |A|/HW``, ``ρ_b = |A|/HW`` (box A's share for the partner too);
        ``label_weights="area"`` gives these for every image. ``same_label_bonus=True``
        (the released code) sets both weights to ``ρ_a + ρ_b`` when the two labels agree.

    Args:
        num_classes: number of classes ``K``.
        alpha: Beta parameter α > 0 (paper: 1.0).
        prob: probability that a batch (``"batch"``) or an image (``"sample"``) is mixed.
        generator: random generator for reproducible draws: a CPU generator for
            ``box_mode="batch"`` (one on the images' device also works, but the paste then takes
            the general ``grid_sample`` path), one on the images' device for ``"sample"``.
        box_mode: ``"batch"`` or ``"sample"``.
        label_weights: ``"cam"`` (SnapMix) or ``"area"``.
        same_label_bonus: the released code's weighting of same-label pairs (off by default).
        align_corners: the geometry of the bilinear resize of box B into box A: ``True`` (the
            default) as the SnapMix authors' code (``F.interpolate(..., align_corners=True)``:
            the corner pixels of box B land on the corner pixels of box A); ``False``: the
            half-pixel geometry camkit used before (pixel centres scaled, edges clamped), with
            which the committed SnapMix results were measured.
        cam_source: ``"unmixed"`` (SnapMix: the CAMs of the un-mixed images, one extra
            no-grad forward) or ``"mixed"`` (no extra forward: both weights read over box A from
            the CAMs of the *mixed* image, which the training forward computes anyway, as
            TransMix does with attention maps). A ``"mixed"`` SnapMix is used by
            [`TrainStep`][camkit.TrainStep] (or by [`mix_images`][camkit.Mix.mix_images]
            then [`targets`][camkit.Mix.targets]); its `forward` refuses.

    ``sample(B, H, W)`` draws ``λ_a, λ_b ~ Beta(α, α)`` independently for the sizes of box A (in
    the image) and box B (in its partner); draws on the host take their Beta variates from numpy,
    seeded from the generator, and record a batch-wide box as host ints; draws on an accelerator
    stay in torch. ``targets(labels, cams, params, size)`` takes the ``(B, h, w)`` CAMs of the
    un-mixed images (``cam_source="unmixed"``) or the ``(B, 2, h, w)`` CAMs of the mixed images
    for their two labels, ``y`` and ``y[params.perm]`` (``"mixed"``).

    Volumes ``(B, C, D, H, W)`` take the same code with one more axis
    (``sample(B, H, W, depth=D)``): cuboids ``(z0, y0, x0, z1, y1, x1)`` of side ratio
    ``(1 − λ)^(1/3)`` with the authors' ``cut // 2`` on each side of the centre on every axis,
    box B resized trilinearly into box A (the same ``align_corners``), the weights summed over
    the cuboids from the ``(B, d, h, w)`` CAMs upsampled trilinearly, a constant CAM falling back
    to the cuboid's share ``|A|/DHW``. A depth-1 volume with boxes spanning its one slice gives
    the image's result.

    Shape:
        - images: ``(B, C, H, W)`` float (not modified), or ``(B, C, D, H, W)`` volumes.
        - labels: ``(B,)`` integer class indices in ``[0, K)``.
        - cams: ``(B, h, w)`` CAMs of the un-mixed images for their labels, any resolution
          (volumes: ``(B, d, h, w)``).
        - Output: ``mixed`` of ``images``' shape and dtype (``images`` itself when the
          batch's coin leaves it un-mixed) and ``soft`` ``(B, K)``, float32 or wider.

    Raises:
        ValueError: a label outside ``[0, K)`` (on an accelerator the check is queued with
            ``torch._assert_async`` and fails at the next synchronisation), or an argument of the
            wrong shape or value.
        TypeError: an argument of the wrong type or dtype.

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
        >>> params = mix.sample(4, 64, 64)  # drawn once, replayed exactly
        >>> torch.equal(mix(images, labels, cams, params)[0], mix(images, labels, cams, params)[0])
        True
    """

    volumes = True
    num_classes = config_setting("num_classes")
    alpha = config_setting("alpha")
    prob = config_setting("prob")
    box_mode = config_setting("box_mode")
    label_weights = config_setting("label_weights")
    same_label_bonus = config_setting("same_label_bonus")
    cam_source = config_setting("cam_source")
    align_corners = config_setting("align_corners")

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
        cam_source: CamSource = "unmixed",
        align_corners: bool = True,
    ) -> None:
        config = _SnapMixConfig(
            num_classes,
            alpha,
            prob,
            box_mode,
            label_weights,
            same_label_bonus,
            cam_source,
            align_corners,
        )
        super().__init__(config, generator)

    @property
    def needs_cams(self) -> CamSource:  # type: ignore[override]
        """``cam_source``: the CAMs of the un-mixed batch, or of the mixed one."""
        return self.config.cam_source

    @property
    def _host_draws(self) -> bool:
        return self.config.box_mode == "batch"

    def _draw(self, batch_size, height, width, cams, device, generator, depth=None):
        size = (height, width) if depth is None else (depth, height, width)
        return _sample_snapmix_params(self.config, batch_size, size, generator, device)

    def _apply(self, images: torch.Tensor, params: SnapMixParams) -> torch.Tensor:
        return paste(images, params, align_corners=self.config.align_corners)

    def _weigh(self, labels, cams, params, size, dtype) -> torch.Tensor:
        c = self.config
        maps = torch.zeros_like(cams, dtype=torch.float32) if c.label_weights == "area" else cams
        rho_a, rho_b = mix_weights(maps, params, size, source=c.cam_source)
        return soft_targets(
            labels.to(cams.device),
            params.perm,
            rho_a,
            rho_b,
            c.num_classes,
            apply=params.apply,
            same_label_bonus=c.same_label_bonus,
            dtype=dtype,
        )

    def check_params(self, params: object, batch_size: int, size: tuple[int, ...]) -> None:
        _check_box_params(params, batch_size, SnapMixParams, size, nonempty=True)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"num_classes={c.num_classes}, alpha={c.alpha}, prob={c.prob}, "
            f"box_mode={c.box_mode!r}, label_weights={c.label_weights!r}, "
            f"same_label_bonus={c.same_label_bonus}, cam_source={c.cam_source!r}, "
            f"align_corners={c.align_corners}"
        )
