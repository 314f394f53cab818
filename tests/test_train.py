"""camkit.TrainStep: the step equals the hand-written composition of the parts, and works under
autocast, channels_last, gradient accumulation, EMA and torch.compile (DDP: test_train_ddp.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn

from camkit import (
    CAMExtractor,
    CAMMaskingTTA,
    ContrastivePatchLoss,
    SnapMix,
    TrainStep,
    soft_cross_entropy,
)
from tests.helpers import TinyNet, fixed_batch, tiny_timm

_model, _batch = tiny_timm, fixed_batch


def _hand_written(model, images, labels, use_snapmix, use_cpe, seed=0):
    """The step as the README wrote it before TrainStep existed."""
    ext = CAMExtractor(model)
    mix = SnapMix(num_classes=2, generator=torch.Generator().manual_seed(seed))
    cpe = ContrastivePatchLoss()
    if use_snapmix:
        cams = ext.forward_frozen(images, labels).cams
        images, targets = mix(images, labels, cams)
    else:
        targets = torch.nn.functional.one_hot(labels, 2).float()
    out = ext(images, target=targets.argmax(1))
    loss = SoftTargetCrossEntropy()(out.logits, targets)
    if use_cpe:
        loss = loss + cpe(out.features, out.cams)
    return loss, out.logits, targets


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("use_snapmix", [False, True])
@pytest.mark.parametrize("use_cpe", [False, True])
def test_step_equals_hand_written_composition(use_snapmix, use_cpe):
    images, labels = _batch()
    model = _model()
    reference = copy.deepcopy(model)
    step = TrainStep(
        model,
        mix=SnapMix(num_classes=2, generator=torch.Generator().manual_seed(0))
        if use_snapmix
        else None,
        cpe=ContrastivePatchLoss() if use_cpe else None,
    )
    out = step(images, labels)
    out.loss.backward()
    loss, logits, targets = _hand_written(reference, images, labels, use_snapmix, use_cpe)
    loss.backward()
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.targets, targets)
    torch.testing.assert_close(_grads(model), _grads(reference))
    assert (out.cpe_loss is not None) is use_cpe
    if use_snapmix:
        assert not torch.equal(out.inputs, images)  # the batch was mixed (prob=1)
    # one BatchNorm update per step: the frozen CAM pass leaves the statistics alone
    assert int(model.bn1.num_batches_tracked) == 1
    torch.testing.assert_close(model.bn1.running_mean, reference.bn1.running_mean)


def test_step_parts_and_options():
    images, labels = _batch()
    model = _model()
    step = TrainStep(model, cpe=ContrastivePatchLoss(), cpe_weight=0.25, label_smoothing=0.1)
    out = step(images, labels)
    torch.testing.assert_close(out.loss, out.classification_loss + 0.25 * out.cpe_loss)
    expected = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.05, 0.95], [0.95, 0.05]])
    torch.testing.assert_close(out.targets, expected)
    torch.testing.assert_close(out.classification_loss, soft_cross_entropy(out.logits, expected))
    # a user criterion receives (logits, soft targets)
    seen = {}

    def criterion(logits, targets):
        seen["shapes"] = (tuple(logits.shape), tuple(targets.shape))
        return logits.sum() * 0 + 7.0

    out = TrainStep(model, criterion=criterion)(images, labels)
    assert seen["shapes"] == ((4, 2), (4, 2)) and float(out.loss.detach()) == 7.0
    # state_dict and parameters are the model's, once
    assert list(step.state_dict()) == [f"model.{k}" for k in model.state_dict()]
    assert len(list(step.parameters())) == len(list(model.parameters()))


def test_soft_cross_entropy_matches_timm():
    logits, targets = torch.randn(5, 3), torch.rand(5, 3)
    torch.testing.assert_close(
        soft_cross_entropy(logits, targets), SoftTargetCrossEntropy()(logits, targets)
    )


def test_plain_step_needs_no_timm_contract():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    out = TrainStep(model)(torch.randn(2, 3, 8, 8), torch.tensor([2, 0]))
    torch.testing.assert_close(out.targets, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    out.loss.backward()


def test_step_refuses_bad_configuration_and_input():
    model = _model()
    with pytest.raises(ValueError, match=r"mix: SnapMix\(num_classes=3\).*num_classes=2"):
        TrainStep(model, mix=SnapMix(num_classes=3))
    with pytest.raises(ValueError, match="reduction='mean'"):
        TrainStep(model, cpe=ContrastivePatchLoss(reduction="none"))
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainStep(model, label_smoothing=1.0)
    with pytest.raises(ValueError, match="cpe_weight"):
        TrainStep(model, cpe_weight=-1.0)
    step = TrainStep(model, mix=SnapMix(num_classes=2))
    images, _ = _batch()
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 1\]"):
        step(images, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="labels"):
        step(images, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="labels"):
        step(images, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(TypeError, match=r"mix: expected a camkit.Mix .* got Identity"):
        TrainStep(model, mix=torch.nn.Identity())
    with pytest.raises(ValueError, match=r"cam_method: expected one of 'cam', "):
        TrainStep(model, cam_method="scorecam")
    with pytest.raises(ValueError, match=r"cam_method: the CAMExtractor .* 'gradcam'"):
        TrainStep(CAMExtractor(model, "gradcam"))


def test_snapmix_keyword_is_a_deprecated_alias_of_mix():
    model = _model()
    with pytest.warns(DeprecationWarning, match=r"mix="):
        step = TrainStep(model, snapmix=SnapMix(num_classes=2))
    assert isinstance(step.mix, SnapMix) and step.snapmix is step.mix
    with pytest.raises(TypeError, match="give the mix once"):
        TrainStep(model, mix=SnapMix(2), snapmix=SnapMix(2))


@pytest.mark.parametrize("build", [CAMExtractor, TrainStep, CAMMaskingTTA])
def test_compiled_model_is_refused_with_the_recipe(build):
    compiled = torch.compile(_model())
    with pytest.raises(TypeError, match=r"torch.compile.*torch.compile\(camkit.TrainStep"):
        build(compiled)


def test_bf16_autocast_and_channels_last_on_cpu():
    images, labels = _batch()
    model = _model()
    step = TrainStep(model, cpe=ContrastivePatchLoss(normalize=True, temperature=0.1))
    with torch.no_grad():
        reference = step(images, labels)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    step_cl = TrainStep(model_cl, cpe=ContrastivePatchLoss(normalize=True, temperature=0.1))
    out = step_cl(images.contiguous(memory_format=torch.channels_last), labels)
    torch.testing.assert_close(out.loss, reference.loss, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = step(images, labels)
    assert out.logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32 and out.cpe_loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, reference.loss, rtol=0.05, atol=0.05)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gradient_accumulation_composes_to_the_full_batch():
    """Half-batch losses / 2, accumulated, give the full batch's gradient (no BatchNorm)."""
    torch.manual_seed(0)
    model = TinyNet(num_classes=2, stride=8, bn=False)
    full = copy.deepcopy(model)
    images, labels = _batch(size=32)
    step = TrainStep(model, cpe=ContrastivePatchLoss(normalize=True, temperature=0.5))
    for half in (slice(0, 2), slice(2, 4)):
        (step(images[half], labels[half]).loss / 2).backward()
    TrainStep(full, cpe=ContrastivePatchLoss(normalize=True, temperature=0.5))(
        images, labels
    ).loss.backward()
    torch.testing.assert_close(_grads(model), _grads(full))


