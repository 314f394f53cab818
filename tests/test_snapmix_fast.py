"""SnapMix without the extra forward (``cam_source="mixed"``) and its DataLoader collate."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from camkit import (
    CAMExtractor,
    ContrastivePatchLoss,
    MixCollate,
    SnapMix,
    SnapMixCollate,
    TrainStep,
    normalize_cams,
    upsample_cams,
)

NUM_CLASSES = 3


def _batch(seed: int = 0, b: int = 6, size: int = 64):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, size, size, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (b,), generator=gen)
    return images, labels


def _fast(seed: int, **kwargs) -> SnapMix:
    gen = torch.Generator().manual_seed(seed)
    return SnapMix(NUM_CLASSES, generator=gen, cam_source="mixed", **kwargs)


@pytest.fixture
def model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=NUM_CLASSES).eval()


def _reference_targets(model, mixed, labels, params):
    """Float64 reference: CAMs of the mixed image for both labels, upsampled, summed over box A."""
    ext = CAMExtractor(model)
    h, w = mixed.shape[-2:]
    with torch.no_grad():
        cams_a = ext(mixed, labels).cams
        cams_b = ext(mixed, labels[params.perm]).cams
    soft = torch.zeros(mixed.shape[0], NUM_CLASSES, dtype=torch.float64)
    for i in range(mixed.shape[0]):
        if not params.apply[i]:
            soft[i, labels[i]] = 1.0
            continue
        y0, x0, y1, x1 = params.box_a[i].tolist()
        shares = []
        for cam in (cams_a[i], cams_b[i]):
            s = normalize_cams(upsample_cams(cam[None].double(), (h, w)), "distribution")[0]
            shares.append(float(s[y0:y1, x0:x1].sum()))
        soft[i, labels[i]] += 1.0 - shares[0]
        soft[i, labels[params.perm[i]]] += shares[1]
    return soft


def test_fast_step_weighs_labels_with_the_mixed_images_cams(model):
    images, labels = _batch()
    step = TrainStep(model, mix=_fast(1))
    out = step(images, labels)
    params = _fast(1).sample(*images.shape[:1], *images.shape[2:])
    assert params.shared_box is not None and params.shared_box[2]  # this seed mixes the batch
    expected = _reference_targets(model, out.inputs, labels, params)
    torch.testing.assert_close(out.targets.double(), expected, rtol=1e-5, atol=1e-6)
    # the mixed image is the paste of the same draws
    assert torch.equal(out.inputs, _fast(1).mix_images(images)[0])
    assert not torch.allclose(out.inputs, images)


def test_fast_step_runs_one_forward_exact_step_two(model, monkeypatch):
    images, labels = _batch()
    fast = TrainStep(model, mix=_fast(0), cpe=ContrastivePatchLoss())
    exact = SnapMix(NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    exact = TrainStep(model, mix=exact, cpe=ContrastivePatchLoss())
    calls = []
    original = model.forward_features
    monkeypatch.setattr(model, "forward_features", lambda x: calls.append(1) or original(x))
    fast(images, labels).loss.backward()
    assert len(calls) == 1
    calls.clear()
    exact(images, labels)
    assert len(calls) == 2


def test_collate_gives_the_in_step_mix_for_the_same_draws(model):
    images, labels = _batch(3)
    in_step = TrainStep(model, mix=_fast(7), cpe=ContrastivePatchLoss())
    collated = TrainStep(model, mix=_fast(7), cpe=ContrastivePatchLoss())
    collate = MixCollate(collated.mix)
    mixed, batch_labels, params = collate(list(zip(images, labels, strict=True)))
    a = in_step(images, labels)
    b = collated(mixed, batch_labels, mixed_params=params)
    assert torch.equal(a.inputs, mixed)
    assert torch.equal(a.targets, b.targets)
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(a.cpe_loss, b.cpe_loss)


def test_collate_in_workers_draws_per_worker_and_trains(model):
    images, labels = _batch(5, b=32)
    loader = DataLoader(
        TensorDataset(images, labels),
        batch_size=8,
        num_workers=2,
        collate_fn=MixCollate(_fast(0)),
        generator=torch.Generator().manual_seed(0),
    )
    step = TrainStep(model, mix=_fast(0))
    perms = []
    for mixed, batch_labels, params in loader:
        assert mixed.shape == (8, 3, 64, 64) and batch_labels.dtype == torch.int64
        out = step(mixed, batch_labels, mixed_params=params)
        assert torch.isfinite(out.loss)
        perms.append(tuple(params.perm.tolist()))
    assert len(set(perms)) == len(perms)  # workers do not repeat one generator's draws


def test_fast_mode_refusals(model):
    images, labels = _batch()
    fast = _fast(0)
    with pytest.raises(ValueError, match=r"CAMs of the mixed images.*TrainStep"):
        fast(images, labels, torch.rand(6, 4, 4))
    with pytest.raises(ValueError, match=r"cam_source: expected one of 'unmixed', 'mixed'"):
        SnapMix(NUM_CLASSES, cam_source="mix")
    with pytest.raises(ValueError, match=r"mix: SnapMix needs the model's CAMs.*'mixed'"):
        MixCollate(SnapMix(NUM_CLASSES))
    with pytest.warns(DeprecationWarning, match="MixCollate"):
        assert isinstance(SnapMixCollate(fast), MixCollate)
    params = fast.sample(6, 64, 64)
    exact = TrainStep(model, mix=SnapMix(NUM_CLASSES))
    with pytest.raises(ValueError, match=r"mixed_params: .*needs no model.*SnapMix\(cam_source"):
        exact(images, labels, mixed_params=params)
    with pytest.raises(ValueError, match=r"params.perm: expected shape \(5,\)"):
        TrainStep(model, mix=fast)(images[:5], labels[:5], mixed_params=params)
    with pytest.raises(ValueError, match=r"cams: expected a 4-D tensor"):
        fast.targets(labels, torch.rand(6, 4, 4), params, (64, 64))


def test_fast_mode_area_weights_are_cutmix_ratios(model):
    images, labels = _batch()
    step = TrainStep(model, mix=_fast(1, label_weights="area"))
    out = step(images, labels)
    params = _fast(1).sample(6, 64, 64)
    (y0, x0, y1, x1), _, _ = params.shared_box
    area = (y1 - y0) * (x1 - x0) / 64**2
    rows = torch.arange(6)
    same = labels == labels[params.perm]
    torch.testing.assert_close(
        out.targets[rows, labels][~same], torch.full(((~same).sum(),), 1 - area)
    )
    torch.testing.assert_close(out.targets.sum(1), torch.ones(6))
