"""camkit.tta against the per-image loops of benchmarks.reference."""

import copy
import dataclasses

import pytest
import timm
import torch

from benchmarks.reference import reference_cell_order, reference_mask, reference_vote
from camkit import CAMExtractor, CAMMaskingTTA, cell_sums, upsample_cams
from camkit.tta._masking import cell_ranks, masked_copies
from tests.helpers import TinyNet


def _evidence_model(seed: int = 0) -> TinyNet:
    """A TinyNet whose class-1 evidence is local, so masking relevant cells moves predictions."""
    torch.manual_seed(seed)
    model = TinyNet(num_classes=2, channels=4, stride=4, bn=False)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[-1.0, 0.5, -0.2, 0.1], [1.0, -0.5, 0.2, -0.1]]) * 4)
        model.fc.bias.zero_()
    return model.eval()


def test_masked_copies_match_loop_reference():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 12, 10, generator=gen)  # a 3×3 grid with partial edge cells
    cams = torch.rand(2, 3, 3, generator=gen)
    ranks = cell_ranks(cams, (12, 10), 4)
    for b in range(2):
        order = reference_cell_order(cams[b], (12, 10), 4)
        for steps in (0, 1, 4, 9):
            out = masked_copies(images[b : b + 1], ranks[b : b + 1], torch.tensor([steps]), -1.5)
            torch.testing.assert_close(out[0], reference_mask(images[b], order[:steps], 4, -1.5))


@pytest.mark.parametrize("count_original", [False, True])
@pytest.mark.parametrize("theta", [0.2, 0.5, 0.8])
def test_early_exit_labels_equal_full_vote(theta, count_original):
    model = _evidence_model()
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kwargs = dict(k=9, theta=theta, patch_size=4, count_original=count_original, chunk_size=7)
    fast = CAMMaskingTTA(model, early_exit=True, **kwargs).predict(images)
    full = CAMMaskingTTA(model, early_exit=False, **kwargs).predict(images)
    assert torch.equal(fast.labels, full.labels)
    assert torch.equal(fast.flipped, full.flipped)
    assert (fast.forwards <= full.forwards).all() and (full.forwards == 10).all()
    evaluated = ~torch.isnan(fast.step_probs)
    torch.testing.assert_close(fast.step_probs[evaluated], full.step_probs[evaluated])
    expected_flip = reference_vote(
        full.step_probs, full.original_probs, theta=theta, count_original=count_original
    )
    assert torch.equal(full.flipped, expected_flip)


def test_flips_happen_and_probs_are_one_hot_there():
    model = _evidence_model()
    images = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    res = CAMMaskingTTA(model, k=9, theta=0.5, patch_size=4).predict(images)
    assert res.flipped.any() and (~res.flipped).any()
    assert torch.equal(res.labels[res.flipped], 1 - res.original_labels[res.flipped])
    assert torch.equal(
        res.probs[res.flipped], torch.nn.functional.one_hot(res.labels[res.flipped], 2).float()
    )
    assert torch.equal(res.probs[~res.flipped], res.original_probs[~res.flipped])
    assert torch.equal(res.votes_for + res.votes_against, res.forwards - 1)
    assert (res.forwards < 10).any()  # early exit saved work


def test_step_probs_are_model_probs_on_masked_copies():
    model = _evidence_model()
    images = torch.randn(3, 3, 16, 16)
    res = CAMMaskingTTA(model, k=4, patch_size=4, early_exit=False).predict(images)
    with torch.no_grad():
        out = CAMExtractor(model)(images)
    ranks = cell_ranks(out.cams, (16, 16), 4)
    for j in range(1, 5):
        copies = masked_copies(images, ranks, torch.full((3,), j))
        with torch.no_grad():
            p = model(copies).softmax(1).gather(1, res.original_labels[:, None])[:, 0]
        torch.testing.assert_close(res.step_probs[:, j - 1], p)


def test_multiclass_flip_goes_to_runner_up():
    model = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    images = torch.randn(4, 3, 32, 32)
    res = CAMMaskingTTA(model, k=3, theta=0.99, patch_size=8).predict(images)
    assert res.flipped.all()  # no 5-class copy reaches 0.99
    assert torch.equal(res.labels, res.original_probs.topk(2, dim=1).indices[:, 1])


def test_no_grad_and_model_state_untouched():
    model = timm.create_model("resnet18", pretrained=False, num_classes=2)
    model.train()
    state = copy.deepcopy(model.state_dict())
    probs = CAMMaskingTTA(model, k=4, patch_size=16)(torch.randn(2, 3, 64, 64))
    assert probs.shape == (2, 2) and not probs.requires_grad
    assert model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_per_channel_mask_value():
    model = _evidence_model()
    tta = CAMMaskingTTA(model, k=2, patch_size=4, mask_value=(0.1, 0.2, 0.3))
    assert tta.predict(torch.randn(2, 3, 16, 16)).labels.shape == (2,)
    with pytest.raises(ValueError, match="mask_value: expected 1 or 3"):
        CAMMaskingTTA(model, k=2, patch_size=4, mask_value=(0.1, 0.2)).predict(
            torch.randn(2, 3, 16, 16)
        )


