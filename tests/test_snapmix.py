import pytest
import torch
import torch.nn.functional as F

from camkit import SnapMix, normalize_cams, snapmix
from camkit.snapmix import (
    SnapMixParams,
    _box_cam_shares,
    apply_snapmix,
    box_masks,
    sample_beta,
    sample_boxes,
    sample_snapmix_params,
)


def reference_snapmix(images, labels, cams, params, num_classes, same_label_bonus=False):
    """Per-sample loop in float64: crop, F.interpolate, paste; CAM shares by explicit sums."""
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
            crop, size=(ya1 - ya0, xa1 - xa0), mode="bilinear", align_corners=False
        )[0]
        sa = up[i] - up[i].min()
        sb = up[j] - up[j].min()
        sa = sa / sa.sum() if sa.sum() > 0 else torch.full_like(sa, 1 / (h * w))
        sb = sb / sb.sum() if sb.sum() > 0 else torch.full_like(sb, 1 / (h * w))
        rho_a = 1 - float(sa[ya0:ya1, xa0:xa1].sum())
        rho_b = float(sb[yb0:yb1, xb0:xb1].sum())
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
        params = sample_snapmix_params(
            batch, 24, 20, box_mode=box_mode, generator=torch.Generator().manual_seed(seed)
        )
        mixed, soft = apply_snapmix(images, labels, cams, params, 4)
        ref_mixed, ref_soft = reference_snapmix(images, labels, cams, params, 4)
        torch.testing.assert_close(mixed.double(), ref_mixed, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(soft.double(), ref_soft, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("box_mode", ["batch", "sample"])
def test_mixed_coins_take_the_general_path_and_match_reference(box_mode):
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(6, 3, 24, 20, generator=gen)
    labels = torch.randint(0, 3, (6,), generator=gen)
    cams = torch.randn(6, 3, 3, generator=gen)
    params = sample_snapmix_params(6, 24, 20, box_mode=box_mode, generator=gen)
    params = params._replace(apply=params.apply & (torch.arange(6) % 2 == 0))
    mixed, soft = apply_snapmix(images, labels, cams, params, 3)
    ref_mixed, ref_soft = reference_snapmix(images, labels, cams, params, 3)
    torch.testing.assert_close(mixed.double(), ref_mixed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(soft.double(), ref_soft, rtol=1e-5, atol=1e-6)


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
    boxes = sample_boxes(
        torch.rand(5, generator=gen, dtype=torch.float64), height, width, generator=gen
    )
    up = F.interpolate(cams[:, None], size=image_size, mode="bilinear", align_corners=False)[:, 0]
    dist = normalize_cams(up, "distribution")
    expected = (dist * box_masks(boxes, height, width)).sum((1, 2))
    shares = _box_cam_shares(cams.float(), boxes, height, width)
    torch.testing.assert_close(shares.double(), expected, rtol=1e-4, atol=1e-5)


def test_pixels_outside_box_untouched_and_weights_are_cam_shares():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 32, 32, generator=gen)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    cams = torch.rand(6, 8, 8, generator=gen)
    params = sample_snapmix_params(6, 32, 32, box_mode="sample", generator=gen)
    mixed, soft = apply_snapmix(images, labels, cams, params, 2)
    inside = box_masks(params.box_a, 32, 32) & params.apply[:, None, None]
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
    assert torch.equal(mixed, images) and torch.equal(images, before)
    assert torch.equal(soft, F.one_hot(labels, 3).float())


def test_deterministic_under_generator_and_inputs_not_modified():
    images, labels, cams = torch.randn(8, 3, 16, 16), torch.randint(0, 2, (8,)), torch.rand(8, 4, 4)
    copies = images.clone(), labels.clone(), cams.clone()
    mix = [
        SnapMix(2, generator=torch.Generator().manual_seed(s), box_mode="sample") for s in (1, 1, 2)
    ]
    out = [m(images, labels, cams) for m in mix]
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert not torch.equal(out[0][0], out[2][0])
    for original, now in zip(copies, (images, labels, cams), strict=True):
        assert torch.equal(original, now)


def test_constant_cams_fall_back_to_area_ratio_without_nan():
    images, labels = torch.randn(4, 3, 20, 20), torch.tensor([0, 1, 2, 3])
    gen = torch.Generator().manual_seed(5)
    params = sample_snapmix_params(4, 20, 20, box_mode="sample", generator=gen)
    _, soft = apply_snapmix(images, labels, torch.ones(4, 5, 5), params, 5)
    _, soft_area = apply_snapmix(
        images, labels, torch.rand(4, 5, 5), params, 5, label_weights="area"
    )
    assert torch.isfinite(soft).all()
    torch.testing.assert_close(soft, soft_area)
    area_a = (params.box_a[:, 2] - params.box_a[:, 0]) * (params.box_a[:, 3] - params.box_a[:, 1])
    area_b = (params.box_b[:, 2] - params.box_b[:, 0]) * (params.box_b[:, 3] - params.box_b[:, 1])
    rho_a = torch.where(params.apply, 1 - area_a / 400.0, 1.0)
    rho_b = torch.where(params.apply, area_b / 400.0, 0.0)
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
    params = sample_snapmix_params(
        6, 16, 16, box_mode="sample", generator=torch.Generator().manual_seed(0)
    )
    _, plain = apply_snapmix(images, labels, cams, params, 2)
    _, bonus = apply_snapmix(images, labels, cams, params, 2, same_label_bonus=True)
    _, ref = reference_snapmix(images, labels, cams, params, 2, same_label_bonus=True)
    torch.testing.assert_close(bonus.double(), ref, rtol=1e-5, atol=1e-6)
    same = (labels == labels[params.perm]) & params.apply
    torch.testing.assert_close(bonus[same], 2 * plain[same])
    torch.testing.assert_close(bonus[~same], plain[~same])


def test_batch_mode_shares_one_box_pair():
    params = sample_snapmix_params(
        5, 32, 32, box_mode="batch", generator=torch.Generator().manual_seed(1)
    )
    assert (params.box_a == params.box_a[0]).all() and (params.box_b == params.box_b[0]).all()
    assert torch.equal(torch.sort(params.perm).values, torch.arange(5))


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
def test_beta_sampler_moments(alpha):
    x = sample_beta(alpha, (200_000,), generator=torch.Generator().manual_seed(0)).double()
    assert (x >= 0).all() and (x <= 1).all()
    assert abs(float(x.mean()) - 0.5) < 0.005
    assert abs(float(x.var()) - 1 / (4 * (2 * alpha + 1))) < 0.003


def test_sample_boxes_follow_cutmix_geometry():
    lam = torch.tensor([0.0, 0.75, 1.0])
    boxes = sample_boxes(lam, 40, 40, generator=torch.Generator().manual_seed(0))
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes >= 0).all() and (boxes[:, [2, 3]] <= 40).all()
    assert heights[2] == 0 and widths[2] == 0
    assert (heights[1] <= 20) and (widths[1] <= 20)  # sqrt(1 - 0.75) * 40 = 20


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
        apply_snapmix(images, labels, cams, bad, 2)


@pytest.mark.parametrize("bad", [-1, 2])
def test_labels_outside_the_classes_are_rejected(bad):
    images, cams, labels = torch.randn(2, 3, 8, 8), torch.rand(2, 2, 2), torch.tensor([0, bad])
    match = r"^labels: expected class indices in \[0, 1\]"
    with pytest.raises(ValueError, match=match):
        SnapMix(2)(images, labels, cams)
    with pytest.raises(ValueError, match=match):
        snapmix(images, labels, cams, 2, box_mode="sample")
    with pytest.raises(ValueError, match=match):
        apply_snapmix(images, labels, cams, sample_snapmix_params(2, 8, 8, prob=0.0), 2)
