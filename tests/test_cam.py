import copy

import pytest
import timm
import torch
from torch import nn

from camkit import CAMExtractor, cell_sums, frozen_state, normalize_cams, upsample_cams
from camkit.cam._contract import linear_weights as _linear_weights
from tests.helpers import TinyNet

# name -> (create kwargs, input size, exact?) ; at least 12 families, tiny and pretrained=False
CONTRACT_MODELS = {
    "resnet18": ({}, 64, True),
    "efficientnet_b0": ({}, 64, True),
    "mobilenetv2_050": ({}, 64, True),
    "regnetx_002": ({}, 64, True),
    "densenet121": ({}, 64, True),
    "resnetv2_50": ({}, 64, True),
    "dla34": ({}, 64, True),
    "pvt_v2_b0": ({}, 64, True),
    "mixer_s32_224": ({"img_size": 64}, 64, True),
    "swin_tiny_patch4_window7_224": ({}, 224, True),
    "mobilenetv3_small_050": ({}, 64, False),
    "convnext_atto": ({}, 64, False),
    "vit_tiny_patch16_224": ({"img_size": 64}, 64, False),
    "deit_tiny_distilled_patch16_224": ({"img_size": 64}, 64, False),
    "eva02_tiny_patch14_224": ({"img_size": 56}, 56, False),
    "levit_128s": ({}, 224, False),
    "ghostnet_050": ({}, 64, False),
}


def _make(name: str, num_classes: int = 3) -> tuple[nn.Module, int, bool]:
    kwargs, size, exact = CONTRACT_MODELS[name]
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    return model, size, exact


def _head_bias(model: nn.Module, channels: int, target: torch.Tensor) -> torch.Tensor:
    _, bias = _linear_weights(model.get_classifier(), channels)
    return bias[target]


@pytest.mark.parametrize("name", sorted(CONTRACT_MODELS))
def test_contract_over_timm_families(name):
    model, size, exact = _make(name)
    model.eval()
    ext = CAMExtractor(model)
    assert ext.exact is exact
    images = torch.randn(2, 3, size, size)
    target = torch.tensor([2, 0])
    with torch.no_grad():
        expected_logits = model(images)
        out = ext(images, target)
    torch.testing.assert_close(out.logits, expected_logits)
    b, c, h, w = out.features.shape
    assert b == 2 and out.cams.shape == (2, h, w)
    assert torch.isfinite(out.cams).all()
    assert torch.equal(out.target, target)
    if exact:
        # exact CAM: mean over cells + bias == logit of the class
        recon = out.cams.mean((1, 2)) + _head_bias(model, c, target)
        torch.testing.assert_close(
            recon, expected_logits.gather(1, target[:, None])[:, 0], rtol=1e-4, atol=1e-4
        )
    # predicted class when target is None
    with torch.no_grad():
        out_pred = ext(images)
    assert torch.equal(out_pred.target, expected_logits.argmax(1))


@pytest.mark.parametrize("name", ["convnext_atto", "vit_tiny_patch16_224", "mobilenetv3_small_050"])
def test_head_gradient_weights_match_finite_differences(name):
    """alpha_c · delta = d logit_c when the same delta is added to every feature position."""
    model, size, _ = _make(name)
    model = model.double().eval()
    ext = CAMExtractor(model)
    images = torch.randn(2, 3, size, size, dtype=torch.float64)
    target = torch.tensor([1, 2])
    with torch.no_grad():
        feats = model.forward_features(images)
        alpha = ext.class_weights(feats, target)
        delta = torch.randn(feats.shape[0], alpha.shape[1], dtype=torch.float64)
        if feats.ndim == 3:
            shift = delta[:, None, :]
        else:
            shift = delta[:, :, None, None]
        eps = 1e-6
        plus = model.forward_head(feats + eps * shift).gather(1, target[:, None])[:, 0]
        minus = model.forward_head(feats - eps * shift).gather(1, target[:, None])[:, 0]
    numeric = (plus - minus) / (2 * eps)
    torch.testing.assert_close((alpha * delta).sum(1), numeric, rtol=1e-5, atol=1e-7)


def test_cams_match_slow_reference():
    model = timm.create_model("resnet18", pretrained=False, num_classes=4).double().eval()
    ext = CAMExtractor(model)
    images = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    target = torch.tensor([3, 0, 1])
    with torch.no_grad():
        out = ext(images, target)
        feats = model.forward_features(images)
    weight = model.fc.weight.detach()
    expected = torch.zeros(3, feats.shape[2], feats.shape[3], dtype=torch.float64)
    for b in range(3):
        for i in range(feats.shape[2]):
            for j in range(feats.shape[3]):
                expected[b, i, j] = sum(
                    float(weight[target[b], k]) * float(feats[b, k, i, j])
                    for k in range(feats.shape[1])
                )
    torch.testing.assert_close(out.cams, expected)


