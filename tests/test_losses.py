"""camkit.losses against Eq. 1 typed out and the float64 loop of benchmarks.reference."""

import dataclasses

import pytest
import torch

from benchmarks.reference import reference_cpe
from camkit import ContrastivePatchLoss, contrastive_patch_loss
from camkit.losses import _select_patches

EQ1 = {"normalize": False, "temperature": 1.0}  # the paper's form (the default is normalised)


def test_equals_eq1_written_out():
    """Eq. 1 with u1, u2 (top) and v1, v2 (bottom) typed in literally."""
    features = torch.randn(1, 5, 3, 3, dtype=torch.float64) * 0.5
    cams = torch.arange(9, dtype=torch.float64).view(1, 3, 3)
    cells = features[0].flatten(1).T
    u1, u2, v1, v2 = cells[8], cells[7], cells[0], cells[1]
    e = torch.exp
    cross = e(u1 @ v1) + e(u1 @ v2) + e(u2 @ v1) + e(u2 @ v2)
    eq1 = -torch.log(e(u1 @ u2) / (e(u1 @ u2) + cross)) - torch.log(
        e(v1 @ v2) / (e(v1 @ v2) + cross)
    )
    torch.testing.assert_close(contrastive_patch_loss(features, cams, **EQ1), eq1)


def test_the_default_is_the_recommended_normalised_form():
    """L2-normalised cells, τ = 0.1 (chosen on validation data); Eq. 1 is two arguments away."""
    gen = torch.Generator().manual_seed(3)
    features, cams = torch.randn(2, 8, 3, 3, generator=gen) * 5, torch.randn(2, 3, 3, generator=gen)
    default = ContrastivePatchLoss()
    assert (default.normalize, default.temperature) == (True, 0.1)
    normalised = reference_cpe(features, cams, normalize=True, temperature=0.1).mean()
    torch.testing.assert_close(default(features, cams).double(), normalised)
    torch.testing.assert_close(contrastive_patch_loss(features, cams).double(), normalised)
    eq1 = reference_cpe(features, cams).mean()  # the reference's default: Eq. 1
    assert not torch.allclose(normalised, eq1)
    torch.testing.assert_close(ContrastivePatchLoss(**EQ1)(features, cams).double(), eq1)


@pytest.mark.parametrize(
    ("n", "normalize", "temperature"),
    [(2, False, 1.0), (3, False, 1.0), (2, True, 0.1), (4, True, 0.5)],
)
def test_matches_slow_reference(n, normalize, temperature):
    gen = torch.Generator().manual_seed(n)
    features = torch.randn(4, 16, 4, 5, generator=gen)
    cams = torch.randn(4, 4, 5, generator=gen)
    loss = contrastive_patch_loss(
        features, cams, n, normalize=normalize, temperature=temperature, reduction="none"
    )
    ref = reference_cpe(features, cams, n, normalize=normalize, temperature=temperature)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    mean = ContrastivePatchLoss(n, normalize=normalize, temperature=temperature)(features, cams)
    torch.testing.assert_close(mean.double(), ref.mean(), rtol=1e-5, atol=1e-5)


def test_large_post_relu_features_stay_finite():
    """2048-d post-ReLU cells: dot products of order 10^3 would overflow exp() in float32."""
    gen = torch.Generator().manual_seed(0)
    features = (torch.randn(3, 2048, 7, 7, generator=gen) * 3).relu().requires_grad_(True)
    cams = torch.randn(3, 7, 7, generator=gen)
    loss = contrastive_patch_loss(features, cams, reduction="none", **EQ1)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(
        loss.double(), reference_cpe(features.detach(), cams), rtol=1e-4, atol=1e-3
    )
    loss.sum().backward()
    assert torch.isfinite(features.grad).all()


def test_gradient_reaches_exactly_the_selected_cells():
    features = torch.randn(2, 8, 3, 3, requires_grad=True)
    cams = torch.randn(2, 3, 3)
    contrastive_patch_loss(features, cams).backward()
    touched = features.grad.abs().sum(1) > 0
    for b in range(2):
        order = torch.argsort(cams[b].flatten(), descending=True)
        expected = torch.zeros(9, dtype=torch.bool)
        expected[order[:2]] = True
        expected[order[-2:]] = True
        assert torch.equal(touched[b].flatten(), expected)


