"""The mix protocol: CutMix and Mixup equal timm's on the same draws; every mix trains through
one step; Attentive CutMix draws its cells from the CAMs; the step checks its inputs once."""

from __future__ import annotations

import sys

import pytest
import timm.data.mixup as timm_mixup
import torch
from timm.data import Mixup as TimmMixup
from timm.loss import SoftTargetCrossEntropy

import camkit._checks
from camkit import (
    AttentiveCutMix,
    CAMExtractor,
    CellMixParams,
    ContrastivePatchLoss,
    CutMix,
    CutMixParams,
    Mix,
    MixCollate,
    Mixup,
    MixupParams,
    SnapMix,
    TrainStep,
)
from tests.helpers import TinyNet

K = 3


def _batch(seed: int = 0, b: int = 6, size: int = 32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=gen), torch.randint(0, K, (b,), generator=gen)


def _timm_with_draws(monkeypatch, mixer: TimmMixup, images, labels, seed):
    """timm's mixed batch and targets, and the draws it used (recorded where timm makes them)."""
    seen = {}
    bbox, target = timm_mixup.cutmix_bbox_and_lam, timm_mixup.mixup_target

    def record_bbox(*args, **kwargs):
        seen["box"], seen["lam"] = out = bbox(*args, **kwargs)
        return out

    def record_target(t, num_classes, lam=1.0, *args, **kwargs):
        seen["lam"] = lam
        return target(t, num_classes, lam, *args, **kwargs)

    monkeypatch.setattr(timm_mixup, "cutmix_bbox_and_lam", record_bbox)
    monkeypatch.setattr(timm_mixup, "mixup_target", record_target)
    import numpy as np

    np.random.seed(seed)
    mixed, soft = mixer(images.clone(), labels.clone())
    return mixed, soft, seen


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cutmix_equals_timm_on_the_same_draws(monkeypatch, seed):
    images, labels = _batch(seed)
    timm_cutmix = TimmMixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=K)
    expected, target, seen = _timm_with_draws(monkeypatch, timm_cutmix, images, labels, seed)
    (yl, yh, xl, xh), b = seen["box"], images.shape[0]
    box = (int(yl), int(xl), int(yh), int(xh))
    flip = torch.arange(b).flip(0)  # timm's partner: the reversed batch
    params = CutMixParams(
        flip, torch.tensor([box] * b), torch.ones(b, dtype=torch.bool), (box, True)
    )
    mix = CutMix(num_classes=K)
    assert torch.equal(mix.apply(images, params), expected)
    assert torch.equal(mix.targets(labels, None, params, (32, 32)), target)
    # the general path (per-image boxes, no host-side box) gives the same batch
    general = params._replace(shared_box=None)
    assert torch.equal(mix.apply(images, general), expected)
    # and the training step's loss is timm's SoftTargetCrossEntropy on timm's batch
    model = TinyNet(num_classes=K).eval()
    step = TrainStep(model, mix=mix)
    out = step(mix.apply(images, params), labels, mixed_params=params)
    torch.testing.assert_close(out.loss, SoftTargetCrossEntropy()(model(expected), target))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixup_equals_timm_on_the_same_draws(monkeypatch, seed):
    images, labels = _batch(seed)
    timm_mix = TimmMixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=K)
    expected, target, seen = _timm_with_draws(monkeypatch, timm_mix, images, labels, seed)
    lam, b = float(seen["lam"]), images.shape[0]
    params = MixupParams(torch.arange(b).flip(0), torch.full((b,), lam, dtype=torch.float64), lam)
    mix = Mixup(num_classes=K)
    assert torch.equal(mix.apply(images, params), expected)
    assert torch.equal(mix.targets(labels, None, params, (32, 32)), target)
    torch.testing.assert_close(mix.apply(images, params._replace(shared_lam=None)), expected)


