"""The model contract over families: every adapter of camkit.models, through every part of camkit.

Each family (torchvision, MONAI, Hugging Face, a named split) is built small, from random weights,
and must:

- give the model's own logits through its adapter, bit for bit (max difference 0.0), with the
  model's own parameters (no copy: an optimiser on the model trains what camkit runs);
- run CAMExtractor (``exact`` as the head says), TrainStep with SnapMix + CPE (one step, finite
  loss, gradients on the model's parameters), and CAMMaskingTTA.

A new family is one adapter module plus its entry in `FAMILIES` (3-D ones in `VOLUME_FAMILIES`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from camkit import (
    CAMExtractor,
    CAMMaskingTTA,
    ContrastivePatchLoss,
    CutMix,
    SnapMix,
    TrainStep,
    as_classifier,
)
from camkit.models import ClassifierAdapter, eval_module, source_model, unwrap_logits
from tests.helpers import one_thread  # noqa: F401  (the volume families' fixture)

monai_nets = pytest.importorskip("monai.networks.nets")  # the dev extra installs it
transformers = pytest.importorskip("transformers")

K = 3


def _tv_vit() -> nn.Module:
    return tvm.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=K,
    )  # fmt: skip


def _tv_swin() -> nn.Module:
    return tvm.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=[2, 2],
        num_classes=K,
    )  # fmt: skip


def _tv_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig

    return tvm.ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=K)


def _monai_vit() -> nn.Module:
    return monai_nets.ViT(
        in_channels=3, img_size=32, patch_size=8, hidden_size=16, mlp_dim=32, num_layers=1,
        num_heads=2, classification=True, num_classes=K, spatial_dims=2,
    )  # fmt: skip


def _hf(config: str, model: str, **kwargs) -> nn.Module:
    return getattr(transformers, model)(getattr(transformers, config)(num_labels=K, **kwargs))


def _paper_split() -> nn.Module:
    """A torchvision-free classifier, presented by its split (the paper's MLP head shape)."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, K),
    )  # fmt: skip
    return net


# family -> (builder, input side, exact CAM head?, split for as_classifier or None)
FAMILIES = {
    "tv_resnet": (lambda: tvm.ResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=K), 64, True),
    "tv_resnext": (
        lambda: tvm.ResNet(
            tvm.resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=8, num_classes=K
        ),
        64,
        True,
    ),
    "tv_densenet": (
        lambda: tvm.DenseNet(8, (2, 2), num_init_features=16, num_classes=K),
        64,
        True,
    ),
    "tv_efficientnet_b0": (lambda: tvm.efficientnet_b0(num_classes=K), 64, True),
    "tv_mobilenet_v2": (lambda: tvm.mobilenet_v2(num_classes=K, width_mult=0.25), 64, True),
    "tv_mobilenet_v3": (lambda: tvm.mobilenet_v3_small(num_classes=K), 64, False),  # MLP head
    "tv_convnext": (_tv_convnext, 64, False),  # LayerNorm after pooling
    "tv_regnet": (lambda: tvm.regnet_y_400mf(num_classes=K), 64, True),
    "tv_vit": (_tv_vit, 32, False),  # class token
    "tv_swin": (_tv_swin, 32, True),
    "monai_densenet": (
        lambda: monai_nets.DenseNet(
            spatial_dims=2,
            in_channels=3,
            out_channels=K,
            init_features=16,
            growth_rate=8,
            block_config=(2, 2),
        ),
        64,
        True,
    ),
    "monai_efficientnet": (
        lambda: monai_nets.EfficientNetBN(
            "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3, num_classes=K
        ),
        64,
        True,
    ),
    "monai_senet": (
        lambda: monai_nets.SENet(
            spatial_dims=2,
            in_channels=3,
            block="se_resnet_bottleneck",
            layers=(1, 1, 1, 1),
            groups=1,
            reduction=4,
            inplanes=16,
            downsample_kernel_size=1,
            input_3x3=False,
            num_classes=K,
        ),
        64,
        True,
    ),
    "monai_resnet": (
        lambda: monai_nets.ResNet(
            "basic",
            [1, 1, 1, 1],
            [8, 16, 16, 32],
            spatial_dims=2,
            n_input_channels=3,
            num_classes=K,
        ),
        64,
        True,
    ),
    "monai_vit": (_monai_vit, 32, False),  # class token, Tanh
    "hf_resnet": (
        lambda: _hf(
            "ResNetConfig",
            "ResNetForImageClassification",
            embedding_size=8,
            hidden_sizes=[8, 16],
            depths=[1, 1],
        ),
        64,
        True,
    ),
    "hf_convnext": (
        lambda: _hf(
            "ConvNextConfig",
            "ConvNextForImageClassification",
            hidden_sizes=[8, 16],
            depths=[1, 1],
            num_stages=2,
        ),
        64,
        False,
    ),
    "hf_vit": (
        lambda: _hf(
            "ViTConfig",
            "ViTForImageClassification",
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        ),
        32,
        False,
    ),
    "hf_swin": (
        lambda: _hf(
            "SwinConfig",
            "SwinForImageClassification",
            image_size=32,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1],
            num_heads=[1, 2],
            window_size=4,
        ),
        32,
        True,
    ),
    "split": (
        lambda: as_classifier(
            _paper_split(), features=["0", "1", "2", "3", "4"], head=["5", "6", "7", "8", "9"]
        ),
        64,
        False,
    ),
}


