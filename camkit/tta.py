"""CAM-directed test-time augmentation (Ali, Shaharabany & Wolf, MIDL 2022, §3.3).

The image is classified once; the CAM of the predicted class is upsampled to the image, summed
over non-overlapping ``patch_size × patch_size`` cells, and ``k`` masked copies are classified:
copy ``j`` masks the ``j`` most relevant cells (cumulatively). A copy *supports* the prediction when
its probability of the predicted class exceeds ``θ``; when more than half of the votes do not
support it, the label is flipped. For two classes this is the paper's rule (``p ≥ θ`` for a positive
prediction, ``p < 1 − θ`` for a negative one, up to ties); for ``K`` classes the flipped label is
the runner-up class of the unmasked prediction.

camkit evaluates the copies batched over images and masks, without autograd, and stops evaluating
an image as soon as one side has a majority (*exact early exit*: the labels are identical to the
full vote, only skipped copies are never computed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import nn

from camkit._checks import check_probability, check_tensor, flagged_rows
from camkit.cam import CAMExtractor, cell_sums, frozen_state, upsample_cams

VoteRule = Literal["threshold", "argmax", "relative"]

__all__ = [
    "CAMMaskingTTA",
    "DeletionCurve",
    "TTAResult",
    "cell_ranks",
    "deletion_auc",
    "deletion_curve",
    "masked_copies",
]


class TTAResult(NamedTuple):
    """Per-image outcome of :meth:`CAMMaskingTTA.predict`.

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