def test_label_smoothing_of_the_step_is_timms():
    images, labels = _batch(4)
    mix = CutMix(K, generator=torch.Generator().manual_seed(0))
    params = mix.sample(6, 32, 32)
    out = TrainStep(TinyNet(K), mix=mix, label_smoothing=0.1)(
        mix.apply(images, params), labels, mixed_params=params
    )
    plain = mix.targets(labels, None, params, (32, 32))
    # timm: one_hot(on=1 - ε + ε/K, off=ε/K) mixed by λ, i.e. (1 − ε)·t + ε/K
    torch.testing.assert_close(out.targets, plain * 0.9 + 0.1 / K)


def _all_mixes(seed: int = 0) -> list[Mix]:
    def gen():
        return torch.Generator().manual_seed(seed)

    return [
        SnapMix(K, generator=gen()),
        SnapMix(K, generator=gen(), box_mode="sample"),
        SnapMix(K, generator=gen(), cam_source="mixed"),
        CutMix(K, generator=gen()),
        CutMix(K, generator=gen(), mode="sample", prob=0.7),
        Mixup(K, generator=gen()),
        Mixup(K, generator=gen(), mode="sample"),
        AttentiveCutMix(K, top_k=3, generator=gen()),
    ]


def _ids(mixes):
    return [f"{type(m).__name__}({m.extra_repr()})" for m in mixes]


@pytest.mark.parametrize("index", range(len(_all_mixes())), ids=_ids(_all_mixes()))
def test_every_mix_trains_through_one_step_and_replays(index):
    torch.manual_seed(0)
    model = TinyNet(num_classes=K, stride=8)
    images, labels = _batch(index)
    mix = _all_mixes()[index]
    step = TrainStep(model, mix=mix, cpe=ContrastivePatchLoss())
    out = step(images, labels)
    out.loss.backward()
    assert out.inputs.shape == images.shape and out.targets.shape == (6, K)
    assert torch.isfinite(out.loss) and (out.targets >= 0).all()
    assert model.fc.weight.grad is not None
    # the draws replay exactly
    cams = CAMExtractor(model).forward_frozen(images, labels).cams
    params = mix.sample(6, 32, 32, cams=cams)
    mixed = mix.apply(images, params)
    assert torch.equal(mixed, mix.apply(images, params))
    maps = {"none": None, "unmixed": cams, "mixed": torch.stack([cams, cams], 1)}[mix.needs_cams]
    soft = mix.targets(labels, maps, params, (32, 32))
    assert soft.shape == (6, K) and torch.isfinite(soft).all()
    assert torch.equal(soft, mix.targets(labels, maps, params, (32, 32)))


@pytest.mark.parametrize(
    "make", [lambda g: CutMix(K, generator=g), lambda g: Mixup(K, generator=g)]
)
def test_collate_mixes_like_the_step_for_mixes_without_cams(make):
    images, labels = _batch(5)
    model = TinyNet(num_classes=K)
    in_step = TrainStep(model, mix=make(torch.Generator().manual_seed(3)))
    collate = MixCollate(make(torch.Generator().manual_seed(3)))
    mixed, batch_labels, params = collate(list(zip(images, labels, strict=True)))
    a = in_step(images, labels)
    b = TrainStep(model, mix=collate.mix)(mixed, batch_labels, mixed_params=params)
    assert torch.equal(a.inputs, mixed) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.loss, b.loss)


def test_collate_and_mixed_params_refuse_mixes_that_need_the_model():
    with pytest.raises(ValueError, match=r"mix: AttentiveCutMix needs the model's CAMs"):
        MixCollate(AttentiveCutMix(K))
    with pytest.raises(TypeError, match=r"mix: expected a camkit.Mix, got SnapMixParams"):
        MixCollate(SnapMix(K).sample(2, 8, 8))
    images, labels = _batch()
    params = CutMix(K).sample(6, 32, 32)
    with pytest.raises(ValueError, match=r"mixed_params: .*this step has mix=AttentiveCutMix"):
        TrainStep(TinyNet(K), mix=AttentiveCutMix(K))(images, labels, mixed_params=params)
    with pytest.raises(TypeError, match=r"params: expected a MixupParams, got CutMixParams"):
        TrainStep(TinyNet(K), mix=Mixup(K))(images, labels, mixed_params=params)