def _build(family: str) -> tuple[nn.Module, torch.Tensor]:
    builder, side, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = builder()
    images = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(1))
    return model, images


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    out = source_model(model)(images)
    return out[0] if isinstance(out, tuple) else unwrap_logits(out)  # MONAI's ViT: a tuple


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_adapted_logits_are_the_models_bit_for_bit(family):
    model, images = _build(family)
    model.eval()
    adapter = as_classifier(model)
    assert isinstance(adapter, ClassifierAdapter)
    with torch.no_grad():
        assert float((adapter(images) - _logits(model, images)).abs().max()) == 0.0
    # no copy: the adapter's parameters are the model's own tensors
    own = {id(p) for p in source_model(model).parameters()}
    assert {id(p) for p in adapter.parameters()} == own
    assert adapter.num_classes == K
    assert eval_module(source_model(model))(images).shape == (4, K)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_part_accepts_the_family(family):
    model, images = _build(family)
    exact = FAMILIES[family][2]
    labels = torch.tensor([0, 1, 2, 0])
    user = source_model(model)

    ext = CAMExtractor(model.eval())
    out = ext(images, labels)
    assert ext.exact is exact
    assert out.cams.shape[0] == 4 and out.cams.ndim == 3 and torch.isfinite(out.cams).all()
    # the same grad mode as the extractor's forward (attention kernels differ without autograd)
    torch.testing.assert_close(out.logits, _logits(model, images), rtol=0, atol=0)
    if exact:  # the CAM's mean plus the bias is the logit
        bias = ext.model.get_classifier().bias.detach()
        torch.testing.assert_close(
            out.cams.mean((1, 2)) + bias[labels], out.logits[range(4), labels]
        )

    user.train()
    step = TrainStep(model, mix=SnapMix(K, generator=torch.Generator().manual_seed(0)),
                     cpe=ContrastivePatchLoss())  # fmt: skip
    assert step.model is user
    result = step(images, labels)
    assert torch.isfinite(result.loss)
    result.loss.backward()
    grads = [p.grad for p in user.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[-2:])  # the class layer trains
    assert sum(1 for g in grads if g is not None and g.abs().sum() > 0) > len(grads) // 2

    user.eval()
    side = images.shape[-1]
    tta = CAMMaskingTTA(model, k=3, patch_size=side // 4)
    res = tta.predict(images)
    assert res.labels.shape == (4,) and (res.forwards >= 1).all()


def test_cam_free_step_unwraps_hugging_face_outputs():
    """CutMix needs no CAMs: the step reads ``.logits`` (it crashed in soft_cross_entropy)."""
    model, images = _build("hf_resnet")
    labels = torch.tensor([0, 1, 2, 0])
    model.eval()  # deterministic: the loss is recomputed below from the same draws
    step = TrainStep(model, mix=CutMix(K, generator=torch.Generator().manual_seed(0)))
    with pytest.warns(UserWarning, match="eval mode"):
        out = step(images, labels)
    expected = -(out.targets * model(out.inputs).logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(out.loss, expected)
    plain = TrainStep(model)(images, labels)
    torch.testing.assert_close(plain.logits, model(images).logits)


def test_the_step_keeps_the_users_state_dict_keys():
    model, _ = _build("hf_vit")
    step = TrainStep(model, cpe=ContrastivePatchLoss())
    assert list(step.model.state_dict()) == list(model.state_dict())
    assert step.extractor.model.module is model


def test_paper_resnet50_with_mlp_head_gets_the_head_gradient_cam():
    """torchvision resnet50 with the paper's fc (Linear 2048→512, ReLU, Linear 512→2)."""
    torch.manual_seed(0)
    model = tvm.resnet50(num_classes=2)
    model.fc = nn.Sequential(nn.Linear(2048, 512), nn.ReLU(), nn.Linear(512, 2))
    model.eval()
    ext = CAMExtractor(model)
    images = torch.randn(2, 3, 64, 64)
    out = ext(images)
    assert not ext.exact and ext.num_classes == 2
    assert out.cams.shape == (2, 2, 2)
    # the head gradient: d logit / d pooled, through the MLP
    feats = ext.model.forward_features(images).detach()
    pooled = feats.mean((2, 3)).requires_grad_(True)
    logit = model.fc(pooled).gather(1, out.target[:, None]).sum()
    (alpha,) = torch.autograd.grad(logit, pooled)
    torch.testing.assert_close(out.cams, torch.einsum("bc,bchw->bhw", alpha, feats))


# --- refusals and messages ----------------------------------------------------------------------


class _Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.backbone(x))), 1))


