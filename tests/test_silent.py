"""No silent answers: NaN and infinite inputs, device mismatches, empty metrics, wrong class
counts, a model left in eval mode — each is refused (or warned about) naming what is wrong."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from camkit import (
    CAMExtractor,
    CAMMaskingTTA,
    ContrastivePatchLoss,
    CutMix,
    Mixup,
    SnapMix,
    TrainStep,
    classification_metrics,
    contrastive_patch_loss,
    soft_cross_entropy,
)
from camkit.datasets import load_digits_npz
from tests.helpers import TinyNet


def _batch(b=4, size=32):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, size, size, generator=gen), torch.tensor([0, 1, 1, 0][:b])


def test_snapmix_refuses_nan_cams():
    images, labels = _batch()
    cams = torch.rand(4, 4, 4)
    cams[1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"cams: expected finite values, got 1 NaN or infinite"):
        SnapMix(2)(images, labels, cams)
    mix = SnapMix(2)
    params = mix.sample(4, 32, 32)
    with pytest.raises(ValueError, match=r"cams: expected finite values"):
        mix.targets(labels, cams, params, (32, 32))


def test_huge_cams_give_the_weights_of_the_same_maps_scaled_down():
    _, labels = _batch()
    cams = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(3))
    mix = SnapMix(2, generator=torch.Generator().manual_seed(1))
    params = mix.sample(4, 32, 32)
    assert params.shared_box[2]  # this draw mixes
    small = mix.targets(labels, cams, params, (32, 32))
    huge = mix.targets(labels, cams * 1e36, params, (32, 32))
    assert torch.isfinite(huge).all()
    torch.testing.assert_close(huge, small, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: SnapMix(2, alpha=float("inf")), r"alpha: expected a finite value > 0, got inf"),
        (lambda: SnapMix(2, alpha=float("nan")), r"alpha: expected a finite value > 0, got nan"),
        (lambda: SnapMix(2, prob=float("nan")), r"prob: expected a value in \[0, 1\], got nan"),
        (lambda: CutMix(2, alpha=float("inf")), r"alpha: expected a finite value > 0, got inf"),
        (lambda: Mixup(2, alpha=-1.0), r"alpha: expected a finite value > 0, got -1.0"),
        (lambda: ContrastivePatchLoss(temperature=float("inf")), r"temperature: .*finite.*inf"),
        (lambda: TrainStep(TinyNet(), cpe_weight=float("inf")), r"cpe_weight: .*finite.*>= 0"),
        (lambda: CAMMaskingTTA(TinyNet(), theta=float("nan")), r"theta: expected a value in"),
        (lambda: CAMMaskingTTA(TinyNet(), mask_value=float("inf")), r"mask_value: .*finite"),
        (lambda: CAMMaskingTTA(TinyNet(), mask_value=[0, float("nan"), 0]), r"mask_value: .*fin"),
    ],
)
def test_float_settings_must_be_finite_and_in_range(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_the_cpe_refuses_nan_cams():
    features = torch.randn(2, 8, 4, 4)
    cams = torch.rand(2, 4, 4)
    cams[0] = float("nan")
    with pytest.raises(ValueError, match=r"cams: expected finite values, got 16 NaN"):
        ContrastivePatchLoss()(features, cams)
    with pytest.raises(ValueError, match=r"cams: expected finite values"):
        contrastive_patch_loss(features, cams)


def test_metrics_without_samples_refuse_to_compute():
    metrics = classification_metrics(2)
    with pytest.raises(ValueError, match=r"compute: no samples were given"):
        metrics.compute()
    metrics.update(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))  # an empty batch
    with pytest.raises(ValueError, match=r"no samples"):
        metrics.compute()
    metrics.update(torch.tensor([[0.2, 0.8]]), torch.tensor([1]))
    assert metrics.compute()["accuracy"] == 1.0
    metrics.reset()
    with pytest.raises(ValueError, match=r"no samples"):
        metrics.compute()


def test_digit_labels_outside_the_classes_are_refused(tmp_path):
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=np.zeros((3, 8, 8), np.uint8), y_train=np.array([100, 101, 109]),
             x_test=np.zeros((1, 8, 8), np.uint8), y_test=np.array([1]))  # fmt: skip
    with pytest.raises(ValueError, match=r"'y_train': expected labels in \[0, 9\] .*\[100, 109\]"):
        load_digits_npz(path)
    assert load_digits_npz(path, num_classes=110)["y_train"].max() == 109


def test_targets_of_another_class_count_are_named_where_they_meet_the_logits():
    images, labels = _batch()
    model = TinyNet(num_classes=2)
    cams = CAMExtractor(model).forward_frozen(images, labels).cams
    _, soft = SnapMix(3)(images, labels, cams)  # a 3-class SnapMix for a 2-class model
    with pytest.raises(
        ValueError, match=r"targets: expected the logits' shape \(4, 2\) .*\(4, 3\)"
    ):
        soft_cross_entropy(model(images), soft)


def test_batches_on_another_device_than_the_model_are_named():
    images, labels = _batch()
    model = TinyNet()
    meta = images.to("meta")
    with pytest.raises(ValueError, match=r"images: on meta, but the parameters of .* are on cpu"):
        TrainStep(model)(meta, labels)
    with pytest.raises(ValueError, match=r"images: on meta, but the parameters"):
        TrainStep(model, mix=SnapMix(2))(meta, labels)
    with pytest.raises(ValueError, match=r"images: on meta"):
        CAMMaskingTTA(model.eval(), k=2, patch_size=8).predict(meta)
    with pytest.raises(ValueError, match=r"labels: on meta, expected the images' device \(cpu\)"):
        TrainStep(model.train(), cpe=ContrastivePatchLoss())(images, labels.to("meta"))


def test_a_step_on_a_model_in_eval_mode_warns_once():
    images, labels = _batch()
    step = TrainStep(TinyNet().eval(), mix=CutMix(2))
    with pytest.warns(UserWarning, match=r"eval mode.*model\.train\(\)"):
        step(images, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(images, labels)  # once per step
        TrainStep(TinyNet().train())(images, labels)  # train mode: no warning
    assert math.isfinite(float(step(images, labels).loss.detach()))