def cell_ranks(cams: torch.Tensor, image_size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Rank of each pixel's cell by CAM mass: 0 for the most relevant cell.

    Convention:
        ``cams`` are upsampled bilinearly (``align_corners=False``) to ``image_size``, summed over
        ``patch_size`` cells (:func:`camkit.cell_sums`), and the cells sorted by decreasing sum
        (ties by row-major cell index). Masking the top ``j`` cells means masking pixels whose rank
        is ``< j``.

    Args:
        cams: ``(B, h, w)`` CAMs of the predicted class.
        image_size: ``(H, W)``.
        patch_size: cell side in pixels.

    Returns:
        ``(B, H, W)`` int64 ranks.

    Examples:
        >>> cell_ranks(torch.tensor([[[0.0, 1.0]]]), (2, 4), 2).tolist()
        [[[1, 1, 0, 0], [1, 1, 0, 0]]]
    """
    check_tensor(cams, "cams", ndim=3, floating=True)
    height, width = image_size
    sums = cell_sums(upsample_cams(cams.float(), (height, width)), patch_size)
    b, gh, gw = sums.shape
    order = torch.argsort(sums.flatten(1), dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(gh * gw, device=cams.device).expand(b, -1))
    rows = torch.arange(height, device=cams.device) // patch_size
    cols = torch.arange(width, device=cams.device) // patch_size
    pixel_cell = (rows[:, None] * gw + cols[None, :]).flatten()
    return ranks[:, pixel_cell].view(b, height, width)


def masked_copies(
    images: torch.Tensor,
    ranks: torch.Tensor,
    steps: torch.Tensor,
    mask_value: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Images with their ``steps[i]`` most relevant cells set to ``mask_value``.

    Args:
        images: ``(N, C, H, W)``.
        ranks: ``(N, H, W)`` pixel cell ranks from :func:`cell_ranks`.
        steps: ``(N,)`` number of cells to mask per image.
        mask_value: a number, or a ``(C,)`` tensor of per-channel values (default 0: the dataset
            mean of normalised images, as in the released code).

    Returns:
        ``(N, C, H, W)`` masked images.
    """
    if isinstance(mask_value, torch.Tensor):
        fill = mask_value.to(images)
        fill = fill.view(1, -1, 1, 1) if fill.ndim == 1 else fill
    else:
        fill = torch.tensor(float(mask_value), dtype=images.dtype, device=images.device)
    hidden = (ranks < steps.view(-1, 1, 1))[:, None]
    return torch.where(hidden, fill, images)


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

    Convention:
        ``p_j`` = probability of the unmasked prediction ``c`` on the copy with the top ``j``
        cells masked, ``j = 1 … k`` (``p_0``: the unmasked image). Vote ``j`` supports ``c``
        when, by ``rule``:

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
        model: a timm classifier or a :class:`camkit.CAMExtractor`. Put it in eval mode yourself:
            the wrapper never switches modes (in train mode it still leaves buffers unchanged).
        k: number of masked copies (paper: 31; released code: 100).
        theta: vote threshold θ (paper: 0.2; released code: 0.3).
        patch_size: cell side in pixels (paper: 8, a 28×28 grid at 224²).
        early_exit: stop evaluating an image once the vote is decided (same labels, fewer
            forwards).
        count_original: count the unmasked image as a vote (released code).
        mask_value: value of masked pixels in the model's input space: a number or a per-channel
            sequence (default 0, the mean of ImageNet-normalised inputs).
        chunk_size: masked copies per model forward.
        rule: ``"threshold"`` (paper), ``"argmax"`` or ``"relative"``; see the convention.

    Examples:
        >>> import timm, torch
        >>> from camkit import CAMMaskingTTA
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=2).eval()
        >>> tta = CAMMaskingTTA(model, k=5, patch_size=16)
        >>> res = tta.predict(torch.randn(3, 3, 64, 64))
        >>> res.labels.shape, res.step_probs.shape
        (torch.Size([3]), torch.Size([3, 5]))
    """

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
        if rule not in ("threshold", "argmax", "relative"):
            raise ValueError(f"rule: expected 'threshold', 'argmax' or 'relative', got {rule!r}")
        self.rule: VoteRule = rule
        for name, value in (("k", k), ("patch_size", patch_size), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        check_probability(theta, "theta")
        self.extractor = model if isinstance(model, CAMExtractor) else CAMExtractor(model)
        self.k = k
        self.theta = float(theta)
        self.patch_size = patch_size
        self.early_exit = bool(early_exit)
        self.count_original = bool(count_original)
        if isinstance(mask_value, (int, float)) and not isinstance(mask_value, bool):
            self.mask_value: float | torch.Tensor = float(mask_value)
        else:
            self.mask_value = torch.as_tensor(mask_value, dtype=torch.float32).flatten()
        self.chunk_size = chunk_size

    def _probs(self, images: torch.Tensor) -> torch.Tensor:
        model = self.extractor.model
        with frozen_state(model):
            return model.forward_head(model.forward_features(images)).float().softmax(1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> TTAResult:
        """Classify ``images`` (B, C, H, W) with CAM-masking voting; see the class doc.

        Raises:
            ValueError: the model's probabilities on some images or on their masked copies are
                NaN or inf (the message gives their batch indices); ``k`` exceeds the cells.
        """
        check_tensor(images, "images", ndim=4, floating=True)
        b, c, height, width = images.shape
        grid = -(-height // self.patch_size) * -(-width // self.patch_size)
        if self.k > grid:
            raise ValueError(
                f"k: {self.k} masks need as many cells, but a {height}×{width} image has only "
                f"{grid} cells of {self.patch_size}×{self.patch_size}"
            )
        if isinstance(self.mask_value, torch.Tensor) and self.mask_value.numel() not in (1, c):
            raise ValueError(
                f"mask_value: expected 1 or {c} values (one per channel), "
                f"got {self.mask_value.numel()}"
            )
        out = self.extractor.forward_frozen(images)
        probs0 = out.logits.float().softmax(1)
        _check_finite_probs(~torch.isfinite(probs0).all(1), "the images themselves")
        pred = out.target
        runner_up = probs0.topk(min(2, probs0.shape[1]), dim=1).indices[:, -1]
        ranks = cell_ranks(out.cams, (height, width), self.patch_size)

        votes = self.k + int(self.count_original)
        flip_at = votes // 2 + 1  # non-supporting votes needed to flip
        p0 = probs0.gather(1, pred[:, None])[:, 0]
        against0 = torch.zeros(b, dtype=torch.long, device=images.device)
        if self.count_original:
            against0 = (~self._supports(probs0, pred, p0)).long()
        # NaN in step_probs marks a skipped step in the result; the vote reads ``evaluated``, so
        # that it never depends on what the model returned
        step_probs = torch.full((b, self.k), float("nan"), device=images.device)
        evaluated = torch.zeros((b, self.k), dtype=torch.bool, device=images.device)
        opposed = torch.zeros((b, self.k), dtype=torch.bool, device=images.device)
        non_finite = torch.zeros(b, dtype=torch.long, device=images.device)
        done = torch.zeros(b, dtype=torch.long, device=images.device)
        against = against0.clone()
        while True:
            remaining = self.k - done
            if self.early_exit:
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
            for lo in range(0, total, self.chunk_size):
                idx, steps = image_idx[lo : lo + self.chunk_size], step[lo : lo + self.chunk_size]
                copies = masked_copies(images[idx], ranks[idx], steps, self.mask_value)
                probs = self._probs(copies)
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
        counted = done + int(self.count_original)
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
        if self.rule == "argmax":
            return probs.argmax(1) == pred
        p = probs.gather(1, pred[:, None])[:, 0]
        return p > (self.theta * p0 if self.rule == "relative" else self.theta)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` probabilities after voting for ``images`` (B, C, H, W)."""
        return self.predict(images).probs

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, theta={self.theta}, patch_size={self.patch_size}, "
            f"early_exit={self.early_exit}, count_original={self.count_original}, "
            f"rule={self.rule!r}"
        )


class DeletionCurve(NamedTuple):
    """A deletion curve (Petsiuk et al., RISE, 2018) of the CAM-masking sequence.

    Attributes:
        fractions: ``(k + 1,)`` fraction of the image's cells masked: ``0`` for the unmasked
            image, then ``j / num_cells`` for mask step ``j = 1 … k``.
        probs: ``(B, k + 1)`` probability of the unmasked prediction at each point.
    """

    fractions: torch.Tensor
    probs: torch.Tensor