def test_an_unknown_model_is_refused_with_the_split_to_write():
    with pytest.raises(TypeError, match=r"features='backbone', head=\['pool', 'fc'\]"):
        CAMExtractor(_Unknown())
    with pytest.raises(TypeError, match="as_classifier"):
        TrainStep(_Unknown(), cpe=ContrastivePatchLoss())
    TrainStep(_Unknown())  # CAM-free: any classifier returning logits


def test_a_split_is_checked_against_the_models_forward():
    model = _Unknown()
    with pytest.raises(ValueError, match="does not reproduce its logits"):  # relu left out
        as_classifier(model, features="backbone", head=["pool", nn.Flatten(1), "fc"])
    with pytest.raises(ValueError, match="fails on a zero input"):  # the flatten left out
        as_classifier(model, features=["backbone", torch.relu], head=["pool", "fc"])
    with pytest.raises(ValueError, match="no submodule 'body'"):
        as_classifier(model, features="body", head="fc")
    with pytest.raises(ValueError, match="not a submodule"):
        as_classifier(model, features=["backbone", nn.Conv2d(8, 8, 1)], head="fc")
    split = as_classifier(
        model, features=["backbone", torch.relu], head=["pool", nn.Flatten(1), "fc"]
    )
    ext = CAMExtractor(split)
    assert ext.exact and ext.num_classes == 2
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert float((split(images) - model(images)).abs().max()) == 0.0


def test_a_timm_model_whose_fc_was_replaced_is_told_num_classes():
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    model.fc = nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match=r"returns 2 logits but model.num_classes is 1000") as err:
        CAMExtractor(model)
    assert "global_pool" not in str(err.value)
    model.num_classes = 2
    assert not CAMExtractor(model).exact  # the MLP head: head-gradient CAM


def test_a_hand_written_adapter_without_num_classes_is_told_so():
    class Adapter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward_features(self, x):
            return self.body(x)

        def forward_head(self, x):
            return self.fc(x.mean((2, 3)))

        def get_classifier(self):
            return self.fc

    with pytest.raises(ValueError, match="no num_classes attribute") as err:
        CAMExtractor(Adapter())
    assert "has no classifier" not in str(err.value)


def test_monai_networks_without_a_classifier_are_refused():
    vit = monai_nets.ViT(in_channels=1, img_size=32, patch_size=8, hidden_size=16, mlp_dim=32,
                         num_layers=1, num_heads=2, spatial_dims=2)  # fmt: skip
    with pytest.raises(ValueError, match="classification=True"):
        CAMExtractor(vit)


