"""SnapMix and Attentive CutMix on volumes ``(B, C, D, H, W)``.

Each is pinned against the per-volume loop reference of ``benchmarks/reference/`` (the one that
the 2-D tests use) on the same draws, a depth-1 volume against the image it holds, and the
training step on a MONAI 3-D DenseNet121 against the mix by hand.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference import loop_attentive_cutmix, loop_snapmix_apply, params_to_lists
from camkit import AttentiveCutMix, CellMixParams, SnapMix, TrainStep
from camkit.mix._ops import mix_weights
from tests.helpers import one_thread
from tests.test_volumes import TinyNet3d

pytestmark = pytest.mark.usefixtures("one_thread")
__all__ = ["one_thread"]

LABELS = torch.tensor([0, 1, 1, 0])


def _volumes(b: int = 4, size=(12, 10, 8), channels: int = 2, seed: int = 8) -> torch.Tensor:
    return torch.randn(b, channels, *size, generator=torch.Generator().manual_seed(seed))


def _cams(b: int = 4, grid=(3, 3, 2), seed: int = 9) -> torch.Tensor:
    cams = torch.randn(b, *grid, generator=torch.Generator().manual_seed(seed))
    cams[1] = 0.3  # a constant map: the fallback to the cuboid's share
    return cams


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * logits.log_softmax(1)).sum(1).mean()


def _mixed_cam_reference(volumes, labels, pair, params, num_classes):
    """The ``cam_source="mixed"`` weights through the same per-volume loop: ``ρ_a`` from channel
    0 over box A and ``ρ_b`` from channel 1 over box A, by pairing volume ``i`` with a twin
    ``B + i`` that holds channel 1 and cuts box A (its own label: ``y[perm[i]]``)."""
    b = volumes.shape[0]
    _, box_a, _, apply = params_to_lists(params)
    twins = [b + i for i in range(b)] + list(range(b))
    _, soft = loop_snapmix_apply(
        torch.cat([volumes, volumes]),
        torch.cat([labels, labels[params.perm]]),
        torch.cat([pair[:, 0], pair[:, 1]]),
        twins,
        box_a * 2,
        box_a * 2,
        apply * 2,
        num_classes,
    )
    return soft[:b]


# --- SnapMix ----------------------------------------------------------------------------------


def test_snapmix_on_volumes_equals_a_per_volume_loop():
    x, cams = _volumes(), _cams()
    pair = torch.randn(4, 2, 3, 3, 2, generator=torch.Generator().manual_seed(10))
    largest = {"shared": 0.0, "grid": 0.0, "soft": 0.0, "mixed_cams": 0.0}
    for box_mode in ("batch", "sample"):
        for align_corners in (True, False):
            for seed in range(3):
                gen = torch.Generator().manual_seed(seed)
                mix = SnapMix(2, box_mode=box_mode, align_corners=align_corners, generator=gen)
                params = mix.sample(4, 10, 8, depth=12)
                assert params.box_a.shape == params.box_b.shape == (4, 6)
                assert bool(params.apply.all())  # mixed: the comparison can fail
                lists = params_to_lists(params)
                want_mixed, want_soft = loop_snapmix_apply(
                    x, LABELS, cams, *lists, 2, align_corners=align_corners,
                    constant_cam="released",
                )  # fmt: skip
                mixed, soft = mix(x, LABELS, cams, params)
                if box_mode == "batch":  # the shared cuboid: the same trilinear kernel
                    largest["shared"] = max(
                        largest["shared"], float((mixed - want_mixed).abs().max())
                    )
                    # the tensor path (one grid_sample) pastes the same cuboids
                    mixed = mix.apply(x, params._replace(shared_box=None))
                largest["grid"] = max(largest["grid"], float((mixed - want_mixed).abs().max()))
                torch.testing.assert_close(mixed, want_mixed, rtol=0, atol=1e-5)
                torch.testing.assert_close(soft, want_soft, rtol=0, atol=1e-6)
                largest["soft"] = max(largest["soft"], float((soft - want_soft).abs().max()))
                # the zero-extra-forward weights, from the mixed volumes' CAMs of both labels
                fast = SnapMix(2, box_mode=box_mode, cam_source="mixed")
                got = fast.targets(LABELS, pair, params, (12, 10, 8))
                want = _mixed_cam_reference(x, LABELS, pair, params, 2)
                torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
                largest["mixed_cams"] = max(largest["mixed_cams"], float((got - want).abs().max()))
    # the figures the closing note quotes (float32; grid_sample rounds its coordinates)
    assert largest["shared"] == 0.0 and largest["grid"] < 1e-5
    assert largest["soft"] < 1e-6 and largest["mixed_cams"] < 1e-6


def test_snapmix_draws_authors_cuboids_on_volumes():
    """Cuboids of side ratio (1 − λ)^(1/3) with the authors' far edge ``c + cut // 2``."""
    from camkit.mix._random import _sample_cuboids

    size = (32, 24, 16)
    lam = torch.tensor([1 - 0.3**3, 0.0, 1.0], dtype=torch.float64)
    boxes = _sample_cuboids(lam, size, torch.Generator().manual_seed(0), far_edge_up=False)
    centres = torch.rand((3, 3), generator=torch.Generator().manual_seed(0))
    for row, cuts in enumerate([(9, 7, 4), size, (0, 0, 0)]):
        want = [0] * 6
        for axis, (side, cut) in enumerate(zip(size, cuts, strict=True)):
            c = min(int(centres[row, axis] * side), side - 1)
            want[axis] = min(max(c - cut // 2, 0), side)
            want[axis + 3] = min(max(c + cut // 2, 0), side)
        assert boxes[row].tolist() == want
    # SnapMix draws box A, then box B, from λ_a, λ_b with these rules; an empty cuboid is unmixed
    mix = SnapMix(2, box_mode="sample", generator=torch.Generator().manual_seed(0))
    params = mix.sample(64, 6, 6, depth=2)
    empty = (params.box_a[:, 3:] <= params.box_a[:, :3]).any(1)
    empty |= (params.box_b[:, 3:] <= params.box_b[:, :3]).any(1)
    assert empty.any() and not params.apply[empty].any() and params.apply[~empty].all()


def _lift(params):
    """2-D SnapMix draws as the cuboids of a depth-1 volume: ``z`` from 0 to 1."""
    b = params.box_a.shape[0]
    z0, z1 = torch.zeros(b, 1, dtype=torch.long), torch.ones(b, 1, dtype=torch.long)

    def up(box):
        return torch.cat([z0, box[:, :2], z1, box[:, 2:]], 1)

    shared = None
    if params.shared_box is not None:
        a, b_, mixed = params.shared_box
        shared = ((0, *a[:2], 1, *a[2:]), (0, *b_[:2], 1, *b_[2:]), mixed)
    return params._replace(box_a=up(params.box_a), box_b=up(params.box_b), shared_box=shared)


def test_snapmix_of_a_depth_one_volume_is_the_images():
    """The weights are bit for bit the image's; the pasted voxels differ from the image's pixels
    by float32 rounding only (the trilinear kernels add the same terms in another order)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 24, 20, generator=gen)
    labels = torch.randint(0, 3, (6,), generator=gen)
    cams = torch.randn(6, 5, 4, generator=gen)
    cams[2] = 1.0
    pair = torch.randn(6, 2, 5, 4, generator=gen)
    largest = 0.0
    for box_mode in ("batch", "sample"):
        for align_corners in (True, False):
            for seed in range(3):
                gen = torch.Generator().manual_seed(seed)
                mix = SnapMix(3, box_mode=box_mode, align_corners=align_corners, generator=gen)
                params = mix.sample(6, 24, 20)
                assert params.apply.all()
                image_mixed, image_soft = mix(x, labels, cams, params)
                mixed, soft = mix(x[:, :, None], labels, cams[:, None], _lift(params))
                assert torch.equal(soft, image_soft)
                torch.testing.assert_close(mixed[:, :, 0], image_mixed, rtol=1e-6, atol=1e-6)
                largest = max(largest, float((mixed[:, :, 0] - image_mixed).abs().max()))
                fast = SnapMix(3, cam_source="mixed")
                assert torch.equal(
                    fast.targets(labels, pair[:, :, None], _lift(params), (1, 24, 20)),
                    fast.targets(labels, pair, params, (24, 20)),
                )
    assert largest > 0.0  # the test above is not vacuous: the kernels are distinct
    area = SnapMix(3, label_weights="area", generator=torch.Generator().manual_seed(1))
    params = area.sample(6, 24, 20)
    assert torch.equal(
        area(x[:, :, None], labels, cams[:, None], _lift(params))[1],
        area(x, labels, cams, params)[1],
    )


def test_snapmix_refuses_image_draws_for_volumes_naming_the_argument():
    mix = SnapMix(2, generator=torch.Generator().manual_seed(0))
    x, cams = _volumes(), _cams()
    image_params = mix.sample(4, 10, 8)
    with pytest.raises(ValueError, match=r"^params.box_a: expected shape \(4, 6\)"):
        mix(x, LABELS, cams, image_params)
    with pytest.raises(ValueError, match=r"^params.box_a: expected shape \(4, 6\)"):
        mix.apply(x, image_params)
    with pytest.raises(ValueError, match=r"^params.box_a: expected shape \(4, 6\)"):
        mix.targets(LABELS, cams, image_params, (12, 10, 8))
    params = mix.sample(4, 10, 8, depth=12)
    with pytest.raises(ValueError, match=r"^params.box_a: expected shape \(4, 4\)"):
        mix(x[:, :, 0], LABELS, cams[:, 0], params)
    with pytest.raises(
        ValueError,
        match=r"^params.box_a: expected boxes \(z0, y0, x0, z1, y1, x1\) inside the 6×10×8 volume",
    ):
        mix(x[:, :, :6], LABELS, cams, params)
    with pytest.raises(ValueError, match=r"^cams: expected a 4-D tensor"):
        mix(x, LABELS, cams[:, 0], params)  # image maps for volumes
    with pytest.raises(ValueError, match=r"^cams: expected a 4-D tensor"):
        mix.targets(LABELS, cams[:, 0], params, (12, 10, 8))
    with pytest.raises(ValueError, match=r"^cams: expected a 5-D tensor"):
        SnapMix(2, cam_source="mixed").targets(LABELS, cams, params, (12, 10, 8))
    with pytest.raises(
        ValueError, match=r"^cams: expected 4-D maps \(B, d, h, w\) for the 12×10×8"
    ):
        mix_weights(cams[:, 0], params, (12, 10, 8))
    with pytest.raises(ValueError, match=r"^cams: expected 5-D maps \(B, 2, d, h, w\)"):
        mix_weights(cams, params, (12, 10, 8), source="mixed")
    with pytest.raises(ValueError, match=r"^size: expected \(H, W\), two ints >= 1"):
        mix.targets(LABELS, cams, params, (12, 10, 8, 1))
    with pytest.raises(ValueError, match=r"^params.box_a: expected a non-empty box"):
        empty = params.box_a.clone()
        empty[0, 3] = empty[0, 0]
        mix(x, LABELS, cams, params._replace(box_a=empty, shared_box=None))


def test_snapmix_step_on_volumes_equals_the_mix_by_hand():
    from camkit import CAMExtractor, ContrastivePatchLoss, contrastive_patch_loss

    torch.manual_seed(0)
    model, x = TinyNet3d(channels=6, stride=4).train(), _volumes(size=(16, 16, 16), channels=1)
    for cam_source in ("unmixed", "mixed"):

        def make(cam_source=cam_source) -> SnapMix:
            return SnapMix(2, generator=torch.Generator().manual_seed(2), cam_source=cam_source)

        out = TrainStep(model, mix=make(), cpe=ContrastivePatchLoss())(x, LABELS)
        params = make().sample(4, 16, 16, depth=16)
        assert params.shared_box[2]  # mixed
        ext = CAMExtractor(model)
        cams = ext.forward_frozen(x, LABELS).cams
        mixed, soft = loop_snapmix_apply(
            x, LABELS, cams, *params_to_lists(params), 2, constant_cam="released"
        )
        assert torch.equal(out.inputs, mixed)
        if cam_source == "mixed":
            both = torch.stack([LABELS, LABELS[params.perm]], 1)
            pair = ext.forward_frozen(mixed, both).cams
            soft = _mixed_cam_reference(x, LABELS, pair, params, 2)
        torch.testing.assert_close(out.targets, soft, rtol=0, atol=1e-6)
        ref = ext(mixed, soft.argmax(1))
        by_hand = _soft_ce(ref.logits, soft) + contrastive_patch_loss(ref.features, ref.cams)
        torch.testing.assert_close(out.loss, by_hand, rtol=0, atol=1e-5)


def test_snapmix_cpe_step_on_a_monai_3d_densenet121_equals_the_mix_by_hand():
    monai_nets = pytest.importorskip("monai.networks.nets")
    from camkit import CAMExtractor, ContrastivePatchLoss, as_classifier, contrastive_patch_loss

    torch.manual_seed(0)
    model = monai_nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).train()
    x = torch.randn(2, 1, 64, 64, 64, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1])
    adapted = as_classifier(model)
    mix = SnapMix(2, generator=torch.Generator().manual_seed(5))
    out = TrainStep(adapted, mix=mix, cpe=ContrastivePatchLoss())(x, labels)
    out.loss.backward()
    assert model.features.conv0.weight.grad.abs().sum() > 0
    # by hand: the same draws, the frozen CAMs (a 2³ map), the loop's paste and weights
    params = SnapMix(2, generator=torch.Generator().manual_seed(5)).sample(2, 64, 64, depth=64)
    assert params.shared_box[2] and params.perm.tolist() == [1, 0]  # the two labels mixed
    ext = CAMExtractor(adapted)
    with torch.no_grad():
        cams = ext.forward_frozen(x, labels).cams
        assert cams.shape == (2, 2, 2, 2)
        mixed, soft = loop_snapmix_apply(
            x, labels, cams, *params_to_lists(params), 2, constant_cam="released"
        )
        assert torch.equal(out.inputs, mixed)
        torch.testing.assert_close(out.targets, soft, rtol=1e-5, atol=1e-6)  # as the 2-D test
        assert (soft > 0).all()  # each volume's target weighs both labels
        ref = ext(mixed, soft.argmax(1))
        cpe = contrastive_patch_loss(ref.features, ref.cams)
        torch.testing.assert_close(out.cpe_loss, cpe, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.loss, _soft_ce(ref.logits, soft) + cpe, rtol=0, atol=1e-5)


def test_mix_collate_of_volumes_feeds_the_mixed_cam_snapmix_step():
    from camkit import MixCollate

    torch.manual_seed(0)
    model, x = TinyNet3d().train(), _volumes(size=(16, 16, 16), channels=1)
    samples = list(zip(x, LABELS, strict=True))
    mix = SnapMix(2, cam_source="mixed", generator=torch.Generator().manual_seed(2))
    mixed, labels, params = MixCollate(mix)(samples)
    assert params.box_a.shape == (4, 6) and params.shared_box[2]
    want_mixed, _ = loop_snapmix_apply(
        x, LABELS, _cams(grid=(4, 4, 4)), *params_to_lists(params), 2
    )
    assert torch.equal(mixed, want_mixed)
    collated = TrainStep(model, mix=mix)(mixed, labels, mixed_params=params)
    in_step = TrainStep(
        model, mix=SnapMix(2, cam_source="mixed", generator=torch.Generator().manual_seed(2))
    )(x, LABELS)
    assert torch.equal(collated.inputs, in_step.inputs)
    torch.testing.assert_close(collated.targets, in_step.targets, rtol=0, atol=0)
    torch.testing.assert_close(collated.loss, in_step.loss, rtol=0, atol=0)


# --- Attentive CutMix over 3-D cells --------------------------------------------------------------


def _tied_cams(shape, seed: int = 11) -> torch.Tensor:
    """Maps with ties: one constant (row-major order), one of few distinct values."""
    cams = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    cams[1] = 0.5
    cams[2] = cams[2].round()
    return cams


def test_attentive_cutmix_on_volumes_equals_a_per_volume_loop():
    """Grids that do not divide the volume (10/4, 8/3): cells of unequal sides, as the 2-D image."""
    cases = [(_volumes(), _tied_cams((4, 3, 4, 3))), (_volumes()[:, :, 0], _tied_cams((4, 4, 3)))]
    for x, cams in cases:
        size = tuple(x.shape[2:])
        depth = size[0] if len(size) == 3 else None
        for top_k, prob, seed in ((1, 1.0, 0), (5, 1.0, 1), (11, 1.0, 2), (5, 0.0, 3)):
            mix = AttentiveCutMix(2, top_k, prob, torch.Generator().manual_seed(seed))
            params = mix.sample(4, *size[-2:], cams=cams, depth=depth)
            assert params.cells.shape == cams.shape
            mixed, soft = mix(x, LABELS, cams, params)
            perm = params.perm.tolist()
            want_mixed, want_soft, chosen = loop_attentive_cutmix(
                x, LABELS, cams, perm, prob > 0, top_k, 2
            )
            for i in range(4):
                assert params.cells[i].flatten().nonzero()[:, 0].tolist() == chosen[i]
            assert torch.equal(mixed, want_mixed)
            torch.testing.assert_close(soft, want_soft, rtol=0, atol=1e-7)
            assert torch.equal(mixed, x) == (prob == 0)  # mixed, or not: the check can fail
            # the draws replay: a twin drawing inside its forward mixes the same
            twin = AttentiveCutMix(2, top_k, prob, torch.Generator().manual_seed(seed))
            assert torch.equal(twin(x, LABELS, cams)[0], mixed)


def test_attentive_cutmix_of_a_depth_one_volume_is_the_images():
    gen = torch.Generator().manual_seed(12)
    x, cams = torch.randn(6, 3, 20, 14, generator=gen), _tied_cams((6, 5, 4))
    labels = torch.randint(0, 3, (6,), generator=gen)
    for top_k in (1, 4, 19):
        image = AttentiveCutMix(3, top_k, generator=torch.Generator().manual_seed(top_k))
        volume = AttentiveCutMix(3, top_k, generator=torch.Generator().manual_seed(top_k))
        want_mixed, want_soft = image(x, labels, cams)
        mixed, soft = volume(x[:, :, None], labels, cams[:, None])
        assert torch.equal(mixed[:, :, 0], want_mixed) and torch.equal(soft, want_soft)
        assert not torch.equal(want_mixed, x)


def test_attentive_cutmix_step_on_volumes_equals_the_mix_by_hand():
    from camkit import CAMExtractor

    torch.manual_seed(0)
    model, x = TinyNet3d().train(), _volumes(size=(16, 16, 16), channels=1)
    mix = AttentiveCutMix(2, top_k=5, generator=torch.Generator().manual_seed(1))
    out = TrainStep(model, mix=mix)(x, LABELS)
    cams = CAMExtractor(model).forward_frozen(x, LABELS).cams
    assert cams.shape == (4, 4, 4, 4)
    twin = AttentiveCutMix(2, top_k=5, generator=torch.Generator().manual_seed(1))
    params = twin.sample(4, 16, 16, cams=cams, depth=16)
    mixed, soft, _ = loop_attentive_cutmix(x, LABELS, cams, params.perm.tolist(), True, 5, 2)
    assert torch.equal(out.inputs, mixed) and not torch.equal(mixed, x)
    torch.testing.assert_close(out.targets, soft, rtol=0, atol=1e-7)
    torch.testing.assert_close(out.loss, _soft_ce(model(mixed), soft), rtol=0, atol=1e-6)


def test_attentive_cutmix_refuses_image_cells_for_volumes_naming_the_argument():
    x, cams = _volumes(), _tied_cams((4, 3, 4, 3))
    mix = AttentiveCutMix(2, top_k=3, generator=torch.Generator().manual_seed(0))
    image_params = mix.sample(4, 10, 8, cams=cams[:, 0])
    with pytest.raises(ValueError, match=r"^params.cells: expected a 4-D tensor"):
        mix.apply(x, image_params)
    with pytest.raises(ValueError, match=r"^params.cells: expected a 4-D tensor"):
        mix.targets(LABELS, cams, image_params, (12, 10, 8))
    params = mix.sample(4, 10, 8, cams=cams, depth=12)
    with pytest.raises(ValueError, match=r"^params.cells: expected a 3-D tensor"):
        mix.apply(x[:, :, 0], params)
    with pytest.raises(ValueError, match=r"^cams: expected a 4-D tensor"):
        mix.sample(4, 10, 8, cams=cams[:, 0], depth=12)
    with pytest.raises(ValueError, match=r"^cams: expected a 4-D tensor"):
        mix(x, LABELS, cams[:, 0])
    with pytest.raises(
        ValueError,
        match=r"^top_k: 36 cells leave nothing of the volume in a 3×4×3 grid; expected at most 35",
    ):
        AttentiveCutMix(2, top_k=36).sample(4, 10, 8, cams=cams, depth=12)
    fine = CellMixParams(params.perm, torch.zeros(4, 13, 4, 3, dtype=torch.bool))
    with pytest.raises(
        ValueError,
        match=r"^params.cells: expected a grid no finer than the 12×10×8 volume, got a 13×4×3",
    ):
        mix.apply(x, fine)
