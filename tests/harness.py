"""One harness: camkit's Module == its function == the plain-loop reference (benchmarks/reference).

For each op (SnapMix, ContrastivePatchLoss, CAMMaskingTTA), device, dtype and timm family,
`check` builds a small seeded case and asserts:

- the Module and the function give bit-identical results (same inputs, same random draws);
- they agree with the reference of ``benchmarks/reference/`` to the dtype's tolerance
  (`TOLERANCES`); the reference runs on the CPU, in float64, on exactly the values camkit got
  (bfloat16 inputs and weights are upcast, not redrawn), except the bf16 TTA, whose reference
  runs the same bf16 network (see `TOLERANCES`).

CAMMaskingTTA has no functional form: its "function" is ``predict`` (``forward`` must return its
``probs``) and the early exit must give the full vote's labels. The models are untrained timm
models (``pretrained=False``) whose classifier is rescaled so that the predictions are confident
enough for votes to go both ways; the inputs are tiny (4 images at 64², 3 classes).

Convention for discrete outcomes (TTA labels): the vote must be exactly the reference rule applied
to camkit's own probabilities; against the reference's labels, an image is compared only when
neither its prediction nor any of its votes is within the probability tolerance of a tie (a
near-tie could go either way at that dtype). Every case asserts that at least one image is
compared and that the votes go both ways, so the check cannot pass vacuously.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from typing import NamedTuple

import pytest
import torch

from benchmarks.reference import (
    loop_snapmix_apply,
    params_to_lists,
    reference_cpe,
    reference_tta,
    reference_vote,
)
from camkit import (
    CAMExtractor,
    CAMMaskingTTA,
    ContrastivePatchLoss,
    SnapMix,
    contrastive_patch_loss,
    snapmix,
)

OPS = ("snapmix", "cpe", "tta")
FAMILIES = {
    "resnet18": {},
    "vit_tiny_patch16_224": {"img_size": 64},
    "convnext_atto": {},
}
# the TTA's θ per family: inside the range of its seeded batch's step probabilities, so that the
# votes go both ways (some images flip, some keep their prediction)
THETA = {"resnet18": 0.9, "vit_tiny_patch16_224": 0.8, "convnext_atto": 0.5}
SIZE, BATCH, NUM_CLASSES = 64, 4, 3
TTA = {"k": 7, "patch_size": 16}
CUDA_SKIP = "CUDA is not available on this machine (run `pytest -m cuda` on a GPU machine)"
DEVICES = (
    "cpu",
    pytest.param(
        "cuda",
        marks=(
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP),
        ),
    ),
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


class Tol(NamedTuple):
    rtol: float
    atol: float


# Per quantity and dtype, for ``torch.testing.assert_close`` (|got − ref| <= atol + rtol·|ref|);
# the worst cases measured on the CPU are 2× to 1000× below these.
# - fp64: camkit computes in float64 except where it chooses float32 on purpose: SnapMix resamples
#   the pasted box and computes the label weights in float32, and the TTA's probabilities are a
#   float32 softmax; those quantities get float32 tolerances.
# - fp32: float32 rounding against the float64 reference (TF32 is switched off for the check).
#   SnapMix's general (per-sample box) paste goes through grid_sample, whose float32 sampling
#   coordinates move unit-variance pixels by up to ~3e-5.
# - bf16: the loss and SnapMix's label weights are computed in float32 from the bf16 values (so
#   float32 tolerances hold; the loss's gradient is rounded to bf16: 2^-8 relative); pasted
#   pixels are rounded to bf16 (half an ulp: 2^-8 relative, 0.008 at |x| < 4). The TTA's network
#   runs in bf16 end to end, and so does its reference (the same bf16 weights, one image at a
#   time): probabilities differ by the bf16 rounding of the two code paths (0.002 observed; the
#   float64 twin of the network would differ by 0.035). CAMs are compared relative to their
#   largest value.
TOLERANCES: dict[str, dict[str, Tol]] = {
    "cpe_loss": {"fp64": Tol(1e-10, 1e-10), "fp32": Tol(1e-5, 1e-5), "bf16": Tol(1e-5, 1e-5)},
    "cpe_grad": {"fp64": Tol(1e-10, 1e-10), "fp32": Tol(1e-4, 1e-5), "bf16": Tol(1e-2, 1e-3)},
    "snapmix_images": {"fp64": Tol(1e-5, 1e-4), "fp32": Tol(1e-5, 1e-4), "bf16": Tol(4e-3, 1e-2)},
    "snapmix_labels": {"fp64": Tol(1e-5, 1e-6), "fp32": Tol(1e-5, 1e-6), "bf16": Tol(1e-5, 1e-6)},
    "tta_probs": {"fp64": Tol(1e-6, 1e-6), "fp32": Tol(1e-4, 1e-5), "bf16": Tol(0.01, 0.005)},
    "tta_cams": {"fp64": Tol(1e-9, 1e-9), "fp32": Tol(1e-4, 1e-4), "bf16": Tol(0.02, 0.02)},
}


def tolerance(quantity: str, dtype: str) -> dict[str, float]:
    """``rtol``/``atol`` keyword arguments of ``torch.testing.assert_close``."""
    return TOLERANCES[quantity][dtype]._asdict()


@functools.cache
def _base_model(family: str) -> torch.nn.Module:
    """A seeded float32 eval-mode ``family`` whose logits spread over several units."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        family, pretrained=False, num_classes=NUM_CLASSES, **FAMILIES[family]
    ).eval()
    images = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        spread = float(model(images).std())
        head = model.get_classifier()
        head.weight.mul_(3.0 / spread)
        head.bias.mul_(3.0 / spread)
    return model