def test_import_camkit_imports_no_adapter_family():
    """The family modules load when a model of theirs is met, not before (timm models never)."""
    code = (
        "import json, sys, timm, torch, camkit; "
        "m = timm.create_model('resnet18', pretrained=False, num_classes=2); "
        "camkit.TrainStep(m, cpe=camkit.ContrastivePatchLoss())(torch.randn(2, 3, 64, 64), "
        "torch.tensor([0, 1])); "
        "names = ('camkit.models._', 'monai'); "
        "print(json.dumps(sorted(n for n in sys.modules if n.startswith(names))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip())
    assert sorted(loaded) == [
        "camkit.models._base",
        "camkit.models._resolve",
        "camkit.models._split",
    ]


# --- volumes ------------------------------------------------------------------------------------


def _densenet3d() -> nn.Module:
    torch.manual_seed(0)
    return monai_nets.DenseNet(
        spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
        block_config=(2, 2),
    ).eval()  # fmt: skip


def test_volume_cams_are_exact_and_n_dimensional():
    model = _densenet3d()
    volumes = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    ext = CAMExtractor(model)
    out = ext(volumes, torch.tensor([0, 1]))
    assert ext.exact
    assert out.features.ndim == 5 and out.cams.shape == (2, *out.features.shape[2:])
    bias = model.class_layers.out.bias.detach()
    torch.testing.assert_close(
        out.cams.mean((1, 2, 3)) + bias[out.target], out.logits[range(2), out.target]
    )
    # a per-cell loop reference of the class rows
    weight = model.class_layers.out.weight.detach()
    loop = torch.stack(
        [
            torch.einsum("c,cdhw->dhw", weight[t], f)
            for t, f in zip(out.target, out.features, strict=True)
        ]
    )
    torch.testing.assert_close(out.cams, loop)
    with pytest.raises(ValueError, match="expected a 5-D tensor"):
        ext(torch.randn(2, 1, 32, 32))
    for method in ("gradcam", "gradcampp", "layercam"):
        maps = CAMExtractor(model, method=method)(volumes).cams
        assert maps.shape == out.cams.shape and (maps >= 0).all()
    with torch.no_grad():
        two = CAMExtractor(model)(volumes, torch.tensor([[0, 1], [1, 0]])).cams
    assert two.shape == (2, 2, *out.cams.shape[1:])


def test_volume_map_reductions():
    import torch.nn.functional as F

    from camkit import cell_sums, normalize_cams, upsample_cams

    cams = torch.rand(2, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    up = upsample_cams(cams, (8, 12, 16))
    trilinear = F.interpolate(cams[:, None], (8, 12, 16), mode="trilinear", align_corners=False)
    assert torch.equal(up, trilinear[:, 0])
    with pytest.raises(ValueError, match="size: expected 3 sides"):
        upsample_cams(cams, (8, 8))
    sums = cell_sums(torch.ones(1, 5, 4, 4), 2)  # the last cell in depth is partial
    assert sums.shape == (1, 3, 2, 2)
    assert sums[0, :2].eq(8).all() and sums[0, 2].eq(4).all()
    norm = normalize_cams(cams)
    torch.testing.assert_close(norm.sum((1, 2, 3)), torch.ones(2))
    assert norm.flatten(1).amin(1).eq(0).all()


# --- DDP and torch.compile around a step of an adapted family --------------------------------


@pytest.mark.slow
def test_ddp_of_a_step_on_a_torchvision_model_keeps_ranks_in_sync(tmp_path):
    import os

    worker = Path(__file__).with_name("ddp_adapter_worker.py")
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(worker.parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(worker), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world"] == 2 and report["moved"] > 1e-3
    assert report["max_param_diff"] == 0.0


@pytest.mark.slow
def test_torch_compile_of_a_step_on_a_torchvision_model_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tvm.ResNet(tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=2)
    model.fc = nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 2))
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 1, 0])

    def make() -> TrainStep:
        mix = SnapMix(2, generator=torch.Generator().manual_seed(0))
        return TrainStep(model, mix=mix, cpe=ContrastivePatchLoss())

    eager = make()(images, labels)
    compiled = torch.compile(make())
    out = compiled(images, labels)
    out.loss.backward()
    torch.testing.assert_close(out.loss, eager.loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.targets, eager.targets)
    assert model.fc[0].weight.grad is not None
    torch._dynamo.reset()


