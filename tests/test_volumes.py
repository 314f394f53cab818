"""Volumes ``(B, C, D, H, W)`` through the training step, the CPE and the TTA.

Every part is pinned against a by-hand or per-volume loop reference on the same parameters and
draws, and a depth-1 volume against the 2-D image it holds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camkit import Mixup, TrainStep
from camkit.mix import CutMix
from tests.helpers import TinyNet, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
__all__ = ["one_thread"]


class TinyNet3d(nn.Module):
    """TinyNet's 3-D twin: strided Conv3d features, average pooling over cells, linear head."""

    def __init__(self, num_classes: int = 2, channels: int = 6, stride: int = 4, in_ch: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = channels
        self.conv = nn.Conv3d(in_ch, channels, kernel_size=stride, stride=stride)
        self.bn = nn.BatchNorm3d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3, 4))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _net3d(**kwargs) -> TinyNet3d:
    torch.manual_seed(0)
    return TinyNet3d(**kwargs).train()


def _volumes(b: int = 4, side: int = 16, channels: int = 1) -> torch.Tensor:
    return torch.randn(b, channels, side, side, side, generator=torch.Generator().manual_seed(1))


LABELS = torch.tensor([0, 1, 1, 0])


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * logits.log_softmax(1)).sum(1).mean()


# --- TrainStep ----------------------------------------------------------------------------------


def test_plain_step_on_volumes_is_cross_entropy():
    model, x = _net3d(), _volumes()
    out = TrainStep(model)(x, LABELS)
    assert out.logits.shape == (4, 2) and out.inputs is x
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x), LABELS), rtol=0, atol=1e-6)
    assert torch.equal(out.targets, F.one_hot(LABELS, 2).float())


def test_plain_step_on_a_monai_3d_densenet_is_cross_entropy():
    monai_nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    model = monai_nets.DenseNet(
        spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
        block_config=(2, 2),
    ).train()  # fmt: skip
    x = _volumes(side=32)
    out = TrainStep(model)(x, LABELS)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x), LABELS), rtol=0, atol=1e-6)
    out.loss.backward()
    assert model.features.conv0.weight.grad.abs().sum() > 0


def test_mixup_step_on_volumes_equals_a_mix_by_hand():
    model, x = _net3d(), _volumes()
    for mode in ("batch", "sample"):
        mix = Mixup(num_classes=2, mode=mode, generator=torch.Generator().manual_seed(3))
        out = TrainStep(model, mix=mix)(x, LABELS)
        # the same draws, by hand
        twin = Mixup(num_classes=2, mode=mode, generator=torch.Generator().manual_seed(3))
        params = twin.sample(4, 16, 16)
        lam = params.lam.float()
        assert lam.min() < 1.0  # a mixed batch: the check below could fail
        mixed = torch.stack([lam[i] * x[i] + (1 - lam[i]) * x[params.perm[i]] for i in range(4)])
        torch.testing.assert_close(out.inputs, mixed, rtol=0, atol=1e-6)
        onehot = F.one_hot(LABELS, 2).double()
        want = params.lam[:, None] * onehot + (1 - params.lam[:, None]) * onehot[params.perm]
        torch.testing.assert_close(out.targets, want.float(), rtol=0, atol=1e-6)
        by_hand = _soft_ce(model(mixed), want.float())
        torch.testing.assert_close(out.loss, by_hand, rtol=0, atol=1e-6)


def test_the_step_refuses_the_other_rank_naming_images_and_shapes():
    torch.manual_seed(0)
    image_model = TinyNet().train()
    with pytest.raises(
        ValueError,
        match=r"^images: expected a 4-D tensor, \(B, C, H, W\) images \(the input layer of "
        r"TinyNet is 2-D\), got a tensor of shape \(4, 1, 16, 16, 16\)",
    ):
        TrainStep(image_model)(_volumes(), LABELS)
    with pytest.raises(
        ValueError,
        match=r"^images: expected a 5-D tensor, \(B, C, D, H, W\) volumes \(the input layer of "
        r"TinyNet3d is 3-D\), got a tensor of shape \(4, 1, 16, 16\)",
    ):
        TrainStep(_net3d())(torch.randn(4, 1, 16, 16), LABELS)
    with pytest.raises(ValueError, match=r"^images: expected a 5-D tensor"):
        TrainStep(_net3d(), mix=Mixup(num_classes=2))(torch.randn(4, 1, 16, 16), LABELS)


class ImageMixup(Mixup):
    """A mix that does not take volumes (``volumes = False``), as a user's own mix may be."""

    volumes = False


