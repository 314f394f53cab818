"""Tests of the example script ``examples/mnist_usps.py`` (MNIST → USPS / MNIST-M).

The end-to-end tests run the script's ``main`` on a few digits of the staged data (ResNet-18 at
64 px, the smallest size at which its 2×2 feature map has the four cells the contrastive patch
loss picks) and are skipped when the data folder is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from camkit.datasets import load_digits_npz
from camkit.metrics import classification_metrics
from tests.helpers import (
    data_marker,
    data_root,
    import_example,
    nest,
    one_thread,  # noqa: F401 (the fixture of pytestmark)
    run_script,
)

mnist_usps = import_example("mnist_usps")

DATA = data_root()
HAS_DIGITS = DATA is not None and all(
    (DATA / name).exists() for name in ("mnist.npz", "usps.npz", "BSDS500/images/train")
)
needs_data = data_marker(
    HAS_DIGITS,
    "needs the staged digits data (mnist.npz, usps.npz, BSDS500/images/train in "
    "shared/data above the repository, or CAMKIT_DATA); not found",
)
pytestmark = pytest.mark.usefixtures("one_thread")


SMOKE = [
    "--model", "resnet18",
    "--img-size", "64",
    "--train-subset", "5",
    "--test-subset", "3",
    "--batch-size", "16",
    "--seeds", "0",
    "--device", "cpu",
]  # fmt: skip
METRIC_KEYS = ("acc", "precision", "recall", "f1")
N_TEST = 30  # 3 digits per class


@pytest.fixture(scope="module")
def mnistm_cache(tmp_path_factory):
    """One MNIST-M cache folder for the whole module (built once, about a second)."""
    return tmp_path_factory.mktemp("mnistm")


def run_main(argv: list[str]) -> tuple[dict, str]:
    """``mnist_usps.main(argv)`` as nested results, and everything it printed."""
    return run_script(mnist_usps.main, argv)


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------
# no data needed
# ------------------------------------------------------------------------------------------------


def test_macro_scores_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 10, (200,), generator=gen)
    preds = torch.where(torch.rand(200, generator=gen) < 0.6, target, torch.randint(0, 10, (200,)))
    preds[preds == 7] = 3  # class 7 is never predicted: its precision and F1 are 0
    metrics = classification_metrics(10, positive_class=None)
    metrics.update(preds, target)
    values = mnist_usps.macro_scores({k: float(v) for k, v in metrics.compute().items()})
    p, r, f1, _ = sklearn_metrics.precision_recall_fscore_support(
        target, preds, labels=list(range(10)), average="macro", zero_division=0
    )
    assert values["accuracy"] == pytest.approx(float((preds == target).float().mean()))
    assert (values["precision"], values["recall"], values["f1"]) == pytest.approx((p, r, f1))


def test_cpe_methods_need_a_big_enough_feature_map(tmp_path):
    # ResNet-18 at 32 px: a 1×1 feature map; the run stops before touching any data
    with pytest.raises(ValueError, match=r"1×1 feature map.*larger --img-size"):
        mnist_usps.main(["--img-size", "32", "--method", "full", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# the data pipeline, pinned
# ------------------------------------------------------------------------------------------------


@needs_data
def test_validation_hold_out_is_the_last_5000_digits_and_disjoint(mnistm_cache, tmp_path):
    argv = ["--train-subset", "5", "--test-subset", "3", "--mnistm-cache", str(mnistm_cache)]
    args = mnist_usps.parse_args([*argv, "--out", str(tmp_path)])
    train, val, tests = mnist_usps.load_data(args, ["usps"], torch.device("cpu"), lambda _: None)
    source = load_digits_npz(DATA / "mnist.npz")
    labels = source["y_train"].tolist()
    train_idx, val_idx = mnist_usps.source_indices(labels, 5000, 5, 3)
    assert (train_idx, val_idx) == mnist_usps.source_indices(labels, 5000, 5, 3)  # deterministic
    assert max(train_idx) < 55000 <= min(val_idx) and not set(train_idx) & set(val_idx)
    assert len(train_idx) == 50 and len(val_idx) == 30
    assert sorted(np.bincount(source["y_train"][val_idx]).tolist()) == [3] * 10
    # the resident splits are exactly those digits, native 28×28, one channel
    assert torch.equal(train[0][:, 0], torch.from_numpy(source["x_train"][train_idx]))
    assert torch.equal(val[0][:, 0], torch.from_numpy(source["x_train"][val_idx]))
    assert val[1].tolist() == [labels[i] for i in val_idx]
    full_train, full_val = mnist_usps.source_indices(labels, 5000, None, None)
    assert full_train == list(range(55000)) and full_val == list(range(55000, 60000))

    # USPS: 16×16 grey digits framed as MNIST's (20×20 in 28×28: an empty 4-pixel border), then
    # resized bilinearly to the input side and replicated to RGB
    images = tests["usps"][0]
    assert tuple(images.shape) == (N_TEST, 1, 28, 28) and images.dtype == torch.uint8
    assert int(images[..., :4, :].max()) == int(images[..., :, 24:].max()) == 0
    assert int(images[..., 4:24, 4:24].amax(dim=(-2, -1)).min()) > 100  # every digit drawn
    args.usps_frame = False
    _, _, plain = mnist_usps.load_data(args, ["usps"], torch.device("cpu"), lambda _: None)
    assert tuple(plain["usps"][0].shape) == (N_TEST, 1, 16, 16)
    x = mnist_usps.to_unit(images, 64)
    assert tuple(x.shape) == (N_TEST, 3, 64, 64) and 0.0 <= float(x.min()) <= float(x.max()) <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    expected = F.interpolate(images.float() / 255, (64, 64), mode="bilinear")
    assert torch.allclose(x[:, :1], expected, atol=1e-6)


@needs_data
def test_mnist_m_is_rgb_and_differs_from_mnist(mnistm_cache, tmp_path):
    argv = ["--test-subset", "3", "--mnistm-cache", str(mnistm_cache), "--out", str(tmp_path)]
    _, _, tests = mnist_usps.load_data(
        mnist_usps.parse_args(argv), ["mnistm"], torch.device("cpu"), lambda _: None
    )
    images, labels = tests["mnistm"]
    assert tuple(images.shape) == (N_TEST, 3, 28, 28)
    source = load_digits_npz(DATA / "mnist.npz")
    keep = mnist_usps.first_n_per_class(source["y_test"].tolist(), 3)
    assert labels.tolist() == source["y_test"][keep].tolist()  # MNIST's test labels
    grey = torch.from_numpy(source["x_test"][keep])[:, None].expand(-1, 3, -1, -1)
    assert not torch.equal(images, grey)
    assert not torch.equal(images[:, 0], images[:, 1])  # coloured photo patches
    assert (mnistm_cache / "mnist_m_test_seed0.npz").is_file()
    assert not [p for p in mnistm_cache.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, mnistm_cache):
    """One epoch of ``snapmix_cpe`` (whose model ``full`` reuses) on 5 digits per class, tested
    on both targets."""
    if not HAS_DIGITS:
        pytest.skip("needs the staged digits data")
    out = tmp_path_factory.mktemp("smoke")
    argv = [*SMOKE, "--method", "snapmix_cpe", "full", "--target", "both", "--epochs", "1"]
    argv += ["--out", str(out)]
    results, text = run_main([*argv, "--mnistm-cache", str(mnistm_cache)])
    return out, results, text


@needs_data
def test_smoke_results_json(smoke):
    out, results, _ = smoke
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert nest(rows) == results and len(rows) == 6
    settings = rows[0]["settings"]
    assert all(r["settings"] == settings for r in rows)
    for key, value in {"model": "resnet18", "img_size": 64, "epochs": 1, "train_subset": 5,
                       "test_subset": 3, "batch_size": 16, "lr": 0.05, "translate": 2.0,
                       "val_size": 5000, "cpe_normalize": True, "cpe_temperature": 0.1,
                       "usps_frame": True, "torch": torch.__version__,
                       }.items():  # fmt: skip
        assert settings[key] == value, key
    assert list(results) == ["mnist-usps", "mnist-mnistm"]
    for target, rows in results.items():
        assert list(rows) == ["snapmix_cpe", "full", "full+tta"], target
        for row, entry in rows.items():
            for key in (*METRIC_KEYS, "train_seconds", "best_epoch", "epochs"):
                assert len(entry[key]) == 1, (target, row, key)
            for key in METRIC_KEYS:
                assert 0.0 <= entry[key][0] <= 100.0, (target, row, key)
            # 30 test digits: accuracy is a multiple of 1/30
            assert entry["acc"][0] * N_TEST / 100 == pytest.approx(
                round(entry["acc"][0] * N_TEST / 100), abs=1e-4
            )
            assert entry["train_seconds"][0] > 0
            assert entry["best_epoch"] == [1] and entry["epochs"] == [1]
        assert 1 <= rows["full+tta"]["tta_forwards"][0] <= 1 + 31  # unmasked + at most k copies
        assert 0 <= rows["full+tta"]["tta_flipped"][0] <= N_TEST
        assert "tta_forwards" not in rows["full"]
        for key in METRIC_KEYS:  # full is the snapmix_cpe model, evaluated plainly
            assert rows["full"][key] == rows["snapmix_cpe"][key]
    # one trained model for both targets
    assert (
        results["mnist-usps"]["full"]["train_seconds"]
        == (results["mnist-mnistm"]["full"]["train_seconds"])
    )


@needs_data
def test_smoke_printed_table(smoke):
    _, results, text = smoke
    assert "MNIST → USPS: target test set (30 images)" in text
    assert "MNIST → MNIST-M: target test set (30 images)" in text
    assert text.count("macro-averaged over the 10 classes") == 2
    assert text.count("| method ") == 2 and "accuracy" in text and "f1" in text
    full_rows = [line for line in text.splitlines() if line.startswith("| full ")]
    tta_rows = [line for line in text.splitlines() if line.startswith("| full+tta ")]
    assert len(full_rows) == 2 and len(tta_rows) == 2
    assert f"{results['mnist-usps']['full']['acc'][0]:.2f}" in full_rows[0]
    assert f"{results['mnist-mnistm']['full']['acc'][0]:.2f}" in full_rows[1]
    assert "train 50 MNIST digits, val 30, test USPS 30, test MNIST-M 30" in text
    assert "2×2-pixel cells (32×32 grid), k = 31" in text  # TTA geometry at 64 px
    assert "full seed 0: same training recipe as snapmix_cpe, reusing its model" in text
    assert text.count("epoch 1/1 loss") == 1  # trained once


@needs_data
def test_smoke_checkpoint(smoke):
    out, _, _ = smoke
    ckpt = load_ckpt(out / "mnist_snapmix_cpe_seed0.pt")
    assert (out / "mnist_full_seed0.pt").is_file()  # so that --resume --method full finds it
    assert ckpt["epoch"] == 1 and ckpt["best_epoch"] == 1
    assert ckpt["config"]["snapmix"] and ckpt["config"]["cpe"]
    assert ckpt["config"]["val_size"] == 5000 and ckpt["best_state"] is not None
    assert {"optimizer", "model", "best_val", "train_seconds", "epochs"} <= set(ckpt)
    assert ckpt["best_state"]["fc.weight"].shape == (10, 512)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@needs_data
def test_resume_continues_and_matches_an_uninterrupted_run(smoke, mnistm_cache, tmp_path):
    out, _, _ = smoke
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    # the model does not depend on the target: a run started for both resumes for USPS alone
    argv = [*SMOKE, "--method", "snapmix_cpe", "--target", "usps", "--epochs", "2"]
    argv += ["--mnistm-cache", str(mnistm_cache)]
    results, text = run_main([*argv, "--resume", "--out", str(resumed)])
    assert "resuming mnist_snapmix_cpe_seed0.pt from epoch 1/2" in text
    assert "epoch 1/2 loss" not in text and "epoch 2/2 loss" in text  # only the missing epoch
    assert list(results) == ["mnist-usps"]
    assert results["mnist-usps"]["snapmix_cpe"]["epochs"] == [2]
    ckpt = load_ckpt(resumed / "mnist_snapmix_cpe_seed0.pt")
    assert ckpt["epoch"] == 2 and ckpt["epochs"] == 2

    fresh, _ = run_main([*argv, "--out", str(tmp_path / "fresh")])
    straight = load_ckpt(tmp_path / "fresh" / "mnist_snapmix_cpe_seed0.pt")
    for name, tensor in straight["model"].items():
        assert torch.allclose(ckpt["model"][name].float(), tensor.float(), atol=1e-5), name
    for key in METRIC_KEYS:
        assert results["mnist-usps"]["snapmix_cpe"][key] == pytest.approx(
            fresh["mnist-usps"]["snapmix_cpe"][key]
        )

    # a finished run is only evaluated again
    again, text = run_main([*argv, "--resume", "--out", str(resumed)])
    assert "from epoch 2/2" in text and "epoch 2/2 loss" not in text
    assert again == results  # same selected weights, same training time from the checkpoint

    # other training settings, or fewer epochs than trained, are refused
    with pytest.raises(ValueError, match="other settings"):
        run_main([*argv, "--translate", "0", "--resume", "--out", str(resumed)])
    with pytest.raises(ValueError, match="ask for at least 2 epochs"):
        run_main([*argv, "--epochs", "1", "--resume", "--out", str(resumed)])


def test_recipe_options_default_to_the_paper_and_are_validated(tmp_path, capsys):
    recipe = ("cpe_weight", "snapmix_cams", "tta_rule", "tta_theta")
    args = mnist_usps.parse_args(["--out", str(tmp_path)])
    assert tuple(getattr(args, key) for key in recipe) == (1.0, "unmixed", "threshold", 0.2)
    assert (args.cpe_normalize, args.cpe_temperature) == (True, 0.1)  # the recommended CPE
    paper = mnist_usps.parse_args(["--no-cpe-normalize", "--cpe-temperature", "1"])
    assert (paper.cpe_normalize, paper.cpe_temperature) == (False, 1.0)  # Eq. 1
    argv = ["--cpe-weight", "0", "--snapmix-cams", "mixed", "--tta-rule", "relative"]
    args = mnist_usps.parse_args([*argv, "--out", str(tmp_path)])
    assert tuple(getattr(args, key) for key in recipe) == (0.0, "mixed", "relative", 0.5)
    assert mnist_usps.parse_args(["--tta-theta", "0.3"]).tta_theta == 0.3
    for bad, message in [
        (["--cpe-weight", "-1"], "--cpe-weight: expected 0 or more, got -1.0"),
        (["--tta-rule", "relative", "--tta-theta", "-0.1"], "expected a value in [0, 1], got -0.1"),
        (["--snapmix-cams", "both"], "--snapmix-cams: invalid choice: 'both'"),
    ]:
        with pytest.raises(SystemExit):
            mnist_usps.parse_args(bad)
        assert message in capsys.readouterr().err, bad


@needs_data
def test_recipe_options_reach_the_train_step_and_the_tta_and_are_recorded(
    mnistm_cache, tmp_path, monkeypatch
):
    built: dict[str, list] = {"TrainStep": [], "CAMMaskingTTA": []}
    for name in built:  # keep every object the example builds of these two classes
        cls = getattr(mnist_usps, name)

        def make(*args, _cls=cls, _name=name, **kwargs):
            built[_name].append(_cls(*args, **kwargs))
            return built[_name][-1]

        monkeypatch.setattr(mnist_usps, name, make)
    recipe = ["--cpe-weight", "0.1", "--snapmix-cams", "mixed", "--tta-rule", "argmax"]
    argv = [*SMOKE, "--method", "full", "--target", "usps", "--mnistm-cache", str(mnistm_cache)]
    run_main([*argv, "--epochs", "1", *recipe, "--out", str(tmp_path)])
    (step,), (tta,) = built["TrainStep"], built["CAMMaskingTTA"]
    assert step.cpe_weight == 0.1 and step.snapmix.cam_source == "mixed" and step.cpe is not None
    assert (tta.rule, tta.theta) == ("argmax", 0.2)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["full", "full+tta"]
    for row in rows:
        settings = row["settings"]
        assert (settings["cpe_weight"], settings["snapmix_cams"]) == (0.1, "mixed")
        assert (settings["tta_rule"], settings["tta_theta"]) == ("argmax", 0.2)
    config = load_ckpt(tmp_path / "mnist_full_seed0.pt")["config"]
    assert (config["cpe_weight"], config["snapmix_cams"]) == (0.1, "mixed")
    # a resumed run refuses another CPE weight or SnapMix CAM source, before any training
    for other in (["--cpe-weight", "1"], ["--snapmix-cams", "unmixed"]):
        with pytest.raises(ValueError, match=r"other settings.*'(cpe_weight|snapmix_cams)'"):
            run_main([*argv, "--epochs", "2", *recipe, *other, "--resume", "--out", str(tmp_path)])
    assert load_ckpt(tmp_path / "mnist_full_seed0.pt")["epoch"] == 1


@needs_data
def test_another_run_into_the_same_folder_keeps_the_rows_and_writes_figures(
    smoke, mnistm_cache, tmp_path, capsys
):
    out = tmp_path / "run"
    shutil.copytree(smoke[0], out)
    first = json.loads((out / "results.json").read_text())["rows"]
    with pytest.raises(SystemExit):  # the finished run is not trained again silently
        mnist_usps.main([*SMOKE, "--method", "snapmix_cpe", "--epochs", "1", "--out", str(out)])
    assert "--resume" in capsys.readouterr().err
    argv = [*SMOKE, "--method", "baseline", "--seeds", "1", "--epochs", "0", "--target", "usps"]
    argv += ["--mnistm-cache", str(mnistm_cache), "--figures", "--out", str(out)]
    _, text = run_main(argv)
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows[: len(first)] == first
    assert [(r["dataset"], r["method"], r["seed"]) for r in rows[len(first) :]] == [
        ("mnist-usps", "baseline", 1)
    ]
    kinds = ("cams", "deletion", "snapmix", "tta")
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == [f"mnist_baseline_seed1_{kind}.png" for kind in kinds]
    assert text.count("figure: ") == 4