def deletion_curve(result: TTAResult, num_cells: int) -> DeletionCurve:
    """The deletion curve of each image from a :class:`TTAResult` in which every step was evaluated.

    Masking the most relevant cells first, a CAM that points at what the model uses makes the
    probability of the predicted class fall fast. The curve starts at the unmasked probability
    ``original_probs[b, original_labels[b]]`` and continues with ``step_probs``.

    Convention:
        ``x = (0, 1, …, k) / num_cells``, ``y = (P_0, P_1, …, P_k)`` with ``P_j`` the probability
        of the unmasked prediction when the ``j`` most relevant cells are masked. For a
        ``H × W`` image and ``patch_size`` ``s``, ``num_cells = ceil(H/s) · ceil(W/s)``.

    Args:
        result: output of :meth:`CAMMaskingTTA.predict` built with ``early_exit=False`` (the early
            exit skips steps, which are NaN in ``step_probs``).
        num_cells: number of cells of the image grid, at least ``k``.

    Returns:
        :class:`DeletionCurve` on the result's device.

    Raises:
        ValueError: ``step_probs`` has NaN steps (use ``early_exit=False``), or ``num_cells`` is
            not an int ``>= k``.

    Examples:
        >>> z = torch.zeros(1)
        >>> res = TTAResult(labels=z, flipped=z, probs=z, original_labels=torch.tensor([0]),
        ...                 original_probs=torch.tensor([[0.75, 0.25]]), votes_for=z,
        ...                 votes_against=z, step_probs=torch.tensor([[0.5, 0.25]]), forwards=z)
        >>> curve = deletion_curve(res, num_cells=4)
        >>> curve.fractions.tolist(), curve.probs.tolist()
        ([0.0, 0.25, 0.5], [[0.75, 0.5, 0.25]])
    """
    if not isinstance(result, TTAResult):
        raise TypeError(f"result: expected a TTAResult, got {type(result).__name__}")
    steps = check_tensor(result.step_probs, "result.step_probs", ndim=2, floating=True)
    k = steps.shape[1]
    if isinstance(num_cells, bool) or not isinstance(num_cells, int) or num_cells < k:
        raise ValueError(f"num_cells: expected an int >= k = {k}, got {num_cells!r}")
    if bool(torch.isnan(steps).any()):
        raise ValueError(
            "result: step_probs has NaN steps, skipped by the early exit; a deletion curve needs "
            "every step: predict with CAMMaskingTTA(..., early_exit=False)"
        )
    first = result.original_probs.gather(1, result.original_labels[:, None].long())
    probs = torch.cat([first.to(steps.dtype), steps], dim=1)
    fractions = torch.arange(k + 1, device=steps.device, dtype=steps.dtype) / num_cells
    return DeletionCurve(fractions=fractions, probs=probs)


def deletion_auc(curve: DeletionCurve | TTAResult) -> torch.Tensor:
    """Normalised area under the deletion curve of each image: lower means a more faithful CAM.

    Convention:
        The trapezoid-rule area under ``(fractions, probs)`` divided by the range of
        ``fractions`` covered, i.e. the mean probability over the masked range, in [0, 1]. With
        evenly spaced steps it equals ``(P_0/2 + P_1 + … + P_{k-1} + P_k/2) / k`` whatever
        ``num_cells`` is, so a :class:`TTAResult` (``early_exit=False``) can be passed directly.

    Args:
        curve: a :class:`DeletionCurve` (from :func:`deletion_curve`) or a :class:`TTAResult`.

    Returns:
        ``(B,)`` areas.

    Examples:
        >>> curve = DeletionCurve(torch.tensor([0.0, 0.25, 0.5]), torch.tensor([[0.9, 0.6, 0.3]]))
        >>> round(deletion_auc(curve).item(), 4)
        0.6
    """
    if isinstance(curve, TTAResult):
        curve = deletion_curve(curve, curve.step_probs.shape[1])
    if not isinstance(curve, DeletionCurve):
        raise TypeError(
            f"curve: expected a DeletionCurve or a TTAResult, got {type(curve).__name__}"
        )
    probs = check_tensor(curve.probs, "curve.probs", ndim=2, floating=True)
    fractions = check_tensor(curve.fractions, "curve.fractions", shape=(probs.shape[1],))
    if probs.shape[1] < 2:
        raise ValueError(f"curve: expected at least 2 points, got {probs.shape[1]}")
    span = float(fractions[-1] - fractions[0])
    if not span > 0:
        raise ValueError(
            f"curve: expected increasing fractions of cells masked, got a span of {span} "
            f"(fractions {fractions.tolist()[:4]}...)"
        )
    return torch.trapezoid(probs, fractions.to(probs), dim=1) / span
