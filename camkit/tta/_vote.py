"""`CAMMaskingTTA`: the batched CAM-masking vote with exact early exit, and its result."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from camkit._checks import (
    check_choice,
    check_input_rank,
    check_int,
    check_probability,
    check_tensor,
    flagged_rows,
)
from camkit._config import config_setting
from camkit.cam import CAMExtractor, frozen_state
from camkit.cam._contract import model_name
from camkit.tta._masking import cell_ranks, cell_sides, fill_value, masked_copies

VoteRule = Literal["threshold", "argmax", "relative"]
_RULES = ("threshold", "argmax", "relative")


class TTAResult(NamedTuple):
    """Per-image outcome of `CAMMaskingTTA.predict`.

    Attributes:
        labels: ``(B,)`` int64 labels after voting.
        flipped: ``(B,)`` bool, whether the vote flipped the prediction.
        probs: ``(B, K)`` probabilities after voting: the unmasked softmax, one-hot where flipped.
        original_labels: ``(B,)`` the unmasked prediction.
        original_probs: ``(B, K)`` the unmasked softmax.
        votes_for: ``(B,)`` int64 supporting votes counted (the unmasked vote included when
            ``count_original``).
        votes_against: ``(B,)`` int64 non-supporting votes counted.
        step_probs: ``(B, k)`` probability of the predicted class for mask step ``j = 1 … k``;
            NaN where early exit skipped the step, and only there (a NaN or inf output of the
            model raises a ValueError naming the images instead of voting).
        forwards: ``(B,)`` int64 image-forwards spent per image (1 + masked copies evaluated).
    """

    labels: torch.Tensor
    flipped: torch.Tensor
    probs: torch.Tensor
    original_labels: torch.Tensor
    original_probs: torch.Tensor
    votes_for: torch.Tensor
    votes_against: torch.Tensor
    step_probs: torch.Tensor
    forwards: torch.Tensor


@dataclass(frozen=True)
class _TTAConfig:
    """The TTA's settings, validated once when [`CAMMaskingTTA`][camkit.CAMMaskingTTA] is built."""

    k: int = 31
    theta: float = 0.2
    patch_size: int | tuple[int, ...] = 8
    early_exit: bool = True
    count_original: bool = False
    mask_value: float | tuple[float, ...] = 0.0
    chunk_size: int = 64
    rule: VoteRule = "threshold"

    def __post_init__(self) -> None:
        check_choice(self.rule, "rule", _RULES)
        check_int(self.k, "k", minimum=1)
        if isinstance(self.patch_size, (tuple, list)):
            for side in self.patch_size:
                check_int(side, "patch_size", minimum=1)
            object.__setattr__(self, "patch_size", tuple(self.patch_size))
        else:
            check_int(self.patch_size, "patch_size", minimum=1)
        check_int(self.chunk_size, "chunk_size", minimum=1)
        set_ = object.__setattr__
        set_(self, "theta", check_probability(self.theta, "theta"))
        set_(self, "early_exit", bool(self.early_exit))
        set_(self, "count_original", bool(self.count_original))
        value = self.mask_value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"mask_value: expected a finite number, got {value}")
            set_(self, "mask_value", float(value))
            return
        try:
            values = torch.as_tensor(value, dtype=torch.float64).flatten().tolist()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                "mask_value: expected a number or a sequence of per-channel numbers, got "
                f"{type(value).__name__}"
            ) from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"mask_value: expected finite numbers, got {tuple(values)}")
        set_(self, "mask_value", tuple(values))


def _check_finite_probs(bad: torch.Tensor, where: str) -> None:
    """Raise when ``bad`` ``(B,)`` marks images whose probabilities were NaN or inf.

    A NaN probability would otherwise vote: ``p <= θ`` is False for NaN, so it would count as
    support, and the unmasked prediction would be an argmax over NaN.
    """
    if not bool(bad.any()):
        return
    count, shown = flagged_rows(bad)
    raise ValueError(
        f"model: produced non-finite outputs (NaN or inf probabilities) on {where} for "
        f"{count} of {bad.shape[0]} images, at batch indices [{shown}]; the vote cannot "
        "count them (check the model, the images and mask_value)"
    )