def test_errors():
    model = _evidence_model()
    with pytest.raises(ValueError, match="k: expected an int"):
        CAMMaskingTTA(model, k=0)
    with pytest.raises(ValueError, match="theta"):
        CAMMaskingTTA(model, theta=1.5)
    with pytest.raises(ValueError, match="only 4 cells"):
        CAMMaskingTTA(model, k=5, patch_size=8).predict(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="images: expected a 4-D tensor"):
        CAMMaskingTTA(model, k=2, patch_size=4).predict(torch.randn(3, 16, 16))


class _NaNOnMaskedPixels(TinyNet):
    """NaN logits for any image holding an exact 0, i.e. for every masked copy (mask_value=0)."""

    def forward_features(self, x):
        feats = super().forward_features(x)
        return torch.where((x == 0).flatten(1).any(1)[:, None, None, None], float("nan"), feats)


@pytest.mark.parametrize("early_exit", [True, False])
def test_non_finite_model_outputs_raise_instead_of_voting(early_exit):
    # a NaN probability used to count as a supporting vote (NaN <= theta is False)
    model = _NaNOnMaskedPixels(num_classes=2, channels=4, stride=4, bn=False).eval()
    images = torch.randn(3, 3, 16, 16)
    tta = CAMMaskingTTA(model, k=3, patch_size=4, early_exit=early_exit)
    with pytest.raises(ValueError, match=r"^model: .*non-finite.*masked copies.*\[0, 1, 2\]"):
        tta.predict(images)
    images[1, 0, 5, 5] = float("nan")
    tta = CAMMaskingTTA(_evidence_model(), k=3, patch_size=4, early_exit=early_exit)
    # a NaN pixel is refused by the CAM pass's input check, before any output is voted on
    with pytest.raises(ValueError, match=r"^images: expected finite values, got 1 NaN or inf"):
        tta.predict(images)


def test_step_probs_nan_marks_exactly_the_skipped_steps():
    model = _evidence_model()
    images = torch.randn(6, 3, 16, 16)
    full = CAMMaskingTTA(model, k=9, theta=0.4, patch_size=4, early_exit=False).predict(images)
    fast = CAMMaskingTTA(model, k=9, theta=0.4, patch_size=4).predict(images)
    evaluated = ~torch.isnan(fast.step_probs)
    assert torch.equal(evaluated.sum(1), fast.forwards - 1)
    assert torch.equal(fast.step_probs[evaluated], full.step_probs[evaluated])
    assert torch.equal(fast.labels, full.labels)


@pytest.mark.parametrize("rule,theta", [("threshold", 0.27), ("argmax", 0.3), ("relative", 0.97)])
@pytest.mark.parametrize("early_exit", [False, True])
def test_vote_rules_match_a_per_image_reference(rule, theta, early_exit):
    torch.manual_seed(3)
    model = TinyNet(num_classes=4, channels=6, stride=4, bn=False).eval()
    images = torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    tta = CAMMaskingTTA(model, k=5, theta=theta, patch_size=4, early_exit=early_exit, rule=rule)
    res = tta.predict(images)
    with torch.no_grad():
        out = CAMExtractor(model)(images)
        ranks = cell_ranks(out.cams, (16, 16), 4)
        steps = [
            model(masked_copies(images, ranks, torch.full((24,), j))).softmax(1)
            for j in range(1, 6)
        ]
    probs0 = out.logits.softmax(1)
    pred = probs0.argmax(1, keepdim=True)
    step_probs = torch.cat([p.gather(1, pred) for p in steps], 1)
    expected = reference_vote(step_probs, probs0, theta=theta, rule=rule, step_class_probs=steps)
    assert torch.equal(res.flipped, expected)
    assert expected.any() and (~expected).any()  # the case discriminates


def test_k_class_rules_do_not_flip_every_low_confidence_prediction():
    """10 classes near 1/K: the paper's threshold flips all, argmax/relative keep stable ones."""
    torch.manual_seed(0)
    model = TinyNet(num_classes=10, channels=6, stride=4, bn=False).eval()
    with torch.no_grad():
        model.fc.weight.mul_(0.01)  # near-uniform predictions, max p ≈ 0.1 < θ
    images = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    flips = {
        rule: CAMMaskingTTA(model, k=5, theta=0.2, patch_size=4, rule=rule).predict(images).flipped
        for rule in ("threshold", "argmax", "relative")
    }
    assert flips["threshold"].all()
    assert not flips["relative"].all() and not flips["argmax"].all()