def test_model_ema_follows_the_step_model():
    model = _model()
    step = TrainStep(model, mix=SnapMix(num_classes=2), cpe=ContrastivePatchLoss())
    ema = ModelEmaV3(step.model, decay=0.5)
    before = copy.deepcopy(ema.module.state_dict())
    opt = torch.optim.SGD(step.parameters(), lr=0.1)
    images, labels = _batch()
    step(images, labels).loss.backward()
    opt.step()
    ema.update(step.model)
    for key, value in ema.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.5 * before[key] + 0.5 * model.state_dict()[key])


@pytest.mark.slow
@pytest.mark.parametrize("cam_source", ["unmixed", "mixed"])
def test_torch_compile_of_the_step_compiles_and_matches_eager(cam_source):
    """Inductor on a small timm-contract model: graphs are built, the loss is the eager one, and
    the only graph breaks are the documented host-side SnapMix helpers (also for SnapMix without
    the extra forward)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyNet(num_classes=2, stride=8)
    images, labels = _batch(size=32)

    def make():
        return TrainStep(
            model,
            mix=SnapMix(
                num_classes=2, generator=torch.Generator().manual_seed(0), cam_source=cam_source
            ),
            cpe=ContrastivePatchLoss(normalize=True, temperature=0.1),
        )

    eager = make()(images, labels)
    explanation = torch._dynamo.explain(make())(images, labels)
    assert explanation.graph_count > 0
    breaks = {str(b.reason) for b in explanation.break_reasons}
    allowed = ("_sample_snapmix_params", "_resize_tables")
    assert all(any(name in reason for name in allowed) for reason in breaks), breaks
    torch._dynamo.reset()
    compiled = torch.compile(make())
    out = compiled(images, labels)
    out.loss.backward()
    torch.testing.assert_close(out.loss, eager.loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.targets, eager.targets)
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_extractor_runs_compiled():
    torch._dynamo.reset()
    model = _model().eval()
    images, labels = _batch()
    explanation = torch._dynamo.explain(CAMExtractor(model))(images, labels)
    assert explanation.graph_count >= 1
    out = torch.compile(CAMExtractor(model), backend="aot_eager")(images, labels)
    torch.testing.assert_close(out.cams, CAMExtractor(model)(images, labels).cams)
    torch._dynamo.reset()


def test_narrow_integer_labels_and_an_extractor_are_accepted():
    """uint8/int32 labels (MNIST arrays) train like int64; an extractor is unwrapped."""
    images, labels = _batch()
    model = _model()
    reference = TrainStep(copy.deepcopy(model), cpe=ContrastivePatchLoss())(images, labels).loss
    for dtype in (torch.uint8, torch.int32):
        step = TrainStep(copy.deepcopy(model), cpe=ContrastivePatchLoss())
        torch.testing.assert_close(step(images, labels.to(dtype)).loss, reference)
        mixed = TrainStep(copy.deepcopy(model), mix=SnapMix(2))(images, labels.to(dtype))
        assert mixed.targets.shape == (4, 2)
    step = TrainStep(CAMExtractor(model), mix=SnapMix(2))
    assert step.model is model and step(images, labels).logits.shape == (4, 2)
