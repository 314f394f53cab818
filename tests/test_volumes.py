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


def test_mixes_without_volumes_refuse_them():
    with pytest.raises(ValueError, match=r"^mix: CutMix mixes \(B, C, H, W\) images"):
        TrainStep(_net3d(), mix=CutMix(num_classes=2))(_volumes(), LABELS)
    with pytest.raises(ValueError, match=r"^images: CutMix mixes \(B, C, H, W\) images"):
        CutMix(num_classes=2)(_volumes(), LABELS)
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
