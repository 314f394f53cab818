import numpy as np
import pytest
import torch
import torch.nn.functional as F

import camkit.mix._snapmix as snapmix_module
from camkit import SnapMix, SnapMixParams, normalize_cams, snapmix
from camkit.mix._ops import _box_cam_shares, _box_masks, mix_weights, paste, soft_targets
from camkit.mix._random import _sample_beta_device, _sample_beta_host, _sample_boxes


def draw(batch, height, width, seed, **settings):
    """SnapMix draws from a seeded CPU generator."""
    mix = SnapMix(2, generator=torch.Generator().manual_seed(seed), **settings)
    return mix.sample(batch, height, width)


def reference_snapmix(images, labels, cams, params, num_classes, same_label_bonus=False):
    """Per-sample loop in float64: crop, F.interpolate (the authors' align_corners=True), paste;
    CAM shares by explicit sums."""
    b, _, h, w = images.shape
    mixed = images.clone().double()
    soft = torch.zeros(b, num_classes, dtype=torch.float64)
    up = F.interpolate(cams[:, None].double(), size=(h, w), mode="bilinear", align_corners=False)[
        :, 0
    ]
    for i in range(b):
        j = int(params.perm[i])
        ya0, xa0, ya1, xa1 = (int(v) for v in params.box_a[i])
        yb0, xb0, yb1, xb1 = (int(v) for v in params.box_b[i])
        if not bool(params.apply[i]):
            soft[i, labels[i]] = 1.0
            continue
        crop = images[j : j + 1, :, yb0:yb1, xb0:xb1].double()
        mixed[i, :, ya0:ya1, xa0:xa1] = F.interpolate(
            crop, size=(ya1 - ya0, xa1 - xa0), mode="bilinear", align_corners=True
        )[0]
        sa = up[i] - up[i].min()
        sb = up[j] - up[j].min()
        sa = sa / sa.sum() if sa.sum() > 0 else torch.full_like(sa, 1 / (h * w))
        rho_a = 1 - float(sa[ya0:ya1, xa0:xa1].sum())
        if sb.sum() > 0:
            rho_b = float((sb / sb.sum())[yb0:yb1, xb0:xb1].sum())
        else:  # a constant map: box A's share, as the authors' code
            rho_b = (ya1 - ya0) * (xa1 - xa0) / (h * w)
        if same_label_bonus and labels[i] == labels[j]:
            rho_a = rho_b = rho_a + rho_b
        soft[i, labels[i]] += rho_a
        soft[i, labels[j]] += rho_b
    return mixed, soft