def test_nhwc_and_token_models_give_nchw_features():
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=2).eval()
    with torch.no_grad():
        raw = swin.forward_features(torch.zeros(1, 3, 224, 224))
        out = CAMExtractor(swin)(torch.zeros(1, 3, 224, 224))
    torch.testing.assert_close(out.features, raw.permute(0, 3, 1, 2))
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=64
    ).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens = vit.forward_features(images)
        out = CAMExtractor(vit)(images)
    assert out.features.shape == (1, 192, 4, 4)
    torch.testing.assert_close(out.features[0, :, 1, 2], tokens[0, 1 + 1 * 4 + 2])


def test_training_step_grad_flows_and_matches_model_forward():
    model = TinyNet(num_classes=3)
    reference = copy.deepcopy(model)
    ext = CAMExtractor(model)
    images = torch.randn(4, 3, 16, 16)
    out = ext(images, torch.tensor([0, 1, 2, 0]))
    expected = reference(images)  # train mode: BN batch statistics, running stats updated alike
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(model.bn.running_mean, reference.bn.running_mean)
    out.features.sum().backward()
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0
    assert out.cams.requires_grad


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_forward_frozen_leaves_state_untouched(name):
    model, size, _ = _make(name)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ext = CAMExtractor(model)
    images = torch.randn(4, 3, size, size)
    out = ext.forward_frozen(images, torch.tensor([0, 1, 2, 1]))
    assert model.training
    assert all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not out.cams.requires_grad and not out.logits.requires_grad
    # train-mode semantics: batch statistics, like the training forward
    with torch.no_grad():
        expected = copy.deepcopy(model)(images)
    torch.testing.assert_close(out.logits, expected)


