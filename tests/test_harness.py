"""camkit's Module == function == reference, over devices, dtypes and timm families.

The checks and their per-dtype tolerances live in ``tests/harness.py``; the references in
``benchmarks/reference/``. CUDA cases carry the ``cuda`` mark (``pytest -m cuda`` selects them;
``benchmarks/gpu_check.sh`` runs them first on a GPU machine) and are skipped, with the reason
shown, where ``torch.cuda.is_available()`` is False. Every op supports float32, bfloat16 and
float64 on both devices, so no dtype case is skipped or expected to fail.
"""

import pytest

from tests import harness


@pytest.mark.parametrize("device", harness.DEVICES)
@pytest.mark.parametrize("dtype", list(harness.DTYPES))
@pytest.mark.parametrize("family", list(harness.FAMILIES))
@pytest.mark.parametrize("op", harness.OPS)
def test_module_function_and_reference_agree(op, family, dtype, device):
    harness.check(op, family, dtype, device)


def test_every_quantity_has_a_tolerance_for_every_dtype():
    for quantity, table in harness.TOLERANCES.items():
        assert set(table) == set(harness.DTYPES), quantity
        for tol in table.values():
            assert 0 < tol.rtol < 0.05 and 0 < tol.atol < 0.05, (quantity, tol)


def test_the_harness_fails_on_a_wrong_result(monkeypatch):
    """A check that cannot fail is no check: a loss off by 1e-3 relative must be caught."""
    import camkit.losses

    apply = camkit.losses._contrastive_patch_loss
    monkeypatch.setattr(camkit.losses, "_contrastive_patch_loss", lambda *a: apply(*a) * (1 + 1e-3))
    with pytest.raises(AssertionError):
        harness.check("cpe", "resnet18", "fp32", "cpu")