@pytest.mark.parametrize("box_mode", ["batch", "sample"])
@pytest.mark.parametrize("batch", [1, 7])
def test_matches_slow_reference(box_mode, batch):
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(batch, 3, 24, 20, generator=gen)
    labels = torch.randint(0, 4, (batch,), generator=gen)
    cams = torch.randn(batch, 5, 4, generator=gen)
    for seed in range(5):
        params = draw(batch, 24, 20, seed, box_mode=box_mode)
        assert (params.shared_box is not None) == (box_mode == "batch")
        mixed, soft = snapmix(images, labels, cams, 4, params=params)
        ref_mixed, ref_soft = reference_snapmix(images, labels, cams, params, 4)
        torch.testing.assert_close(mixed.double(), ref_mixed, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(soft.double(), ref_soft, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("box_mode", ["batch", "sample"])
def test_mixed_coins_take_the_general_path_and_match_reference(box_mode):
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(6, 3, 24, 20, generator=gen)
    labels = torch.randint(0, 3, (6,), generator=gen)
    cams = torch.randn(6, 3, 3, generator=gen)
    params = SnapMix(3, generator=gen, box_mode=box_mode).sample(6, 24, 20)
    # edited tensors: the host copy of the shared box no longer holds, so it is dropped
    params = params._replace(apply=params.apply & (torch.arange(6) % 2 == 0), shared_box=None)
    mixed, soft = snapmix(images, labels, cams, 3, params=params)
    ref_mixed, ref_soft = reference_snapmix(images, labels, cams, params, 3)
    torch.testing.assert_close(mixed.double(), ref_mixed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(soft.double(), ref_soft, rtol=1e-5, atol=1e-6)


def test_shared_box_is_recorded_at_sampling_and_matches_the_tensors():
    for seed in range(8):
        params = draw(5, 30, 26, seed, prob=0.7)
        box_a, box_b, mixed_any = params.shared_box
        assert params.box_a.tolist() == [list(box_a)] * 5
        assert params.box_b.tolist() == [list(box_b)] * 5
        assert params.apply.tolist() == [mixed_any] * 5
    assert draw(5, 30, 26, 0, box_mode="sample").shared_box is None


def test_host_slice_path_equals_the_general_path():
    gen = torch.Generator().manual_seed(7)
    images = torch.randn(8, 3, 40, 36, generator=gen)
    labels = torch.randint(0, 3, (8,), generator=gen)
    cams = torch.randn(8, 6, 5, generator=gen)
    for seed in range(6):
        params = draw(8, 40, 36, seed)
        assert params.shared_box is not None and params.shared_box[2]
        fast = snapmix(images, labels, cams, 3, params=params)
        general = snapmix(images, labels, cams, 3, params=params._replace(shared_box=None))
        # float32 both ways (F.interpolate vs grid_sample coordinates): rounding only
        torch.testing.assert_close(fast[0], general[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(fast[1], general[1])


def test_host_path_agrees_across_layouts_dtypes_and_autograd():
    """The in-place resize (float32, contiguous, no autograd) and the fallback agree."""
    images = torch.randn(6, 3, 30, 28, generator=torch.Generator().manual_seed(1))
    params = next(p for p in (draw(6, 30, 28, s) for s in range(20)) if p.shared_box[2])
    box_a, box_b, _ = params.shared_box
    assert (box_a[2] - box_a[0], box_a[3] - box_a[1]) != (box_b[2] - box_b[0], box_b[3] - box_b[1])
    expected = paste(images, params)
    channels_last = paste(images.contiguous(memory_format=torch.channels_last), params)
    assert torch.equal(channels_last, expected)
    leaf = images.clone().requires_grad_()
    mixed = paste(leaf, params)
    assert torch.equal(mixed, expected) and mixed.requires_grad
    mixed.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    # a pixel of box A in image 0 that no box B covers was overwritten: it gets no gradient
    overwritten = _box_masks(torch.tensor([box_a]), 30, 28)[0]
    overwritten &= ~_box_masks(torch.tensor([box_b]), 30, 28)[0]
    assert overwritten.any() and (leaf.grad[0, :, overwritten] == 0).all()
    assert (leaf.grad[0, :, ~overwritten] > 0).all()
    half = paste(images.bfloat16(), params)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize(
    ("cam_size", "image_size"),
    [
        ((7, 7), (224, 224)),
        ((7, 7), (100, 37)),
        ((5, 4), (5, 4)),
        ((10, 9), (6, 7)),
        ((1, 3), (8, 8)),
    ],
)
def test_box_shares_at_cam_resolution_equal_upsampled_sums(cam_size, image_size):
    gen = torch.Generator().manual_seed(0)
    height, width = image_size
    # a large offset: the shares must not lose precision to the min subtraction
    cams = (1000.0 + torch.randn(5, *cam_size, generator=gen)).double()
    boxes = _sample_boxes(torch.rand(5, generator=gen, dtype=torch.float64), height, width, gen)
    up = F.interpolate(cams[:, None], size=image_size, mode="bilinear", align_corners=False)[:, 0]
    dist = normalize_cams(up, "distribution")
    expected = (dist * _box_masks(boxes, height, width)).sum((1, 2))
    shares = _box_cam_shares(cams.float(), boxes, height, width)
    torch.testing.assert_close(shares.double(), expected, rtol=1e-4, atol=1e-5)


def test_pixels_outside_box_untouched_and_weights_are_cam_shares():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 32, 32, generator=gen)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    cams = torch.rand(6, 8, 8, generator=gen)
    params = SnapMix(2, generator=gen, box_mode="sample").sample(6, 32, 32)
    mixed, soft = snapmix(images, labels, cams, 2, params=params)
    inside = _box_masks(params.box_a, 32, 32) & params.apply[:, None, None]
    assert torch.equal(
        mixed.masked_select(~inside[:, None]), images.masked_select(~inside[:, None])
    )
    assert params.apply.any()
    _, ref_soft = reference_snapmix(images, labels, cams, params, 2)
    torch.testing.assert_close(soft.double(), ref_soft, rtol=1e-5, atol=1e-6)


def test_prob_zero_is_identity():
    images, labels = torch.randn(5, 3, 16, 16), torch.tensor([0, 2, 1, 1, 0])
    before = images.clone()
    mixed, soft = snapmix(images, labels, torch.rand(5, 4, 4), 3, prob=0.0)
    assert mixed is images and torch.equal(images, before)  # the host path copies nothing
    assert torch.equal(soft, F.one_hot(labels, 3).float())


def test_deterministic_under_generator_and_inputs_not_modified():
    images, labels, cams = torch.randn(8, 3, 16, 16), torch.randint(0, 2, (8,)), torch.rand(8, 4, 4)
    copies = images.clone(), labels.clone(), cams.clone()
    for box_mode in ("batch", "sample"):
        mix = [
            SnapMix(2, generator=torch.Generator().manual_seed(s), box_mode=box_mode)
            for s in (1, 1, 2)
        ]
        out = [m(images, labels, cams) for m in mix]
        assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
        assert not torch.equal(out[0][0], out[2][0])
    for original, now in zip(copies, (images, labels, cams), strict=True):
        assert torch.equal(original, now)


def test_global_seed_makes_draws_without_a_generator_reproducible():
    torch.manual_seed(11)
    first = SnapMix(2).sample(6, 20, 20)
    torch.manual_seed(11)
    second = SnapMix(2).sample(6, 20, 20)
    assert first.shared_box == second.shared_box
    assert all(torch.equal(a, b) for a, b in zip(first[:4], second[:4], strict=True))


def test_sample_then_replay_equals_a_fresh_draw_and_the_function():
    images, labels, cams = torch.randn(6, 3, 24, 24), torch.randint(0, 3, (6,)), torch.rand(6, 3, 3)
    for box_mode in ("batch", "sample"):
        settings = {"alpha": 0.5, "box_mode": box_mode, "same_label_bonus": True}
        fresh = SnapMix(3, generator=torch.Generator().manual_seed(5), **settings)
        mixed, soft = fresh(images, labels, cams)
        mix = SnapMix(3, generator=torch.Generator().manual_seed(5), **settings)
        params = mix.sample(6, 24, 24)
        replayed = mix(images, labels, cams, params)
        functional = snapmix(images, labels, cams, 3, params=params, **settings)
        for out in (replayed, functional):
            assert torch.equal(out[0], mixed) and torch.equal(out[1], soft)


def test_paste_and_weights_compose_to_snapmix():
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(7, 3, 28, 24, generator=gen)
    labels = torch.randint(0, 4, (7,), generator=gen)
    cams = torch.randn(7, 4, 3, generator=gen)
    for box_mode in ("batch", "sample"):
        params = SnapMix(4, generator=gen, box_mode=box_mode, prob=0.8).sample(7, 28, 24)
        mixed, soft = snapmix(images, labels, cams, 4, params=params, same_label_bonus=True)
        assert torch.equal(paste(images, params), mixed)
        rho_a, rho_b = mix_weights(cams, params, (28, 24))
        composed = soft_targets(
            labels, params.perm, rho_a, rho_b, 4, apply=params.apply, same_label_bonus=True
        )
        assert torch.equal(composed, soft)


def test_weights_from_the_mixed_batch_read_both_classes_over_box_a():
    """The zero-extra-forward weights: the mixed image's CAMs for ``y_a`` and ``y_perm``."""
    gen = torch.Generator().manual_seed(9)
    params = SnapMix(3, generator=gen, box_mode="sample", prob=0.6).sample(6, 30, 20)
    assert params.apply.any() and not params.apply.all()
    cams = torch.randn(6, 2, 5, 4, generator=gen)  # channel 0: class y_a, 1: class y_perm
    rho_a, rho_b = mix_weights(cams, params, (30, 20), source="mixed")
    up = F.interpolate(cams.double(), size=(30, 20), mode="bilinear", align_corners=False)
    dist = normalize_cams(up.flatten(0, 1), "distribution").view_as(up)
    inside = _box_masks(params.box_a, 30, 20)
    share = (dist * inside[:, None]).sum((2, 3))
    expected_a = torch.where(params.apply, 1 - share[:, 0], 1.0)
    expected_b = torch.where(params.apply, share[:, 1], 0.0)
    torch.testing.assert_close(rho_a.double(), expected_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rho_b.double(), expected_b, rtol=1e-5, atol=1e-6)


def test_constant_cams_fall_back_to_area_ratio_without_nan():
    images, labels = torch.randn(4, 3, 20, 20), torch.tensor([0, 1, 2, 3])
    params = draw(4, 20, 20, 5, box_mode="sample")
    _, soft = snapmix(images, labels, torch.ones(4, 5, 5), 5, params=params)
    _, soft_area = snapmix(
        images, labels, torch.rand(4, 5, 5), 5, params=params, label_weights="area"
    )
    assert torch.isfinite(soft).all()
    torch.testing.assert_close(soft, soft_area)
    area_a = (params.box_a[:, 2] - params.box_a[:, 0]) * (params.box_a[:, 3] - params.box_a[:, 1])
    area_b = (params.box_b[:, 2] - params.box_b[:, 0]) * (params.box_b[:, 3] - params.box_b[:, 1])
    assert (area_a != area_b).any()
    # the authors' fallback: box A's share for both weights (the mixed image's area ratios)
    rho_a = torch.where(params.apply, 1 - area_a / 400.0, 1.0)
    rho_b = torch.where(params.apply, area_a / 400.0, 0.0)
    perm = params.perm
    expected = torch.zeros(4, 5)
    expected[torch.arange(4), labels] += rho_a
    expected[torch.arange(4), labels[perm]] += rho_b
    torch.testing.assert_close(soft, expected)


def test_same_label_bonus():
    images, labels, cams = (
        torch.randn(6, 3, 16, 16),
        torch.tensor([1, 1, 1, 0, 0, 1]),
        torch.rand(6, 4, 4),
    )
    params = draw(6, 16, 16, 0, box_mode="sample")
    _, plain = snapmix(images, labels, cams, 2, params=params)
    _, bonus = snapmix(images, labels, cams, 2, params=params, same_label_bonus=True)
    _, ref = reference_snapmix(images, labels, cams, params, 2, same_label_bonus=True)
    torch.testing.assert_close(bonus.double(), ref, rtol=1e-5, atol=1e-6)
    same = (labels == labels[params.perm]) & params.apply
    torch.testing.assert_close(bonus[same], 2 * plain[same])
    torch.testing.assert_close(bonus[~same], plain[~same])


def test_batch_mode_shares_one_box_pair():
    params = draw(5, 32, 32, 1)
    assert (params.box_a == params.box_a[0]).all() and (params.box_b == params.box_b[0]).all()
    assert torch.equal(torch.sort(params.perm).values, torch.arange(5))


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
def test_beta_samplers_moments(alpha):
    gen = torch.Generator().manual_seed(0)
    device = _sample_beta_device(alpha, (200_000,), gen, torch.device("cpu")).double()
    host = _sample_beta_host(alpha, (200_000,), gen)
    for x in (device, host):
        assert (x >= 0).all() and (x <= 1).all()
        assert abs(float(x.mean()) - 0.5) < 0.005
        assert abs(float(x.var()) - 1 / (4 * (2 * alpha + 1))) < 0.003


def test_host_beta_is_numpys_seeded_from_the_torch_generator():
    got = _sample_beta_host(0.7, (3,), torch.Generator().manual_seed(4))
    seed = torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(4))
    expected = np.random.default_rng(seed.tolist()).beta(0.7, 0.7, size=3)
    assert got.dtype == torch.float64 and got.tolist() == expected.tolist()


def test_sample_boxes_follow_cutmix_geometry():
    lam = torch.tensor([0.0, 0.75, 1.0])
    boxes = _sample_boxes(lam, 40, 40, torch.Generator().manual_seed(0))
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes >= 0).all() and (boxes[:, [2, 3]] <= 40).all()
    assert heights[2] == 0 and widths[2] == 0
    assert (heights[1] <= 20) and (widths[1] <= 20)  # sqrt(1 - 0.75) * 40 = 20


def test_the_settings_are_checked_once_per_call(monkeypatch):
    calls = []
    real = snapmix_module.check_positive
    monkeypatch.setattr(snapmix_module, "check_positive", lambda *a: calls.append(a) or real(*a))
    images, labels, cams = torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), torch.rand(2, 2, 2)
    mix = SnapMix(2, alpha=0.5)
    assert len(calls) == 1
    mix(images, labels, cams)
    mix(images, labels, cams, mix.sample(2, 8, 8))
    assert len(calls) == 1  # the Module's settings were validated when it was built
    snapmix(images, labels, cams, 2)
    assert len(calls) == 2  # the function validates its settings once
    with pytest.raises(AttributeError):
        mix.alpha = 2.0  # read-only: the validated settings cannot drift


def test_errors():
    images, labels, cams = torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), torch.rand(2, 2, 2)
    with pytest.raises(ValueError, match="alpha"):
        SnapMix(2, alpha=0.0)
    with pytest.raises(ValueError, match="prob"):
        SnapMix(2, prob=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        SnapMix(0)
    with pytest.raises(ValueError, match="box_mode"):
        SnapMix(2, box_mode="pixel")
    with pytest.raises(ValueError, match="label_weights"):
        snapmix(images, labels, cams, 2, label_weights="grad")
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\)"):
        snapmix(images, torch.tensor([0]), cams, 2)
    with pytest.raises(TypeError, match="labels: expected an integer tensor"):
        snapmix(images, torch.tensor([0.0, 1.0]), cams, 2)
    with pytest.raises(ValueError, match="cams: expected 2 maps"):
        snapmix(images, labels, torch.rand(3, 2, 2), 2)
    with pytest.raises(ValueError, match="images: expected a 4-D tensor"):
        snapmix(images[0], labels, cams, 2)
    bad = SnapMixParams(
        torch.arange(3), torch.zeros(3, 4).long(), torch.zeros(3, 4).long(), torch.ones(3).bool()
    )
    with pytest.raises(ValueError, match=r"params\.perm"):
        snapmix(images, labels, cams, 2, params=bad)
    with pytest.raises(TypeError, match="params: expected a SnapMixParams"):
        SnapMix(2)(images, labels, cams, tuple(bad))
    with pytest.raises(TypeError, match="batch_size"):
        SnapMix(2).sample(2.0, 8, 8)
    with pytest.raises(ValueError, match="height"):
        SnapMix(2).sample(2, 0, 8)
    with pytest.raises(ValueError, match="device: expected the generator's device"):
        SnapMix(2, generator=torch.Generator()).sample(2, 8, 8, device="meta")