def test_attentive_cutmix_pastes_the_partners_top_cells():
    images, labels = _batch(7, b=4, size=16)
    cams = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(1))
    mix = AttentiveCutMix(K, top_k=5, generator=torch.Generator().manual_seed(2))
    params = mix.sample(4, 16, 16, cams=cams)
    assert isinstance(params, CellMixParams) and params.cells.shape == (4, 4, 4)
    mixed = mix.apply(images, params)
    soft = mix.targets(labels, cams, params, (16, 16))
    for i in range(4):
        j = int(params.perm[i])
        top = set(cams[j].flatten().argsort(descending=True, stable=True)[:5].tolist())
        assert set(params.cells[i].flatten().nonzero()[:, 0].tolist()) == top
        for cell in range(16):
            r, c = divmod(cell, 4)
            block = (slice(None), slice(4 * r, 4 * r + 4), slice(4 * c, 4 * c + 4))
            source = images[j] if cell in top else images[i]
            assert torch.equal(mixed[i][block], source[block])
        expected = torch.zeros(K)
        expected[labels[i]] += 1 - 5 / 16
        expected[labels[j]] += 5 / 16
        torch.testing.assert_close(soft[i], expected)
    with pytest.raises(ValueError, match=r"top_k: 16 cells leave nothing .* at most 15"):
        AttentiveCutMix(K, top_k=16).sample(4, 16, 16, cams=cams)
    with pytest.raises(ValueError, match=r"cams: the draws of AttentiveCutMix depend on the CAMs"):
        mix.sample(4, 16, 16)


def test_mix_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="alpha: expected a finite value > 0"):
        CutMix(K, alpha=0.0)
    with pytest.raises(ValueError, match=r"mode: expected one of 'batch', 'sample'"):
        Mixup(K, mode="elem")
    with pytest.raises(ValueError, match="prob: expected a value in"):
        AttentiveCutMix(K, prob=2.0)
    with pytest.raises(TypeError, match="num_classes: expected an int >= 1"):
        CutMix(2.0)
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 2\]"):
        CutMix(K)(*_batch()[:1], torch.tensor([0, 1, 2, 3, 0, 1]))
    with pytest.raises(ValueError, match=r"mix: CutMix\(num_classes=2\) does not match .* 3"):
        TrainStep(TinyNet(K), mix=CutMix(2))


def _count_checks(run) -> dict[str, int]:
    """How many times ``run()`` enters each of camkit's tensor checks."""
    watched = {
        camkit._checks.check_tensor.__code__: "check_tensor",
        camkit._checks.check_labels.__code__: "check_labels",
    }
    counts = dict.fromkeys(watched.values(), 0)

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in watched:
            counts[watched[frame.f_code]] += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return counts


@pytest.mark.parametrize("index", range(len(_all_mixes())), ids=_ids(_all_mixes()))
def test_the_step_checks_its_inputs_once(index):
    model = TinyNet(num_classes=K, stride=8)
    images, labels = _batch(index)
    step = TrainStep(model, mix=_all_mixes()[index], cpe=ContrastivePatchLoss())
    counts = _count_checks(lambda: step(images, labels))
    # images once (check_tensor), labels once (check_labels, whose shape check is a check_tensor)
    assert counts == {"check_tensor": 2, "check_labels": 1}
    plain = TrainStep(model)
    assert _count_checks(lambda: plain(images, labels)) == {"check_tensor": 2, "check_labels": 1}


