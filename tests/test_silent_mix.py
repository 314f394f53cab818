"""Nothing silent in the mix protocol and the training step (issue 28): hand-built draws are
checked for their values, empty and non-finite batches are refused, and every refusal names the
argument, what was expected and what was given."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

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
    soft_cross_entropy,
)
from tests.helpers import TinyNet, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
__all__ = ["one_thread"]


def _batch(b: int = 4, size: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=gen), torch.tensor([0, 1, 1, 0, 1, 0][:b])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _steps(model: nn.Module) -> list[TrainStep]:
    """Every variant of the step: plain, CPE, each kind of mix, with and without CPE."""
    cpe = ContrastivePatchLoss()
    mixes = [
        None,
        CutMix(2, generator=_gen()),
        Mixup(2, generator=_gen()),
        SnapMix(2, generator=_gen()),
        SnapMix(2, generator=_gen(), cam_source="mixed"),
        AttentiveCutMix(2, top_k=1, generator=_gen()),
    ]
    return [TrainStep(model, mix=mix, cpe=c) for mix in mixes for c in (None, cpe)]


# -- silent wrong answers --------------------------------------------------------------------


def test_collate_refuses_fractional_labels_and_keeps_whole_ones():
    samples = [(torch.randn(3, 8, 8), label) for label in (0.7, 1.0, 0.0, 1.0)]
    with pytest.raises(ValueError, match=r"labels: expected integer class indices, got 1 .*0\.7"):
        MixCollate(CutMix(2))(samples)
    whole = [(image, float(i % 2)) for i, (image, _) in enumerate(samples)]
    _, labels, _ = MixCollate(CutMix(2))(whole)
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("lam", [2.0, -0.5, float("nan"), float("inf")])
def test_mixup_params_out_of_range_are_refused(lam):
    images, labels = _batch()
    params = MixupParams(torch.arange(4), torch.tensor([0.5, lam, 0.5, 0.5], dtype=torch.float64))
    mix = Mixup(2)
    with pytest.raises(ValueError, match=r"params\.lam: expected values in \[0\.0, 1\.0\], got 1 "):
        mix.targets(labels, None, params, (32, 32))
    with pytest.raises(ValueError, match=r"params\.lam: expected values in \[0\.0, 1\.0\]"):
        mix.apply(images, params)


def test_mixup_shared_weight_must_agree_with_the_tensor():
    images, _ = _batch()
    params = MixupParams(torch.arange(4), torch.full((4,), 0.25, dtype=torch.float64), 0.75)
    with pytest.raises(ValueError, match=r"params\.lam \(equal to params\.shared_lam\)"):
        Mixup(2).apply(images, params)
    with pytest.raises(
        ValueError, match=r"params\.shared_lam: expected a value in \[0, 1\], got 2"
    ):
        Mixup(2).apply(images, params._replace(shared_lam=2.0))


@pytest.mark.parametrize(
    "make",
    [
        lambda perm: CutMixParams(perm, torch.zeros(4, 4, dtype=torch.long), torch.ones(4) > 0),
        lambda perm: MixupParams(perm, torch.full((4,), 0.5, dtype=torch.float64)),
        lambda perm: CellMixParams(perm, torch.zeros(4, 2, 2, dtype=torch.bool)),
    ],
)
@pytest.mark.parametrize("perm", [[0, 1, 2, 9], [0, 0, 1, 2], [-1, 0, 1, 2]])
def test_partners_must_be_a_permutation_of_the_batch(make, perm):
    images, labels = _batch()
    params = make(torch.tensor(perm))
    mix = {CutMixParams: CutMix(2), MixupParams: Mixup(2), CellMixParams: AttentiveCutMix(2)}[
        type(params)
    ]
    match = r"params\.perm: expected a permutation of 0 … 3 \(each image's partner\), got \["
    with pytest.raises(ValueError, match=match):
        mix.apply(images, params)
    with pytest.raises(ValueError, match=match):
        mix.targets(labels, torch.rand(4, 2, 2), params, (32, 32))


def test_snapmix_params_need_non_empty_boxes_where_they_mix_and_a_consistent_shared_box():
    images, labels = _batch()
    params = SnapMix(2, generator=_gen(1)).sample(4, 32, 32)
    assert params.shared_box[2]
    empty = params._replace(box_b=torch.tensor([[3, 3, 3, 9]] * 4), shared_box=None)
    with pytest.raises(ValueError, match=r"params\.box_b: expected a non-empty box wherever apply"):
        SnapMix(2).apply(images, empty)
    edited = params._replace(apply=torch.tensor([True, False, True, True]))
    with pytest.raises(ValueError, match=r"params\.shared_box: expected mixed = True in every row"):
        SnapMix(2).apply(images, edited)
    moved = params._replace(box_a=params.box_a + 1)
    with pytest.raises(ValueError, match=r"set shared_box=None"):
        SnapMix(2).targets(labels, torch.rand(4, 2, 2), moved, (64, 64))
    with pytest.raises(TypeError, match=r"params\.shared_box: expected None or"):
        SnapMix(2).apply(images, params._replace(shared_box=((0, 0, 1, 1), True)))


# -- errors that say what is wrong -------------------------------------------------------------


@pytest.mark.parametrize(
    "mix", [SnapMix(2), CutMix(2), SnapMix(2, box_mode="sample"), CutMix(2, mode="sample")]
)
def test_draws_for_another_image_size_are_named(mix):
    images, labels = _batch(size=32)
    big = next(p for p in (mix.sample(4, 64, 64) for _ in range(50)) if (p[1] > 32).any())
    field = "box_a" if isinstance(mix, SnapMix) else "box"
    match = (
        rf"params\.{field}: expected boxes \(y0, x0, y1, x1\) inside the 32×32 image, "
        r"0 ≤ y0 ≤ y1 ≤ 32 and 0 ≤ x0 ≤ x1 ≤ 32, got \(.*\) in rows .*were the draws made for "
        "another image size"
    )
    cams = torch.rand(4, 2, 2) if isinstance(mix, SnapMix) else None
    with pytest.raises(ValueError, match=match):
        mix(images, labels, cams, big)
    with pytest.raises(ValueError, match=match):
        mix.apply(images, big)
    small = mix.sample(4, 32, 32)
    with pytest.raises(ValueError, match=r"inside the 8×8 image"):
        mix.targets(labels, cams, small, (8, 8))
    with pytest.raises(ValueError, match=r"size: expected \(H, W\), two ints >= 1, got 32"):
        mix.targets(labels, cams, small, 32)


def test_a_mix_subclass_missing_a_hook_is_named():
    class Half(Mix):
        def _draw(self, batch_size, height, width, cams, device, generator):
            return None

    with pytest.raises(TypeError, match=r"Half: .* missing: _apply, _weigh, check_params"):
        Half(object())
    with pytest.raises(NotImplementedError, match=r"CutMix\._apply\(images, params\)"):
        Mix._apply(CutMix(2), *_batch()[:1], None)


def test_a_needs_cams_typo_is_named_where_it_is_made():
    with pytest.raises(ValueError, match=r"Typo\.needs_cams: expected one of 'none', 'unmixed'"):

        class Typo(CutMix):
            needs_cams = "unmixd"

    class Computed(CutMix):
        @property
        def needs_cams(self):
            return "mixd"

    with pytest.raises(ValueError, match=r"Computed\.needs_cams: .* got 'mixd'"):
        Computed(2)


def test_a_subclass_that_skips_super_init_is_told_so():
    class Forgetful(CutMix):
        def __init__(self):
            self.extra = 1

    images, labels = _batch()
    with pytest.raises(AttributeError, match=r"Forgetful: the mix was never initialised .* must "):
        Forgetful()(images, labels)


@pytest.mark.parametrize("make", [lambda m: None, lambda m: CutMix(2), lambda m: SnapMix(2)])
def test_every_step_names_wrong_channels_and_dtype_the_same_way(make):
    images, labels = _batch()
    step = TrainStep(TinyNet(), mix=make(None))
    with pytest.raises(ValueError, match=r"images: expected 3 channels \(the input layer of Tiny"):
        step(images[:, :1], labels)
    with pytest.raises(TypeError, match=r"images: expected dtype torch\.float32 \(the model's"):
        step(images.double(), labels)


def test_cams_of_a_model_on_the_meta_device_are_refused_at_construction():
    model = TinyNet().to("meta")
    match = r"model: the parameters of TinyNet are on the meta device .* materialise"
    with pytest.raises(ValueError, match=match):
        TrainStep(model, cpe=ContrastivePatchLoss())
    with pytest.raises(ValueError, match=match):
        TrainStep(model, mix=SnapMix(2))


def test_a_batch_of_one_on_a_one_cell_map_is_explained():
    model = TinyNet(stride=32).train()  # a 1×1 map at 32 px: BatchNorm sees one value
    images, labels = _batch(b=1)
    for step in (TrainStep(model), TrainStep(model, mix=SnapMix(2))):
        with pytest.raises(ValueError, match=r"images: a batch of 1 reaches a BatchNorm layer"):
            step(images, labels)


def test_labels_of_a_model_without_num_classes_are_checked_against_its_logits():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    images, _ = _batch()
    bad = torch.tensor([0, 1, 5, 0])
    match = r"labels: expected class indices in \[0, 1\], got values in \[0, 5\]"
    with pytest.raises(ValueError, match=match):
        TrainStep(Plain())(images, bad)
    with pytest.raises(ValueError, match=match):
        TrainStep(Plain(), mix=CutMix(2))(images, bad)


# -- NaN instead of an error -------------------------------------------------------------------


def test_an_empty_batch_is_refused_by_every_step_and_the_criterion():
    model = TinyNet(stride=8)
    empty, labels = torch.randn(0, 3, 32, 32), torch.zeros(0, dtype=torch.long)
    for step in _steps(model):
        with pytest.raises(ValueError, match=r"images: expected a batch of at least 1 image"):
            step(empty, labels)
    with pytest.raises(ValueError, match=r"logits: expected at least one row \(B >= 1\)"):
        soft_cross_entropy(torch.zeros(0, 2), torch.zeros(0, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_images_are_refused_everywhere(bad):
    images, labels = _batch()
    images[2, 1, 5, 7] = bad
    match = r"images: expected finite values, got 1 NaN or infinite of 12288"
    model = TinyNet(stride=8)
    for step in _steps(model):
        with pytest.raises(ValueError, match=match):
            step(images, labels)
    for mix in (CutMix(2), Mixup(2), SnapMix(2)):
        cams = torch.rand(4, 4, 4) if mix.needs_cams == "unmixed" else None
        with pytest.raises(ValueError, match=match):
            mix(images, labels, cams)
        with pytest.raises(ValueError, match=match):
            mix.mix_images(images)
    ext = CAMExtractor(model)
    with pytest.raises(ValueError, match=match):
        ext(images, labels)
    with pytest.raises(ValueError, match=match):
        ext.forward_frozen(images, labels)
    with pytest.raises(ValueError, match=match):
        MixCollate(CutMix(2))(list(zip(images, labels, strict=True)))


def test_the_finiteness_check_can_be_switched_off():
    images, labels = _batch()
    images[0, 0, 0, 0] = float("nan")
    step = TrainStep(TinyNet(), check_finite=False)
    assert "check_finite=False" in repr(step)
    assert math.isnan(float(step(images, labels).loss.detach()))  # what the check prevents
    with pytest.raises(TypeError, match=r"check_finite: expected a bool, got int"):
        TrainStep(TinyNet(), check_finite=1)


def test_the_cpe_refuses_non_finite_features():
    from camkit import contrastive_patch_loss

    features = torch.randn(2, 4, 3, 3)
    features[1, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"features: expected finite values, got 1 NaN or inf"):
        contrastive_patch_loss(features, torch.rand(2, 3, 3))