class Case(NamedTuple):
    family: str
    model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    device: torch.device
    dtype: str


def make_case(family: str, dtype: str, device: str, seed: int = 0) -> Case:
    """The model of ``family`` and a seeded batch on ``device`` in ``dtype``."""
    dev = torch.device(device)
    model = copy.deepcopy(_base_model(family)).to(dev, DTYPES[dtype])
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen).to(dev, DTYPES[dtype])
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen).to(dev)
    return Case(family, model, images, labels, dev, dtype)


def _cpu64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().cpu().double()


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """float32 convolutions and matmuls on CUDA in full float32 (cuDNN defaults to TF32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check(op: str, family: str, dtype: str, device: str) -> None:
    """Run the Module/function/reference comparison of ``op``; raise AssertionError on mismatch."""
    with _no_tf32():
        case = make_case(family, dtype, device)
        {"snapmix": check_snapmix, "cpe": check_cpe, "tta": check_tta}[op](case)


def check_snapmix(case: Case) -> None:
    """SnapMix Module == snapmix == loop reference on the same draws, for both box modes.

    The draws come from `SnapMix.sample` and are replayed by the Module and the function; a Module
    drawing for itself with an equally seeded generator must make the same draws.
    """
    cams = CAMExtractor(case.model).forward_frozen(case.images, case.labels).cams
    b, _, h, w = case.images.shape
    for box_mode, gen_device in (("batch", "cpu"), ("sample", case.device)):

        def make(gen_device=gen_device, box_mode=box_mode) -> SnapMix:
            generator = torch.Generator(gen_device).manual_seed(3)
            return SnapMix(NUM_CLASSES, generator=generator, box_mode=box_mode)

        params = make().sample(b, h, w)
        assert bool(params.apply.any()), "the draw mixed nothing: the case does not discriminate"
        mixed_m, soft_m = make()(case.images, case.labels, cams, params=params)
        mixed_f, soft_f = snapmix(case.images, case.labels, cams, NUM_CLASSES, params=params)
        assert torch.equal(mixed_m, mixed_f) and torch.equal(soft_m, soft_f), box_mode
        drawn_m, drawn_soft = make()(case.images, case.labels, cams)
        assert torch.equal(drawn_m, mixed_f) and torch.equal(drawn_soft, soft_f), box_mode
        assert mixed_f.dtype == case.images.dtype and soft_f.device.type == case.device.type
        ref_mixed, ref_soft = loop_snapmix_apply(
            _cpu64(case.images),
            case.labels.cpu(),
            _cpu64(cams),
            *params_to_lists(params),
            NUM_CLASSES,
        )
        torch.testing.assert_close(
            _cpu64(mixed_f), ref_mixed.double(), **tolerance("snapmix_images", case.dtype)
        )
        torch.testing.assert_close(
            _cpu64(soft_f), ref_soft.double(), **tolerance("snapmix_labels", case.dtype)
        )


def check_cpe(case: Case) -> None:
    """ContrastivePatchLoss == contrastive_patch_loss == the float64 loop, values and gradients."""
    out = CAMExtractor(case.model).forward_frozen(case.images, case.labels)
    cams = out.cams
    for settings in (
        {"normalize": False, "temperature": 1.0},
        {"normalize": True, "temperature": 0.5},
    ):
        feats_m = out.features.detach().clone().requires_grad_(True)
        feats_f = out.features.detach().clone().requires_grad_(True)
        feats_r = _cpu64(out.features).requires_grad_(True)
        loss_m = ContrastivePatchLoss(2, reduction="none", **settings)(feats_m, cams)
        loss_f = contrastive_patch_loss(feats_f, cams, 2, reduction="none", **settings)
        loss_r = reference_cpe(feats_r, cams.cpu(), 2, **settings)
        assert torch.equal(loss_m, loss_f)
        torch.testing.assert_close(_cpu64(loss_f), loss_r, **tolerance("cpe_loss", case.dtype))
        mean = ContrastivePatchLoss(2, **settings)(feats_m, cams)
        torch.testing.assert_close(_cpu64(mean), loss_r.mean(), **tolerance("cpe_loss", case.dtype))
        loss_m.sum().backward()
        loss_f.sum().backward()
        loss_r.sum().backward()
        assert torch.equal(feats_m.grad, feats_f.grad)
        assert feats_f.grad.dtype == out.features.dtype
        assert int((feats_r.grad.abs().sum(1) > 0).sum()) == 4 * BATCH  # 2n cells per image
        scale = float(feats_r.grad.abs().max())  # gradients compared relative to their largest
        torch.testing.assert_close(
            _cpu64(feats_f.grad) / scale, feats_r.grad / scale, **tolerance("cpe_grad", case.dtype)
        )


def check_tta(case: Case) -> None:
    """CAMMaskingTTA: forward == predict.probs, early exit == full vote, full vote == reference.

    The probabilities of every step must match the reference's (same cells masked, same model);
    the vote must be the reference rule applied to camkit's own probabilities, exactly; the labels
    must be the reference's wherever no vote lies within the probability tolerance of θ.
    """
    theta = THETA[case.family]
    probs_tol = tolerance("tta_probs", case.dtype)
    full = CAMMaskingTTA(case.model, theta=theta, early_exit=False, **TTA)
    fast = CAMMaskingTTA(case.model, theta=theta, early_exit=True, **TTA)
    res = full.predict(case.images)
    quick = fast.predict(case.images)
    assert torch.equal(fast(case.images), quick.probs)
    assert torch.equal(quick.labels, res.labels) and torch.equal(quick.flipped, res.flipped)
    seen = ~torch.isnan(quick.step_probs)
    torch.testing.assert_close(quick.step_probs[seen], res.step_probs[seen], **probs_tol)

    # float64 reference, except for bf16: a bf16 network's activations differ from its float64
    # twin's by up to 0.035 in probability, far more than the code paths differ, so the reference
    # runs the same bf16 network one image at a time
    ref_dtype = torch.bfloat16 if case.dtype == "bf16" else torch.float64
    ref_model = copy.deepcopy(case.model).to("cpu", ref_dtype)
    ref = reference_tta(ref_model, case.images.cpu().to(ref_dtype), theta=theta, **TTA)
    ref = ref._replace(
        **{f: getattr(ref, f).double() for f in ("original_probs", "step_probs", "cams")}
    )
    torch.testing.assert_close(_cpu64(res.original_probs), ref.original_probs, **probs_tol)
    ext_cams = CAMExtractor(case.model).forward_frozen(case.images).cams
    scale = float(ref.cams.abs().max())  # CAMs compared relative to their largest value
    cams_tol = tolerance("tta_cams", case.dtype)
    torch.testing.assert_close(_cpu64(ext_cams) / scale, ref.cams / scale, **cams_tol)
    # the same copies: camkit's cell order is the reference's (a near-tied pair of cells ranked
    # otherwise, as bf16 could, would mask other cells and fail here, loudly)
    torch.testing.assert_close(_cpu64(res.step_probs), ref.step_probs, **probs_tol)

    flips = reference_vote(res.step_probs.cpu(), res.original_probs.cpu(), theta=theta)
    assert torch.equal(res.flipped.cpu(), flips)
    assert bool(flips.any()) and not bool(flips.all()), "θ must make the votes go both ways"
    runner_up = res.original_probs.topk(2, dim=1).indices[:, 1]
    assert torch.equal(res.labels, torch.where(res.flipped, runner_up, res.original_labels))
    # discrete outcomes against the reference: where neither the prediction nor a vote is a tie
    margin = probs_tol["atol"] + probs_tol["rtol"] * theta
    top2 = ref.original_probs.topk(2, dim=1).values
    clear = ((ref.step_probs - theta).abs() > margin).all(1) & (top2[:, 0] - top2[:, 1] > margin)
    assert bool(clear.any()), "every vote is a near-tie: the case does not discriminate"
    assert torch.equal(res.labels.cpu()[clear], ref.labels[clear])