@pytest.mark.parametrize("bad", [-1, 2])
def test_labels_outside_the_classes_are_rejected(bad):
    images, cams, labels = torch.randn(2, 3, 8, 8), torch.rand(2, 2, 2), torch.tensor([0, bad])
    match = r"^labels: expected class indices in \[0, 1\]"
    with pytest.raises(ValueError, match=match):
        SnapMix(2)(images, labels, cams)
    with pytest.raises(ValueError, match=match):
        snapmix(images, labels, cams, 2, box_mode="sample")
    with pytest.raises(ValueError, match=match):
        snapmix(images, labels, cams, 2, params=SnapMix(2, prob=0.0).sample(2, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_host_draws_and_device_draws_match_the_cpu():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 40, 36, generator=gen)
    labels = torch.randint(0, 3, (6,), generator=gen)
    cams = torch.randn(6, 5, 5, generator=gen)
    cuda = torch.device("cuda")
    for box_mode in ("batch", "sample"):
        params = draw(6, 40, 36, 3, box_mode=box_mode)  # host draws, replayed on the device
        expected = snapmix(images, labels, cams, 3, params=params)
        got = snapmix(images.to(cuda), labels.to(cuda), cams.to(cuda), 3, params=params)
        torch.testing.assert_close(got[0].cpu(), expected[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1].cpu(), expected[1], rtol=1e-5, atol=1e-6)

    # draws on the device (the torch Beta sampler) are reproducible with a CUDA generator
    def device_draw():
        mix = SnapMix(3, generator=torch.Generator(cuda).manual_seed(1), box_mode="sample")
        return mix.sample(6, 40, 36)

    first, second = device_draw(), device_draw()
    assert first.perm.device.type == "cuda" and first.shared_box is None
    assert all(torch.equal(a, b) for a, b in zip(first[:4], second[:4], strict=True))


@pytest.mark.parametrize("size", [(24, 20), (32, 32), (57, 41)])
@pytest.mark.parametrize("box_mode", ["batch", "sample"])
def test_paste_resizes_as_the_authors_code_and_the_flag_keeps_the_old_geometry(size, box_mode):
    from benchmarks.reference import loop_snapmix_apply, params_to_lists

    gen = torch.Generator().manual_seed(size[0])
    images = torch.randn(6, 3, *size, generator=gen)
    labels = torch.randint(0, 3, (6,), generator=gen)
    cams = torch.randn(6, 4, 5, generator=gen)
    largest = 0.0
    for seed in range(4):
        params = draw(6, *size, seed, box_mode=box_mode)
        lists = params_to_lists(params)
        for align_corners in (True, False):
            mixed, soft = snapmix(
                images, labels, cams, 3, params=params, align_corners=align_corners
            )
            ref_mixed, ref_soft = loop_snapmix_apply(
                images, labels, cams, *lists, 3, align_corners=align_corners
            )
            # the shared box is resized by the same kernel; per-image boxes by grid_sample
            tol = 0.0 if box_mode == "batch" else 1e-4
            torch.testing.assert_close(mixed, ref_mixed, rtol=tol, atol=tol)
            torch.testing.assert_close(soft, ref_soft, rtol=1e-5, atol=1e-6)
        old = snapmix(images, labels, cams, 3, params=params, align_corners=False)[0]
        largest = max(
            largest, float((snapmix(images, labels, cams, 3, params=params)[0] - old).abs().max())
        )
    assert largest > 0.1  # the two geometries are different images
    assert SnapMix(3).align_corners is True and "align_corners=True" in repr(SnapMix(3))


def test_a_constant_cam_falls_back_as_the_authors_code():
    from benchmarks.reference import loop_snapmix_apply, params_to_lists

    images, labels = torch.randn(4, 3, 20, 20), torch.tensor([0, 1, 2, 0])
    cams = torch.rand(4, 5, 5, generator=torch.Generator().manual_seed(2))
    cams[1] = 0.0  # an all-zero CAM (e.g. a ReLU map with no positive evidence)
    params = draw(4, 20, 20, 5, box_mode="sample")
    lists = params_to_lists(params)
    assert any(p == 1 and a for p, a in zip(lists[0], lists[3], strict=True))
    _, soft = snapmix(images, labels, cams, 3, params=params)
    _, released = loop_snapmix_apply(images, labels, cams, *lists, 3, constant_cam="released")
    _, uniform = loop_snapmix_apply(images, labels, cams, *lists, 3, constant_cam="uniform")
    torch.testing.assert_close(soft, released, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(soft, uniform, rtol=1e-5, atol=1e-6)