def test_cutmix_boxes_are_timms_rand_bbox_for_the_same_lambda_and_centre():
    import numpy as np

    from camkit.mix._random import _boxes_at

    differ_from_floor = 0
    for height, width in [(32, 32), (64, 48), (224, 224), (37, 53)]:
        for k in range(32):  # 32 λ × 100 centres per size: 12,800 draws
            lam = float(np.random.default_rng(k).beta(1.0, 1.0))
            np.random.seed(k)
            cy, cx = np.random.randint(0, height, 100), np.random.randint(0, width, 100)
            np.random.seed(k)
            yl, yh, xl, xh = timm_mixup.rand_bbox((height, width), lam, count=100)
            expected = torch.from_numpy(np.stack([yl, xl, yh, xh], 1)).long()
            lams = torch.full((100,), lam, dtype=torch.float64)
            centre = torch.from_numpy(cy), torch.from_numpy(cx)
            assert torch.equal(_boxes_at(lams, *centre, height, width, far_edge_up=True), expected)
            floor = _boxes_at(lams, *centre, height, width)  # the SnapMix authors' boxes
            differ_from_floor += int((floor != expected).any(1).sum())
    assert differ_from_floor > 1000  # the two conventions are not the same boxes


def test_cutmix_draws_boxes_with_timms_far_edge():
    params = CutMix(K, mode="sample", generator=torch.Generator().manual_seed(0)).sample(
        4096, 33, 31
    )
    box = params.box
    inside = (box[:, 0] > 0) & (box[:, 2] < 33)  # unclipped: the box is the full cut long
    heights = (box[:, 2] - box[:, 0])[inside]
    assert (heights % 2 == 1).any()  # an odd cut keeps its length (cut // 2 twice is even)


def _timm_elem(monkeypatch, mixer, images, labels, seed):
    """timm's ``mode="elem"`` batch and targets, with each image's λ and box as timm drew them."""
    seen = {"boxes": []}
    bbox = timm_mixup.cutmix_bbox_and_lam
    per_elem = mixer._params_per_elem

    def record_bbox(*args, **kwargs):
        out = bbox(*args, **kwargs)
        seen["boxes"].append(out[0])
        return out

    def record_elem(batch_size):
        seen["lam"], use_cutmix = per_elem(batch_size)
        return seen["lam"].copy(), use_cutmix

    monkeypatch.setattr(timm_mixup, "cutmix_bbox_and_lam", record_bbox)
    monkeypatch.setattr(mixer, "_params_per_elem", record_elem)
    import numpy as np

    np.random.seed(seed)
    mixed, soft = mixer(images.clone(), labels.clone())
    return mixed, soft, seen


@pytest.mark.parametrize("size", [(32, 32), (17, 29), (64, 48), (96, 160)])
def test_per_image_mixes_equal_timms_elem_mode_bit_for_bit(monkeypatch, size):
    gen = torch.Generator().manual_seed(size[0])
    images = torch.randn(8, 3, *size, generator=gen)
    labels = torch.randint(0, K, (8,), generator=gen)
    flip = torch.arange(8).flip(0)
    timm_cut = TimmMixup(
        mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=K, mode="elem"
    )
    expected, target, seen = _timm_elem(monkeypatch, timm_cut, images, labels, size[1])
    boxes = torch.tensor([[int(yl), int(xl), int(yh), int(xh)] for yl, yh, xl, xh in seen["boxes"]])
    params = CutMixParams(flip, boxes, torch.ones(8, dtype=torch.bool))
    cutmix = CutMix(K, mode="sample")
    assert torch.equal(cutmix.apply(images, params), expected)
    assert torch.equal(cutmix.targets(labels, None, params, size), target)
    monkeypatch.undo()
    timm_blend = TimmMixup(
        mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=K, mode="elem"
    )
    expected, target, seen = _timm_elem(monkeypatch, timm_blend, images, labels, size[1])
    params = MixupParams(flip, torch.from_numpy(seen["lam"]).double())
    mixup = Mixup(K, mode="sample")
    assert torch.equal(mixup.apply(images, params), expected)
    assert torch.equal(mixup.targets(labels, None, params, size), target)