def test_mixes_without_volumes_refuse_them():
    with pytest.raises(ValueError, match=r"^mix: ImageMixup mixes \(B, C, H, W\) images"):
        TrainStep(_net3d(), mix=ImageMixup(2))(_volumes(), LABELS)
    with pytest.raises(ValueError, match=r"^images: ImageMixup mixes \(B, C, H, W\) images"):
        ImageMixup(2).mix_images(_volumes())
    with pytest.raises(ValueError, match=r"^depth: ImageMixup mixes \(B, C, H, W\) images"):
        ImageMixup(2).sample(4, 16, 16, depth=16)
    mixed, soft = Mixup(num_classes=2)(_volumes(), LABELS)
    assert mixed.shape == (4, 1, 16, 16, 16) and soft.shape == (4, 2)


# --- CPE over 3-D cells ---------------------------------------------------------------------------


def _cpe_loop(features: torch.Tensor, cams: torch.Tensor, n: int, tau: float) -> torch.Tensor:
    """Per volume: the n top and n bottom cells by CAM (row-major (d, h, w) ties), cosine / τ."""
    losses = []
    for f, m in zip(features, cams, strict=True):
        cells = f.flatten(1).T  # (d·h·w, C)
        values = m.flatten().tolist()
        order = sorted(range(len(values)), key=lambda i: (-values[i], i))
        bottom_order = sorted(range(len(values)), key=lambda i: (values[i], -i))
        u = F.normalize(cells[order[:n]], dim=1)
        v = F.normalize(cells[bottom_order[:n]], dim=1)
        cross = [u[i] @ v[j] / tau for i in range(n) for j in range(n)]
        total = 0.0
        for g in (u, v):
            pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
            terms = []
            for i, j in pairs:
                pos = g[i] @ g[j] / tau
                terms.append(torch.logsumexp(torch.stack([pos, *cross]), 0) - pos)
            total = total + torch.stack(terms).mean()
        losses.append(total)
    return torch.stack(losses)


def test_cpe_on_volumes_equals_a_per_volume_loop():
    from camkit import ContrastivePatchLoss

    gen = torch.Generator().manual_seed(4)
    features = torch.randn(3, 8, 3, 4, 5, generator=gen, requires_grad=True)
    cams = torch.randn(3, 3, 4, 5, generator=gen)
    cams[0] = 0.5  # all tied: row-major order
    for n in (2, 3):
        loss = ContrastivePatchLoss(n, reduction="none")(features, cams)
        torch.testing.assert_close(loss, _cpe_loop(features, cams, n, 0.1), rtol=1e-5, atol=1e-5)
    ContrastivePatchLoss()(features, cams).backward()
    touched = (features.grad.abs().sum(1) > 0).flatten(1).sum(1)
    assert touched.tolist() == [4, 4, 4]  # the 2 + 2 chosen cells of each volume
    with pytest.raises(ValueError, match=r"^num_patches: 2 × 31 cells do not fit in the 3×4×5"):
        ContrastivePatchLoss(31)(features, cams)
    with pytest.raises(ValueError, match=r"^cams: expected a 4-D tensor"):
        ContrastivePatchLoss()(features, cams[:, 0])


def test_cpe_of_a_depth_one_volume_is_the_images():
    from camkit import ContrastivePatchLoss

    gen = torch.Generator().manual_seed(5)
    features = torch.randn(4, 8, 5, 6, generator=gen)
    cams = torch.randn(4, 5, 6, generator=gen)
    fine = torch.randn(4, 10, 12, generator=gen)  # at another resolution: area-averaged
    for cpe in (ContrastivePatchLoss(), ContrastivePatchLoss.paper(reduction="none")):
        assert torch.equal(cpe(features[:, :, None], cams[:, None]), cpe(features, cams))
        torch.testing.assert_close(
            cpe(features[:, :, None], fine[:, None]), cpe(features, fine), rtol=0, atol=0
        )


def test_the_step_with_cpe_on_volumes_ranks_by_the_label_cams():
    from camkit import CAMExtractor, ContrastivePatchLoss, contrastive_patch_loss

    model, x = _net3d(), _volumes()
    out = TrainStep(model, cpe=ContrastivePatchLoss())(x, LABELS)
    ref = CAMExtractor(model)(x, LABELS)
    cpe = contrastive_patch_loss(ref.features, ref.cams)
    torch.testing.assert_close(out.cpe_loss, cpe, rtol=0, atol=1e-6)
    ce = F.cross_entropy(ref.logits, LABELS)
    torch.testing.assert_close(out.loss, ce + cpe, rtol=0, atol=1e-6)
    mixed = TrainStep(model, mix=Mixup(num_classes=2), cpe=ContrastivePatchLoss())(x, LABELS)
    assert mixed.cpe_loss is not None and torch.isfinite(mixed.loss)


