"""Deletion curves (Petsiuk et al., RISE, 2018) from the CAM-masking TTA's masked copies."""

from __future__ import annotations

from typing import NamedTuple

import torch

from camkit._checks import check_int, check_tensor
from camkit.tta._vote import TTAResult


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
    """The deletion curve of each image from a [`TTAResult`][camkit.TTAResult] with every step.

    Masking the most relevant cells first, a CAM that points at what the model uses makes the
    probability of the predicted class fall fast. The curve starts at the unmasked probability
    ``original_probs[b, original_labels[b]]`` and continues with ``step_probs``.

    Convention:
        ``x = (0, 1, …, k) / num_cells``, ``y = (P_0, P_1, …, P_k)`` with ``P_j`` the probability
        of the unmasked prediction when the ``j`` most relevant cells are masked. For a
        ``H × W`` image and ``patch_size`` ``s``, ``num_cells = ceil(H/s) · ceil(W/s)``.

    Args:
        result: output of `CAMMaskingTTA.predict` built with ``early_exit=False`` (the early
            exit skips steps, which are NaN in ``step_probs``).
        num_cells: number of cells of the image grid, at least ``k``.

    Returns:
        [`DeletionCurve`][camkit.DeletionCurve] on the result's device.

    Raises:
        TypeError: ``result`` is not a `TTAResult`, or ``num_cells`` is not an int.
        ValueError: ``step_probs`` has NaN steps (use ``early_exit=False``), or ``num_cells`` is
            below ``k``.

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
    check_int(num_cells, "num_cells", minimum=k)
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
        ``num_cells`` is, so a `TTAResult` (``early_exit=False``) can be passed directly.

    Args:
        curve: a [`DeletionCurve`][camkit.DeletionCurve] (from `deletion_curve`) or a
            [`TTAResult`][camkit.TTAResult].

    Returns:
        ``(B,)`` areas.

    Raises:
        TypeError: ``curve`` is neither.
        ValueError: fewer than 2 points, or fractions that do not increase.

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