def test_unknown_rule_is_refused():
    with pytest.raises(
        ValueError, match="rule: expected one of 'threshold', 'argmax', 'relative', got 'majority'"
    ):
        CAMMaskingTTA(_evidence_model(), rule="majority")


def test_settings_are_validated_once_into_a_frozen_config():
    tta = CAMMaskingTTA(_evidence_model(), k=3, theta=1, patch_size=4, mask_value=[0.5, 0, -1])
    assert (tta.k, tta.theta, tta.patch_size, tta.rule) == (3, 1.0, 4, "threshold")
    assert isinstance(tta.theta, float) and tta.mask_value == (0.5, 0.0, -1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tta.config.k = 5
    with pytest.raises(AttributeError):
        tta.k = 5  # read-only: the config is the one source of the settings
    assert "k=3, theta=1.0, patch_size=4" in repr(tta)
    with pytest.raises(TypeError, match=r"^k: expected an int >= 1, got 2.0 \(float\)"):
        CAMMaskingTTA(_evidence_model(), k=2.0)
    with pytest.raises(TypeError, match=r"^chunk_size: expected an int"):
        CAMMaskingTTA(_evidence_model(), chunk_size=True)
    with pytest.raises(TypeError, match=r"^mask_value: expected a number or a sequence"):
        CAMMaskingTTA(_evidence_model(), mask_value="grey")
    # the settings of a built TTA are used as given: a per-channel mask of 3 values masks RGB
    res = CAMMaskingTTA(_evidence_model(), k=2, patch_size=4, mask_value=tta.mask_value).predict(
        torch.randn(2, 3, 16, 16)
    )
    assert res.step_probs.shape == (2, 2)


def test_deletion_auc_refuses_a_curve_without_span():
    from camkit.tta import DeletionCurve, deletion_auc

    curve = DeletionCurve(fractions=torch.zeros(3), probs=torch.rand(2, 3))
    with pytest.raises(ValueError, match="curve: expected increasing fractions"):
        deletion_auc(curve)


def _exact_cell_order(cam: torch.Tensor, size: int, patch: int) -> list[int]:
    """Cells by decreasing exact mass (rational arithmetic), ties to the lower row-major index."""
    from fractions import Fraction

    def weights(src: int) -> list[list[Fraction]]:  # (cells, src): torch's bilinear resize
        rows = [[Fraction(0)] * src for _ in range(-(-size // patch))]
        for dst in range(size):
            x = max(Fraction(src, size) * (dst + Fraction(1, 2)) - Fraction(1, 2), Fraction(0))
            i0 = int(x)
            i1 = i0 + (i0 < src - 1)
            rows[dst // patch][i0] += 1 - (x - i0)
            rows[dst // patch][i1] += x - i0
        return rows

    h, w = cam.shape
    ay, ax = weights(h), weights(w)
    m = [[Fraction(int(v)) for v in row] for row in cam.tolist()]
    mass = [
        sum(ay[r][i] * m[i][j] * ax[c][j] for i in range(h) for j in range(w))
        for r in range(len(ay))
        for c in range(len(ax))
    ]
    return sorted(range(len(mass)), key=lambda k: (-mass[k], k))


@pytest.mark.slow
def test_cells_tied_in_exact_arithmetic_keep_row_major_order():
    """Maps full of ties (plateaus, saturated and constant maps, 4×4 and 7×7 on 112 px with 4-px
    cells): the masking order is the exact-arithmetic order, ties to the lower row-major index.
    Summing the float32 upsampled map instead breaks such ties by rounding noise."""
    gen = torch.Generator().manual_seed(0)
    maps = []
    for i in range(72):
        side = 4 if i % 2 else 7
        cam = torch.randint(0, 4, (side, side), generator=gen).float()
        if i % 3 == 0:
            cam = cam.clamp(max=1.0)  # saturated: large plateaus
        if i % 12 == 0:
            cam = torch.full((side, side), 2.0)  # constant: every cell tied
        maps.append(cam)
    size, patch, k = 112, 4, 31
    noisy = 0
    for cam in maps:
        expected = _exact_cell_order(cam, size, patch)
        ranks = cell_ranks(cam[None], (size, size), patch)[0]
        order = ranks[::patch, ::patch].flatten().argsort().tolist()  # cell of each rank
        assert order[:k] == expected[:k]
        assert order == expected
        old = cell_sums(upsample_cams(cam[None], (size, size)), patch)[0].flatten()
        noisy += old.argsort(descending=True, stable=True).tolist()[:k] != expected[:k]
    assert noisy > 0  # the float32 sums would have decided some of these ties by rounding