@pytest.mark.slow
def test_the_your_model_page_snippets_run(capsys):
    """Every Python block of docs/your-model.md runs as printed (the 3-D one at 64³)."""
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "your-model.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert len(blocks) == 6
    for block in blocks:
        torch.manual_seed(0)
        exec(compile(block, "your-model.md", "exec"), {"__name__": "snippet"})
    printed = capsys.readouterr().out.split("\n")
    assert printed[0] == "False"  # the paper's ResNet-50: head-gradient CAM
    assert "torch.Size([2, 7, 7])" in printed
    assert "torch.Size([1, 1024, 2, 2, 2]) torch.Size([1, 2, 2, 2])" in printed


# --- the volume families: the contract on (B, 1, D, H, W) batches ------------------------------


def _monai_efficientnet_3d() -> nn.Module:
    """EfficientNetBN's base class, three stages (a /8 network): b0 at 64³ would take seconds."""
    from monai.networks.nets.efficientnet import EfficientNet

    blocks = ["r1_k3_s11_e1_i32_o16_se0.25", "r1_k3_s22_e6_i16_o24_se0.25",
              "r1_k3_s22_e6_i24_o40_se0.25"]  # fmt: skip
    return EfficientNet(blocks, spatial_dims=3, in_channels=1, num_classes=K,
                        width_coefficient=0.5, image_size=32)  # fmt: skip


def _monai_densenet_3d() -> nn.Module:
    return monai_nets.DenseNet(spatial_dims=3, in_channels=1, out_channels=K, init_features=8,
                               growth_rate=4, block_config=(2, 2))  # fmt: skip


def _monai_resnet_3d() -> nn.Module:
    return monai_nets.ResNet("basic", [1, 1, 1, 1], [8, 8, 16, 16], spatial_dims=3,
                             n_input_channels=1, num_classes=K)  # fmt: skip


def _monai_senet_3d() -> nn.Module:  # SENet's planes are fixed (up to 2048 channels)
    return monai_nets.SENet(spatial_dims=3, in_channels=1, block="se_resnet_bottleneck",
                            layers=(1, 1, 1, 1), groups=1, reduction=4, inplanes=8,
                            downsample_kernel_size=1, input_3x3=False, num_classes=K)  # fmt: skip


VOLUME_FAMILIES = {  # (builder, side, batch): SENet divides by 32, so 64³ for a 2³ map
    "monai_densenet_3d": (_monai_densenet_3d, 32, 4),
    "monai_resnet_3d": (_monai_resnet_3d, 32, 4),
    "monai_efficientnet_3d": (_monai_efficientnet_3d, 32, 4),
    "monai_senet_3d": (_monai_senet_3d, 64, 2),
}


@pytest.mark.usefixtures("one_thread")  # 3-D convolutions: many times slower on a shared CPU
@pytest.mark.parametrize("family", sorted(VOLUME_FAMILIES))
def test_every_part_accepts_the_volume_family(family):
    """The 3-D families through the same parts: exact CAMs, SnapMix + CPE, the TTA (last in the
    module: the one-thread fixture lasts to the module's end)."""
    builder, side, batch = VOLUME_FAMILIES[family]
    torch.manual_seed(0)
    model = builder()
    volumes = torch.randn(batch, 1, side, side, side, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 0])[:batch]
    user = source_model(model)

    ext = CAMExtractor(model.eval())
    out = ext(volumes, labels)
    assert ext.exact and out.cams.ndim == 4 and min(out.cams.shape[1:]) >= 2
    torch.testing.assert_close(out.logits, _logits(model, volumes), rtol=0, atol=0)
    bias = ext.model.get_classifier().bias.detach()
    torch.testing.assert_close(
        out.cams.mean((1, 2, 3)) + bias[labels], out.logits[range(batch), labels]
    )

    user.train()
    step = TrainStep(model, mix=SnapMix(K, generator=torch.Generator().manual_seed(1)),
                     cpe=ContrastivePatchLoss())  # fmt: skip
    result = step(volumes, labels)
    assert result.inputs.shape == volumes.shape and not torch.equal(result.inputs, volumes)
    assert torch.isfinite(result.loss) and result.cpe_loss is not None
    result.loss.backward()
    grads = [p.grad for p in user.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[-2:])  # the class layer trains
    assert sum(1 for g in grads if g is not None and g.abs().sum() > 0) > len(grads) // 2

    user.eval()
    res = CAMMaskingTTA(model, k=3, patch_size=side // 4).predict(volumes)
    assert res.labels.shape == (batch,) and (res.forwards >= 1).all()