def test_cams_at_image_resolution_rank_by_cell_mass():
    features = torch.randn(1, 4, 2, 2)
    cams = torch.zeros(1, 8, 8)
    cams[0, :4, 4:] = 3.0  # cell (0, 1) most relevant
    cams[0, 4:, 4:] = 1.0  # then (1, 1)
    cams[0, 4:, :4] = -2.0  # (1, 0) least relevant, (0, 0) next
    top, bottom = _select_patches(features, cams, 2)
    cells = features[0].flatten(1).T
    torch.testing.assert_close(top[0], cells[[1, 3]])
    torch.testing.assert_close(bottom[0], cells[[2, 0]])


def test_constant_cams_give_disjoint_groups():
    features = torch.randn(1, 4, 3, 3)
    top, bottom = _select_patches(features, torch.zeros(1, 3, 3), 2)
    cells = features[0].flatten(1).T
    torch.testing.assert_close(top[0], cells[[0, 1]])
    torch.testing.assert_close(bottom[0], cells[[8, 7]])


def test_errors():
    features, cams = torch.randn(2, 4, 3, 3), torch.randn(2, 3, 3)
    with pytest.raises(ValueError, match="num_patches"):
        ContrastivePatchLoss(1)
    with pytest.raises(ValueError, match="num_patches"):
        contrastive_patch_loss(features, cams, 5)  # 10 cells > 9
    with pytest.raises(ValueError, match="temperature"):
        ContrastivePatchLoss(temperature=0.0)
    with pytest.raises(ValueError, match="cams: expected 2 maps"):
        contrastive_patch_loss(features, torch.randn(3, 3, 3))
    with pytest.raises(ValueError, match="features: expected a 4 or 5-D tensor"):
        contrastive_patch_loss(features[0], cams)
    with pytest.raises(ValueError, match=r"^reduction: expected one of 'mean', 'sum', 'none'"):
        ContrastivePatchLoss(reduction="max")
    with pytest.raises(TypeError, match=r"^num_patches: expected an int >= 2, got 2.0 \(float\)"):
        contrastive_patch_loss(features, cams, 2.0)
    with pytest.raises(ValueError, match=r"^num_patches: expected an int >= 2, got 1"):
        contrastive_patch_loss(features, cams, 1)


def test_settings_are_validated_once_into_a_frozen_config():
    loss = ContrastivePatchLoss(3, normalize=1, temperature=1)
    assert (loss.num_patches, loss.normalize, loss.temperature, loss.reduction) == (
        3,
        True,
        1.0,
        "mean",
    )
    assert isinstance(loss.temperature, float) and loss.normalize is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        loss.config.num_patches = 2
    with pytest.raises(AttributeError):
        loss.num_patches = 2  # read-only: the config is the one source of the settings
    assert repr(loss) == (
        "ContrastivePatchLoss(num_patches=3, normalize=True, temperature=1.0, reduction='mean')"
    )


@pytest.mark.parametrize("size", [(8, 10), (7, 9)])
def test_cams_at_another_resolution_match_the_area_averaging_reference(size):
    """CAMs at 2× (whole blocks) and at a non-multiple size are area-averaged onto the cells."""
    gen = torch.Generator().manual_seed(7)
    features = torch.randn(3, 16, 4, 5, generator=gen)
    cams = torch.randn(3, *size, generator=gen)
    loss = contrastive_patch_loss(features, cams, 2, reduction="none", **EQ1)
    torch.testing.assert_close(loss.double(), reference_cpe(features, cams), rtol=1e-5, atol=1e-5)


def test_autocast_keeps_dot_products_in_float32():
    gen = torch.Generator().manual_seed(1)
    features = (torch.randn(2, 512, 4, 4, generator=gen) * 2).relu()
    cams = torch.randn(2, 4, 4, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = contrastive_patch_loss(features.bfloat16(), cams, **EQ1)
    assert loss.dtype == torch.float32
    ref = reference_cpe(features.bfloat16().double(), cams).mean()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("normalize", [False, True])
def test_empty_batch_gives_a_zero_loss_that_keeps_the_graph(normalize):
    features = torch.randn(0, 8, 4, 4, requires_grad=True)
    cams = torch.rand(0, 4, 4)
    for reduction in ("mean", "sum"):
        loss = ContrastivePatchLoss(normalize=normalize, reduction=reduction)(features, cams)
        assert loss.shape == () and loss.item() == 0.0 and loss.grad_fn is not None
        other = torch.ones((), requires_grad=True)
        (2 * other + loss).backward()  # adds nothing to a training step's loss, no NaN
        assert other.grad.item() == 2.0 and features.grad.shape == features.shape
    none = ContrastivePatchLoss(normalize=normalize, reduction="none")(features, cams)
    assert none.shape == (0,) and none.grad_fn is not None