class _StatefulNet(nn.Module):
    """BatchNorm plus a tracked InstanceNorm (a non-BatchNorm buffer updated in training)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.inorm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inorm(self.bn(self.conv(x))).mean((2, 3))


def test_frozen_state_restores_every_buffer_and_matches_train_forward():
    torch.manual_seed(0)
    model = _StatefulNet().train()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = copy.deepcopy(model)(x)
    with frozen_state(model):
        out = model(x)
    assert torch.equal(out, expected)  # bit-identical to the ordinary training forward
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.bn.track_running_stats and model.inorm.track_running_stats
    # the restore leaves an autograd graph built in the block usable
    x.requires_grad_(True)
    with frozen_state(model):
        out = model(x)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # and a real training forward still updates the statistics afterwards
    model(torch.randn(3, 3, 8, 8))
    assert not torch.equal(model.bn.running_mean, state["bn.running_mean"])


def test_frozen_state_undoes_the_switch_when_the_block_raises():
    model = _StatefulNet().train()
    before = model.inorm.running_mean.clone()
    with pytest.raises(RuntimeError, match="boom"), frozen_state(model):
        model(torch.randn(2, 3, 8, 8))
        raise RuntimeError("boom")
    assert model.bn.track_running_stats and model.bn.num_batches_tracked.item() == 0
    assert torch.equal(model.inorm.running_mean, before)


def test_construction_does_not_touch_model():
    model = TinyNet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ext = CAMExtractor(model)
    assert ext.exact is True and model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert CAMExtractor(ext).model is model  # unwraps an extractor


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="num_classes=0"):
        CAMExtractor(timm.create_model("resnet18", pretrained=False, num_classes=0))
    with pytest.raises(TypeError, match="forward_features"):
        CAMExtractor(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="returned a list"):
        CAMExtractor(timm.create_model("crossvit_tiny_240", pretrained=False, num_classes=2))
    ext = CAMExtractor(TinyNet())
    with pytest.raises(ValueError, match=r"images: expected a 4-D tensor"):
        ext(torch.randn(3, 16, 16))
    with pytest.raises(TypeError, match=r"images: expected a floating-point tensor"):
        ext(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"target: expected shape \(2,\)"):
        ext(torch.randn(2, 3, 16, 16), torch.tensor([0, 1, 1]))
    with pytest.raises(TypeError, match="target: expected an integer tensor"):
        ext(torch.randn(2, 3, 16, 16), torch.tensor([0.0, 1.0]))


def test_pooled_features_rejected():
    class Pooled(TinyNet):
        def forward_features(self, x):
            return super().forward_features(x).mean((2, 3))

        def forward_head(self, x, pre_logits=False):
            return x if pre_logits else self.fc(x)

    with pytest.raises(ValueError, match="pooled inside the model"):
        CAMExtractor(Pooled())


def test_normalize_cams():
    cams = torch.tensor([[[1.0, 3.0], [2.0, 2.0]], [[5.0, 5.0], [5.0, 5.0]]])
    dist = normalize_cams(cams, "distribution")
    torch.testing.assert_close(dist[0], torch.tensor([[0.0, 0.5], [0.25, 0.25]]))
    torch.testing.assert_close(dist[1], torch.full((2, 2), 0.25))  # constant -> uniform
    mm = normalize_cams(cams, "minmax")
    torch.testing.assert_close(mm[0], torch.tensor([[0.0, 1.0], [0.5, 0.5]]))
    torch.testing.assert_close(mm[1], torch.zeros(2, 2))
    assert normalize_cams(cams, "raw") is cams
    with pytest.raises(ValueError, match="mode"):
        normalize_cams(cams, "softmax")


@pytest.mark.parametrize(("height", "width", "cell"), [(8, 8, 2), (10, 7, 3), (5, 5, 1), (4, 9, 4)])
def test_cell_sums_match_loop(height, width, cell):
    maps = torch.randn(2, height, width, dtype=torch.float64)
    out = cell_sums(maps, cell)
    gh, gw = -(-height // cell), -(-width // cell)
    assert out.shape == (2, gh, gw)
    for b in range(2):
        for i in range(gh):
            for j in range(gw):
                block = maps[b, i * cell : (i + 1) * cell, j * cell : (j + 1) * cell]
                assert abs(float(out[b, i, j]) - float(block.sum())) < 1e-9
    with pytest.raises(ValueError, match="cell_size"):
        cell_sums(maps, 0)


def test_upsample_cams_bilinear_half_pixel():
    cams = torch.tensor([[[0.0, 1.0]]])
    up = upsample_cams(cams, (1, 4))
    torch.testing.assert_close(up, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))


@pytest.mark.parametrize("seed", range(4))
def test_exactness_does_not_depend_on_head_weights(seed):
    torch.manual_seed(seed)
    eva = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=2, img_size=56)
    assert CAMExtractor(eva).exact is False  # fc_norm before the classifier; head scaled by 1e-3
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, weight_init="jax"
    )
    assert CAMExtractor(vit).exact is False  # class-token head, zero-initialised
    tiny = TinyNet()
    with torch.no_grad():
        tiny.fc.weight.zero_()
    assert CAMExtractor(tiny).exact is True


@pytest.mark.parametrize("bad", [-1, 3])
def test_target_outside_the_classes_is_rejected_by_both_passes(bad):
    # -1 used to index the last class's weights silently, 3 to raise an IndexError
    ext = CAMExtractor(TinyNet(num_classes=3).eval())
    images, target = torch.randn(2, 3, 16, 16), torch.tensor([0, bad])
    for forward in (ext, ext.forward_frozen):
        with pytest.raises(ValueError, match=r"^target: expected class indices in \[0, 2\]"):
            forward(images, target)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {}),
        ("efficientnet_b0", {}),
        ("vit_tiny_patch16_224", {"img_size": 64}),
        ("convnext_atto", {}),
    ],
)
def test_model_without_pooling_head_is_rejected_at_construction(name, kwargs):
    # ResNet/EfficientNet failed with a shape mismatch, ViT/ConvNeXt gave per-token/per-cell
    # "logits"
    model = timm.create_model(name, pretrained=False, num_classes=3, global_pool="", **kwargs)
    with pytest.raises(ValueError, match=r"^model: .*into \(1, 3\) logits.*pooling head.*'avg'"):
        CAMExtractor(model)


def test_images_must_match_the_model_dtype_and_channels():
    model = timm.create_model("resnet18", pretrained=False, num_classes=2).eval()
    ext = CAMExtractor(model)
    images = torch.randn(2, 3, 32, 32)
    for forward in (ext, ext.forward_frozen):
        for dtype in (torch.float16, torch.bfloat16):
            with pytest.raises(TypeError, match=rf"^images: expected dtype torch.float32.*{dtype}"):
                forward(images.to(dtype))
        with pytest.raises(ValueError, match=r"^images: expected 3 channels.*\(2, 1, 32, 32\)"):
            forward(images[:, :1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ext(images.bfloat16()).logits.shape == (2, 2)  # autocast casts: no error
    model.double()  # the dtype is read from the model at each call
    assert ext(images.double()).logits.dtype == torch.float64
    with pytest.raises(TypeError, match=r"^images: expected dtype torch.float64"):
        ext(images)
    gray = timm.create_model("resnet18", pretrained=False, num_classes=2, in_chans=1).eval()
    assert CAMExtractor(gray)(images[:, :1]).cams.shape == (2, 1, 1)
    with pytest.raises(ValueError, match=r"^images: expected 1 channels"):
        CAMExtractor(gray)(images)