class CAMMaskingTTA(nn.Module):
    """CAM-directed test-time augmentation with voting, wrapping a classifier.

    The settings are validated once, here, and kept in a frozen `config` (read back as
    ``k``, ``theta``, ``patch_size``, …; ``mask_value`` as a float or a tuple of floats).

    Convention:
        ``p_j`` = probability of the unmasked prediction ``c`` on the copy with the top ``j``
        cells masked, ``j = 1 … k`` (``p_0``: the unmasked image). Cells are ``patch_size``
        squares ranked by the sum of the CAM of ``c`` upsampled bilinearly to the image (ties to
        the lower row-major index). Vote ``j`` supports ``c`` when, by ``rule``:

        - ``"threshold"`` (the paper's): ``p_j > θ``;
        - ``"argmax"``: ``c`` is still the arg-max class of copy ``j`` (θ unused);
        - ``"relative"``: ``p_j > θ · p_0``, the copy keeps more than a fraction θ of the
          unmasked confidence.

        The paper's rule is binary: with ``K`` classes and low-confidence predictions
        (``p_0 ≤ θ``, as a 10-class model near 1/K) every vote goes against ``c`` and nearly every
        label flips; ``"argmax"`` and ``"relative"`` do not depend on ``K``. With ``V = k`` votes
        (``k + 1`` when ``count_original``, the unmasked image voting by the same rule), the
        label flips to the runner-up class when the non-supporting votes number more than
        ``V/2``. ``forward`` returns the probabilities after voting (one-hot where flipped).

    Args:
        model: a classifier [`CAMExtractor`][camkit.CAMExtractor] accepts (timm, an adapted
            torchvision/MONAI/Hugging Face model, a split) or an extractor. Put it in eval mode
            yourself: the wrapper never switches modes (in train mode it still leaves buffers
            unchanged).
        k: number of masked copies (paper: 31; released code: 100).
        theta: vote threshold θ (paper: 0.2; released code: 0.3).
        patch_size: cell side in pixels (paper: 8, a 28×28 grid at 224²); a cube's side for
            volumes, or one side per spatial axis (a tuple).
        early_exit: stop evaluating an image once the vote is decided (same labels, fewer
            forwards).
        count_original: count the unmasked image as a vote (released code).
        mask_value: value of masked pixels in the model's input space: a number or a per-channel
            sequence (default 0, the mean of ImageNet-normalised inputs).
        chunk_size: masked copies per model forward.
        rule: ``"threshold"`` (paper), ``"argmax"`` or ``"relative"``; see the convention.

    Shape:
        - images: ``(B, C, H, W)`` float, with at least ``k`` cells of ``patch_size``; or
          ``(B, C, D, H, W)`` volumes for a model whose input layer is 3-D (the cells are then
          cuboids, ranked by the trilinearly upsampled CAM: one code path, a depth-1 volume
          votes as the image it holds).
        - output: ``(B, K)`` float32 probabilities after voting (`forward`);
          [`TTAResult`][camkit.TTAResult] with ``(B,)``, ``(B, K)`` and ``(B, k)`` fields
          (`predict`).

    Raises:
        TypeError: a setting of the wrong type.
        ValueError: a setting out of range or an unknown ``rule``.

    Examples:
        >>> import timm, torch
        >>> from camkit import CAMMaskingTTA
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=2).eval()
        >>> tta = CAMMaskingTTA(model, k=5, patch_size=16)
        >>> res = tta.predict(torch.randn(3, 3, 64, 64))
        >>> res.labels.shape, res.step_probs.shape
        (torch.Size([3]), torch.Size([3, 5]))
    """

    k = config_setting("k")
    theta = config_setting("theta")
    patch_size = config_setting("patch_size")
    early_exit = config_setting("early_exit")
    count_original = config_setting("count_original")
    mask_value = config_setting("mask_value")
    chunk_size = config_setting("chunk_size")
    rule = config_setting("rule")

    def __init__(
        self,
        model: nn.Module,
        k: int = 31,
        theta: float = 0.2,
        patch_size: int = 8,
        early_exit: bool = True,
        *,
        count_original: bool = False,
        mask_value: float | Sequence[float] = 0.0,
        chunk_size: int = 64,
        rule: VoteRule = "threshold",
    ) -> None:
        super().__init__()
        self.config = _TTAConfig(
            k, theta, patch_size, early_exit, count_original, mask_value, chunk_size, rule
        )
        self.extractor = model if isinstance(model, CAMExtractor) else CAMExtractor(model)

    def _check_rank(self, images: object) -> None:
        """Images for a 2-D model, volumes for a 3-D one (the extractor's input layer)."""
        ext = self.extractor
        check_input_rank(images, "images", ext._input_ndim, model_name(ext.model))

    def _probs(self, images: torch.Tensor) -> torch.Tensor:
        model = self.extractor.model
        with frozen_state(model):
            return model.forward_head(model.forward_features(images)).float().softmax(1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> TTAResult:
        """Classify ``images`` (B, C, H, W) (or volumes) with CAM-masking voting; see the class.

        One forward gives the prediction and its CAM, then the masked copies of the images not yet
        decided are classified in chunks of ``chunk_size`` until every vote is decided (or all
        ``k`` copies are counted, without ``early_exit``). No autograd; the model's mode and
        buffers are left as they were.

        Returns:
            the labels after voting, the vote counts and the probability of each step.

        Raises:
            ValueError: the model's probabilities on some images or on their masked copies are
                NaN or inf (the message gives their batch indices); ``k`` exceeds the cells;
                ``mask_value`` has neither 1 nor ``C`` values.
        """
        cfg = self.config
        self._check_rank(images)
        b, c, *size = images.shape
        sides = cell_sides(cfg.patch_size, len(size))
        grid = math.prod(-(-s // p) for s, p in zip(size, sides, strict=True))
        if cfg.k > grid:
            kind = "image" if len(size) == 2 else "volume"
            raise ValueError(
                f"k: {cfg.k} masks need as many cells, but a {'×'.join(map(str, size))} {kind} "
                f"has only {grid} cells of {'×'.join(map(str, sides))}"
            )
        fill = fill_value(cfg.mask_value, images)
        if fill.numel() not in (1, c):
            raise ValueError(
                f"mask_value: expected 1 or {c} values (one per channel), got {fill.numel()}"
            )
        out = self.extractor.forward_frozen(images)
        probs0 = out.logits.float().softmax(1)
        _check_finite_probs(~torch.isfinite(probs0).all(1), "the images themselves")
        pred = out.target
        runner_up = probs0.topk(min(2, probs0.shape[1]), dim=1).indices[:, -1]
        ranks = cell_ranks(out.cams, tuple(size), cfg.patch_size)

        votes = cfg.k + int(cfg.count_original)
        flip_at = votes // 2 + 1  # non-supporting votes needed to flip
        p0 = probs0.gather(1, pred[:, None])[:, 0]
        against0 = torch.zeros(b, dtype=torch.long, device=images.device)
        if cfg.count_original:
            against0 = (~self._supports(probs0, pred, p0)).long()
        # NaN in step_probs marks a skipped step in the result; the vote reads ``evaluated``, so
        # that it never depends on what the model returned
        step_probs = torch.full((b, cfg.k), float("nan"), device=images.device)
        evaluated = torch.zeros((b, cfg.k), dtype=torch.bool, device=images.device)
        opposed = torch.zeros((b, cfg.k), dtype=torch.bool, device=images.device)
        non_finite = torch.zeros(b, dtype=torch.long, device=images.device)
        done = torch.zeros(b, dtype=torch.long, device=images.device)
        against = against0.clone()
        while True:
            remaining = cfg.k - done
            if cfg.early_exit:
                undecided = (against < flip_at) & (against + remaining >= flip_at)
                # fewest further copies after which either side could have its majority
                need = torch.minimum(flip_at - against, remaining - (flip_at - 1 - against))
                need = torch.where(undecided, need.clamp_min(1), 0)
            else:
                need = remaining
            total = int(need.sum())
            if total == 0:
                break
            image_idx = torch.repeat_interleave(torch.arange(b, device=images.device), need)
            start = torch.cumsum(need, 0) - need
            offset = torch.arange(total, device=images.device) - start[image_idx]
            step = done[image_idx] + offset + 1
            for lo in range(0, total, cfg.chunk_size):
                idx, steps = image_idx[lo : lo + cfg.chunk_size], step[lo : lo + cfg.chunk_size]
                probs = self._probs(masked_copies(images[idx], ranks[idx], steps, fill))
                non_finite.index_add_(0, idx, (~torch.isfinite(probs).all(1)).long())
                step_probs[idx, steps - 1] = probs.gather(1, pred[idx, None])[:, 0]
                evaluated[idx, steps - 1] = True
                opposed[idx, steps - 1] = ~self._supports(probs, pred[idx], p0[idx])
            done = done + need
            # one sync per round, as the loop's own ``int(need.sum())``
            _check_finite_probs(non_finite > 0, "their masked copies")
            against = against0 + (opposed & evaluated).sum(1)

        flipped = against >= flip_at
        labels = torch.where(flipped, runner_up, pred)
        onehot = torch.zeros_like(probs0).scatter_(1, runner_up[:, None], 1.0)
        counted = done + int(cfg.count_original)
        return TTAResult(
            labels=labels,
            flipped=flipped,
            probs=torch.where(flipped[:, None], onehot, probs0),
            original_labels=pred,
            original_probs=probs0,
            votes_for=counted - against,
            votes_against=against,
            step_probs=step_probs,
            forwards=done + 1,
        )

    def _supports(self, probs: torch.Tensor, pred: torch.Tensor, p0: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: does each copy's ``probs`` (N, K) support its prediction ``pred``?"""
        cfg = self.config
        if cfg.rule == "argmax":
            return probs.argmax(1) == pred
        p = probs.gather(1, pred[:, None])[:, 0]
        return p > (cfg.theta * p0 if cfg.rule == "relative" else cfg.theta)

    @torch.no_grad()
    def masked_copies(
        self, images: torch.Tensor, steps: torch.Tensor, cams: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The copies the vote classifies: image ``i`` with its ``steps[i]`` top cells masked.

        Cells are ranked as in `predict` (``patch_size`` squares by the sum of the upsampled CAM;
        ties to the lower row-major index) and filled with ``mask_value``.

        Args:
            images: ``(N, C, H, W)`` model inputs (volumes: ``(N, C, D, H, W)``).
            steps: ``(N,)`` int64 number of cells to mask per image (0: the image itself).
            cams: ``(N, h, w)`` (``(N, d, h, w)``) CAMs ranking the cells (default: the
                extractor's CAM of each image's predicted class, one forward).

        Returns:
            masked copies of ``images``' shape.
        """
        self._check_rank(images)
        n = images.shape[0]
        check_tensor(steps, "steps", shape=(n,), floating=False)
        if cams is None:
            cams = self.extractor.forward_frozen(images).cams
        check_tensor(cams, "cams", shape=(n, *(None,) * (images.ndim - 2)), floating=True)
        ranks = cell_ranks(cams, tuple(images.shape[2:]), self.config.patch_size)
        fill = fill_value(self.config.mask_value, images)
        return masked_copies(images, ranks, steps.to(images.device), fill)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classify ``images`` with CAM-masking voting and return the probabilities after voting.

        Args:
            images: ``(B, C, H, W)`` model inputs.

        Returns:
            ``(B, K)`` float32: the unmasked softmax where the vote kept the prediction, one-hot
            at the runner-up class where it flipped it (`predict` returns the whole vote).
        """
        return self.predict(images).probs

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"k={c.k}, theta={c.theta}, patch_size={c.patch_size}, "
            f"early_exit={c.early_exit}, count_original={c.count_original}, rule={c.rule!r}"
        )