# --- CAMMaskingTTA on volumes -------------------------------------------------------------------


def _tta_loop(model, volumes, k, theta, patch):
    """Per volume: the CAM of the prediction, trilinear to the volume, summed per cube (float64),
    cells masked in decreasing order (ties to the lower row-major index), one forward a copy."""
    from camkit import CAMExtractor, cell_sums, upsample_cams

    ext = CAMExtractor(model)
    labels, against, step_probs = [], [], []
    for v in volumes:
        with torch.no_grad():
            out = ext(v[None])
            p0 = out.logits.softmax(1)[0]
        pred = int(out.target)
        size = tuple(v.shape[1:])
        mass = cell_sums(upsample_cams(out.cams.double(), size), patch)[0]
        values = mass.flatten().tolist()
        order = sorted(range(len(values)), key=lambda i: (-values[i], i))
        grid = mass.shape
        cell_of = torch.zeros(size, dtype=torch.long)
        for z in range(size[0]):
            for y in range(size[1]):
                for x in range(size[2]):
                    cell = (z // patch * grid[1] + y // patch) * grid[2] + x // patch
                    cell_of[z, y, x] = cell
        probs, no = [], 0
        for j in range(1, k + 1):
            hidden = torch.isin(cell_of, torch.tensor(order[:j]))
            copy = torch.where(hidden, 0.0, v)
            with torch.no_grad():
                p = model(copy[None]).softmax(1)[0, pred]
            probs.append(float(p))
            no += int(p <= theta)
        runner_up = int(p0.topk(2).indices[1])
        labels.append(runner_up if no > k // 2 else pred)
        against.append(no)
        step_probs.append(probs)
    return torch.tensor(labels), torch.tensor(against), torch.tensor(step_probs)


def test_volume_tta_equals_a_per_volume_loop():
    from camkit import CAMMaskingTTA

    torch.manual_seed(2)
    model = TinyNet3d(channels=8).eval()
    volumes = torch.randn(6, 1, 12, 12, 12, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():  # a θ between the predictions' confidences: votes on both sides
        theta = float(model(volumes).softmax(1).amax(1).median()) - 0.02
    want_labels, want_against, want_probs = _tta_loop(model, volumes, 7, theta, 4)
    tta = CAMMaskingTTA(model, k=7, theta=theta, patch_size=4, early_exit=False, chunk_size=5)
    res = tta.predict(volumes)
    assert torch.equal(res.labels, want_labels)
    assert torch.equal(res.votes_against, want_against)
    torch.testing.assert_close(res.step_probs, want_probs.float(), rtol=0, atol=1e-6)
    assert 0 < int(res.flipped.sum()) < 6  # some votes flip, some do not: the check can fail
    # early exit: the same labels with fewer forwards; a per-axis patch of equal sides: the same
    fast = CAMMaskingTTA(model, k=7, theta=theta, patch_size=4).predict(volumes)
    assert torch.equal(fast.labels, want_labels) and fast.forwards.sum() < res.forwards.sum()
    per_axis = CAMMaskingTTA(model, k=7, theta=theta, patch_size=(4, 4, 4), early_exit=False)
    assert torch.equal(per_axis.predict(volumes).step_probs, res.step_probs)


def test_a_depth_one_volume_votes_as_the_image():
    from camkit import CAMMaskingTTA

    torch.manual_seed(3)
    image_model = TinyNet(channels=8, stride=4).eval()
    volume_model = TinyNet3d(channels=8, stride=4, in_ch=3).eval()
    volume_model.conv = nn.Conv3d(3, 8, kernel_size=(1, 4, 4), stride=(1, 4, 4))
    volume_model.load_state_dict(
        {k: v[:, :, None] if k == "conv.weight" else v for k, v in image_model.state_dict().items()}
    )
    volume_model.eval()
    images = torch.randn(8, 3, 24, 20, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        theta = float(image_model(images).softmax(1).amax(1).median()) - 0.02
    flat = CAMMaskingTTA(image_model, k=9, theta=theta, patch_size=4, early_exit=False)
    want = flat.predict(images)
    assert 0 < int(want.flipped.sum()) < 8
    for patch in (4, (1, 4, 4), (3, 4, 4)):
        tta = CAMMaskingTTA(volume_model, k=9, theta=theta, patch_size=patch, early_exit=False)
        got = tta.predict(images[:, :, None])
        assert torch.equal(got.labels, want.labels)
        assert torch.equal(got.votes_against, want.votes_against)
        torch.testing.assert_close(got.step_probs, want.step_probs, rtol=0, atol=1e-6)
    steps = torch.arange(8)
    copies = CAMMaskingTTA(volume_model, patch_size=4).masked_copies(images[:, :, None], steps)
    assert torch.equal(
        copies[:, :, 0], CAMMaskingTTA(image_model, patch_size=4).masked_copies(images, steps)
    )


def test_volume_tta_refusals():
    from camkit import CAMMaskingTTA

    model = TinyNet3d().eval()
    with pytest.raises(
        ValueError,
        match=r"^k: 9 masks need as many cells, but a 8×8×8 volume "
        r"has only 8 cells of 4×4×4",
    ):
        CAMMaskingTTA(model, k=9, patch_size=4).predict(torch.randn(2, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"^patch_size: expected one side or 3"):
        CAMMaskingTTA(model, k=2, patch_size=(4, 4)).predict(torch.randn(2, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"^images: expected a 5-D tensor, \(B, C, D, H, W\)"):
        CAMMaskingTTA(model, k=2, patch_size=4).predict(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"^patch_size: expected an int >= 1, got 0"):
        CAMMaskingTTA(model, patch_size=(4, 0, 4))


# --- CutMix with cuboids ----------------------------------------------------------------------


def _cutmix_loop(volumes, labels, params):
    """Per volume: the partner's cuboid copied in, the target weighed by its share."""
    out, targets = volumes.clone(), []
    for i in range(volumes.shape[0]):
        z0, y0, x0, z1, y1, x1 = params.box[i].tolist()
        j = int(params.perm[i])
        share = 0.0
        if bool(params.apply[i]):
            out[i, :, z0:z1, y0:y1, x0:x1] = volumes[j, :, z0:z1, y0:y1, x0:x1]
            share = (z1 - z0) * (y1 - y0) * (x1 - x0) / volumes[0, 0].numel()
        t = torch.zeros(2, dtype=torch.float64)
        t[labels[i]] += 1.0 - share
        t[labels[j]] += share
        targets.append(t)
    return out, torch.stack(targets).float()


def test_cutmix_on_volumes_equals_a_per_volume_loop():
    x = torch.randn(4, 2, 12, 10, 8, generator=torch.Generator().manual_seed(8))
    for mode, seed in (("batch", 0), ("batch", 1), ("sample", 2)):
        mix = CutMix(2, mode=mode, generator=torch.Generator().manual_seed(seed))
        params = mix.sample(4, 10, 8, depth=12)
        assert params.box.shape == (4, 6)
        assert (params.shared_box is not None) == (mode == "batch")
        assert bool(params.apply.any())  # a mixed batch: the comparison can fail
        mixed, soft = mix(x, LABELS, params=params)
        want_mixed, want_soft = _cutmix_loop(x, LABELS, params)
        assert torch.equal(mixed, want_mixed)
        torch.testing.assert_close(soft, want_soft, rtol=0, atol=1e-7)
        if mode == "batch":  # the tensor path (no host box) pastes the same cuboids
            tensor_only = params._replace(shared_box=None)
            assert torch.equal(mix.apply(x, tensor_only), want_mixed)
    # the draws: side ratio (1 − λ)^(1/3) per axis, a uniform centre, timm's far edge, clipped
    from camkit.mix._random import _sample_cuboids

    size = (32, 24, 16)
    lam = torch.tensor([1 - 0.3**3, 0.0, 1.0, 1 - 0.3**3], dtype=torch.float64)
    boxes = _sample_cuboids(lam, size, torch.Generator().manual_seed(0))
    centres = torch.rand((4, 3), generator=torch.Generator().manual_seed(0))
    for row, cuts in enumerate([(9, 7, 4), size, (0, 0, 0), (9, 7, 4)]):
        want = [0] * 6
        for axis, (side, cut) in enumerate(zip(size, cuts, strict=True)):
            c = min(int(centres[row, axis] * side), side - 1)
            want[axis] = min(max(c - cut // 2, 0), side)
            want[axis + 3] = min(max(c + (cut + 1) // 2, 0), side)
        assert boxes[row].tolist() == want


def test_a_depth_one_volume_gets_the_images_box_and_mixes():
    """A singleton axis is spanned, not cut: before, ``floor(1·ratio) = 0`` left every cuboid of
    a depth-1 volume empty, so CutMix and SnapMix never mixed it."""
    from camkit.mix._random import _boxes_at, _sample_cuboids

    lam = torch.rand(256, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for far_edge_up in (True, False):
        boxes = _sample_cuboids(
            lam, (1, 24, 16), torch.Generator().manual_seed(0), far_edge_up=far_edge_up
        )
        centres = torch.rand((256, 3), generator=torch.Generator().manual_seed(0))
        cy = torch.floor(centres[:, 1] * 24).long().clamp(max=23)
        cx = torch.floor(centres[:, 2] * 16).long().clamp(max=15)
        image = _boxes_at(lam, cy, cx, 24, 16, far_edge_up=far_edge_up)
        assert boxes[:, [0, 3]].tolist() == [[0, 1]] * 256
        assert torch.equal(boxes[:, [1, 2, 4, 5]], image)
    # a depth-1 batch is mixed as often as the images it holds
    x = torch.randn(64, 1, 1, 16, 16)
    mix = CutMix(64, mode="sample", generator=torch.Generator().manual_seed(1))
    mixed, soft = mix(x, torch.arange(64), params=mix.sample(64, 16, 16, depth=1))
    changed = (mixed != x).flatten(1).any(1)
    assert changed.float().mean() > 0.8 and torch.equal(changed, soft.max(1).values < 1)


def test_the_cutmix_step_on_volumes_equals_a_mix_by_hand():
    model, x = _net3d(), _volumes()
    mix = CutMix(2, generator=torch.Generator().manual_seed(1))
    out = TrainStep(model, mix=mix)(x, LABELS)
    params = CutMix(2, generator=torch.Generator().manual_seed(1)).sample(4, 16, 16, depth=16)
    assert params.shared_box[1]  # mixed
    want_mixed, want_soft = _cutmix_loop(x, LABELS, params)
    assert torch.equal(out.inputs, want_mixed)
    torch.testing.assert_close(out.targets, want_soft, rtol=0, atol=1e-7)
    by_hand = _soft_ce(model(want_mixed), want_soft)
    torch.testing.assert_close(out.loss, by_hand, rtol=0, atol=1e-6)


def test_cutmix_refuses_image_boxes_for_volumes():
    mix = CutMix(2, generator=torch.Generator().manual_seed(0))
    image_params = mix.sample(4, 16, 16)
    with pytest.raises(ValueError, match=r"^params.box: expected shape \(4, 6\)"):
        mix(_volumes(), LABELS, params=image_params)
    params = mix.sample(4, 16, 16, depth=16)
    with pytest.raises(
        ValueError,
        match=r"^params.box: expected boxes \(z0, y0, x0, z1, y1, x1\) "
        r"inside the 8×16×16 volume",
    ):
        mix(
            _volumes()[:, :, :8],
            LABELS,
            params=params._replace(box=torch.tensor([[0, 0, 0, 9, 4, 4]] * 4), shared_box=None),
        )
    with pytest.raises(
        ValueError, match=r"^size: expected \(H, W\), two ints >= 1, got \(16,\); or \(D, H, W\)"
    ):
        mix.targets(LABELS, None, params, (16,))


def test_mix_collate_of_volumes_feeds_the_step_the_same_mix():
    from camkit import MixCollate

    model, x = _net3d(), _volumes()
    samples = list(zip(x, LABELS, strict=True))
    for mix in (CutMix(2, generator=torch.Generator().manual_seed(1)), Mixup(2)):
        mixed, labels, params = MixCollate(mix)(samples)
        if isinstance(mix, CutMix):
            want_mixed, want_soft = _cutmix_loop(x, LABELS, params)
            assert torch.equal(mixed, want_mixed)
        else:
            lam = params.lam.float().view(-1, 1, 1, 1, 1)
            want_mixed = lam * x + (1 - lam) * x[params.perm]
            torch.testing.assert_close(mixed, want_mixed, rtol=0, atol=1e-6)
            onehot = F.one_hot(LABELS, 2).double()
            lam = params.lam[:, None]
            want_soft = (lam * onehot + (1 - lam) * onehot[params.perm]).float()
        out = TrainStep(model, mix=mix)(mixed, labels, mixed_params=params)
        torch.testing.assert_close(out.targets, want_soft, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"^collate_fn: expected \(images \(B, C, H, W\), labels"):
        MixCollate(ImageMixup(2))(samples)
