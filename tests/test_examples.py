"""Tests of the example script ``examples/covid_ct.py``.

The helper tests need no data. The end-to-end tests run the script's ``main`` on a few images of
the staged COVID-CT data (ResNet-18 at 64 px: the smallest size at which its 2×2 feature map has
the four cells the contrastive patch loss picks) and are skipped when the data folder is absent.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from tests.helpers import (
    EXAMPLES,
    data_marker,
    data_root,
    import_example,
    nest,
    one_thread,  # noqa: F401 (the fixture of pytestmark)
    run_script,
)

covid_ct = import_example("covid_ct")

DATA = data_root()
HAS_SITE_B = DATA is not None and (DATA / "COVID-CT").is_dir()
needs_data = data_marker(
    HAS_SITE_B,
    "needs the staged COVID-CT data (shared/data/COVID-CT above the repository, "
    "or CAMKIT_DATA); not found",
)
pytestmark = pytest.mark.usefixtures("one_thread")


SMOKE = [
    "--site", "B",
    "--model", "resnet18",
    "--img-size", "64",
    "--train-subset", "8",
    "--test-subset", "4",
    "--batch-size", "8",
    "--method", "full",
    "--seeds", "0",
    "--device", "cpu",
    "--workers", "2",
]  # fmt: skip
METRIC_KEYS = ("acc", "precision", "recall", "f1")


def run_main(argv: list[str]) -> tuple[dict, str]:
    """``covid_ct.main(argv)`` as nested results, and everything it printed."""
    return run_script(covid_ct.main, argv)


def on_disk(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["rows"]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------
# helpers (no data needed)
# ------------------------------------------------------------------------------------------------


def test_lr_schedule_follows_the_released_recipe():
    scales = [covid_ct.lr_scale(epoch, 200) for epoch in range(200)]
    assert scales[79] == 1.0 and scales[80] == pytest.approx(0.1)
    assert scales[149] == pytest.approx(0.1) and scales[150] == pytest.approx(1e-2)
    assert scales[179] == pytest.approx(1e-2) and scales[180] == pytest.approx(1e-3)
    assert [covid_ct.lr_scale(e, 20) for e in (7, 8, 15, 18)] == pytest.approx([1, 0.1, 1e-2, 1e-3])


@pytest.mark.parametrize(("pretrained", "backbone_lr"), [(True, 1e-3), (False, 1e-2)])
def test_optimizer_groups(pretrained, backbone_lr):
    model = timm.create_model("resnet18", pretrained=False, num_classes=2)
    opt = covid_ct.make_optimizer(model, 1e-2, pretrained=pretrained)
    backbone, head = opt.param_groups
    assert backbone["base_lr"] == pytest.approx(backbone_lr) and head["base_lr"] == 1e-2
    assert {id(p) for p in head["params"]} == {id(p) for p in model.fc.parameters()}
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each exactly once
    for group in opt.param_groups:
        assert group["nesterov"] and group["momentum"] == 0.9 and group["weight_decay"] == 1e-4


def test_tta_geometry_scales_the_cells_and_caps_k():
    assert covid_ct.tta_geometry(224) == (8, 784, 31)
    assert covid_ct.tta_geometry(112) == (4, 784, 31)
    assert covid_ct.tta_geometry(64) == (2, 1024, 31)
    assert covid_ct.tta_geometry(24, k=100) == (1, 576, 100)
    assert covid_ct.tta_geometry(16, k=1000) == (1, 256, 256)


def test_first_n_per_class_is_deterministic_and_ordered():
    assert covid_ct.first_n_per_class([1, 1, 0, 1, 0, 0], 2) == [0, 1, 2, 4]
    assert covid_ct.first_n_per_class([1, 0], None) == [0, 1]
    assert covid_ct.first_n_per_class([0, 0, 1], 5) == [0, 1, 2]


class _FakeDataset:
    def __init__(self, root: Path, n: int = 3):
        self.samples = []
        for i in range(n):
            path = root / f"{i}.png"
            Image.new("RGB", (20, 10), (40 * i, 0, 0)).save(path)
            self.samples.append((path, i % 2))
        self.targets = [label for _, label in self.samples]
        self.reads = 0

    def __getitem__(self, i):
        self.reads += 1
        with Image.open(self.samples[i][0]) as image:
            return image.convert("RGB"), self.samples[i][1]


def test_image_cache_decodes_each_image_once(tmp_path):
    ds = _FakeDataset(tmp_path)
    cache_file = tmp_path / "cache.pt"
    cache = covid_ct.ImageCache(cache_file, log=lambda _: None)
    first = cache.images(ds, [0, 2], 8, workers=2)
    cache.save()
    assert first.shape == (2, 3, 8, 8) and first.dtype == torch.uint8
    assert first[1, 0, 0, 0] == 80 and ds.reads == 2  # squashed to 8×8, red channel kept
    again = covid_ct.ImageCache(cache_file, log=lambda _: None)
    assert torch.equal(again.images(ds, [0, 2], 8), first) and ds.reads == 2  # from the file
    again.images(ds, [0, 1, 2], 8)
    assert ds.reads == 3  # only the new image is decoded
    os.utime(ds.samples[0][0], ns=(0, 0))  # a changed file is decoded again
    again.images(ds, [0], 8)
    assert ds.reads == 4


def test_demo_preset_and_explicit_options(tmp_path):
    args = covid_ct.parse_args(["--demo"])
    assert (args.model, args.img_size, args.epochs) == ("resnet18", 112, covid_ct.DEMO["epochs"])
    assert args.method == ["cpe"] and args.tta and args.seeds == [0]
    assert args.out == Path("runs/demo") and args.overwrite  # a scratch run: rerunnable
    assert covid_ct.parse_args(["--demo", "--epochs", "1"]).epochs == 1
    assert not covid_ct.parse_args(["--demo", "--resume"]).overwrite
    # the demo trains with the recommended, normalised CPE; the paper's form is two flags away
    assert (args.cpe_normalize, args.cpe_temperature, args.cpe_weight) == (True, 0.1, 1.0)
    paper = covid_ct.parse_args(["--demo", "--no-cpe-normalize", "--cpe-temperature", "1"])
    assert (paper.cpe_normalize, paper.cpe_temperature) == (False, 1.0)
    defaults = covid_ct.parse_args(["--out", str(tmp_path)])
    assert defaults.method == list(covid_ct.METHODS) and defaults.seeds == [0, 1, 2]
    assert (defaults.img_size, defaults.epochs, defaults.batch_size) == (224, 200, 64)
    assert not defaults.tta and defaults.lr == 1e-2 and not defaults.overwrite
    assert (defaults.cpe_normalize, defaults.cpe_temperature) == (True, 0.1)  # the recommended
    assert covid_ct.parse_args(["--method", "cpe", "--seeds", "99"]).out == Path("runs/covid_ct")


def test_demo_runs_the_recommended_recipe():
    """The demo preset is the recipe benchmarks/reproduce.py chose on validation data (site-B
    and the digits), with the same training options as that recipe's site-B runs."""
    from benchmarks.reproduce import RECIPES, RESULTS

    data = json.loads((RESULTS / "reproduce_cpu.json").read_text())
    chosen = data["recommended"]
    _, source, extra = RECIPES[chosen]
    recipe = covid_ct.parse_args(["--method", source, "--resume", *extra])
    demo = covid_ct.parse_args(["--demo"])
    assert covid_ct.RECIPES[demo.method[0]] == covid_ct.RECIPES[source], (chosen, demo.method)
    options = ("cpe_normalize", "cpe_temperature", "cpe_weight", "snapmix_cams")
    assert {k: getattr(demo, k) for k in options} == {k: getattr(recipe, k) for k in options}
    assert demo.num_classes == 2 and demo.tta  # site B is binary: the recipe's K = 2 rule
    assert demo.tta_rule == data["recommended_detail"]["tta_rule_binary"] == "threshold"


def test_recipe_options_default_to_the_paper_and_are_validated(tmp_path, capsys, monkeypatch):
    recipe = ("cpe_weight", "snapmix_cams", "tta_rule", "tta_theta")
    paper = (1.0, "unmixed", "threshold", 0.2)  # TrainStep's, exact SnapMix's, CAMMaskingTTA's
    args = covid_ct.parse_args(["--out", str(tmp_path)])
    assert tuple(getattr(args, key) for key in recipe) == paper
    argv = ["--cpe-weight", "0.1", "--snapmix-cams", "mixed", "--tta-rule", "relative"]
    args = covid_ct.parse_args([*argv, "--out", str(tmp_path)])
    assert tuple(getattr(args, key) for key in recipe) == (0.1, "mixed", "relative", 0.5)
    assert covid_ct.parse_args(["--tta-rule", "relative", "--tta-theta", "0.8"]).tta_theta == 0.8
    assert covid_ct.parse_args(["--tta-rule", "argmax"]).tta_theta == 0.2
    # the demo preset carries the recipe keys; an explicit option still wins
    monkeypatch.setitem(covid_ct.DEMO, "cpe_weight", 0.1)
    monkeypatch.setitem(covid_ct.DEMO, "snapmix_cams", "mixed")
    monkeypatch.setitem(covid_ct.DEMO, "tta_rule", "relative")
    demo = covid_ct.parse_args(["--demo", "--out", str(tmp_path)])
    assert tuple(getattr(demo, key) for key in recipe) == (0.1, "mixed", "relative", 0.5)
    assert (
        covid_ct.parse_args(["--demo", "--cpe-weight", "0", "--out", str(tmp_path)]).cpe_weight == 0
    )
    for bad, message in [
        (["--cpe-weight", "-0.5"], "--cpe-weight: expected 0 or more, got -0.5"),
        (["--cpe-weight", "nan"], "--cpe-weight: expected 0 or more, got nan"),
        (["--tta-theta", "1.5"], "--tta-theta: expected a value in [0, 1], got 1.5"),
        (["--snapmix-cams", "both"], "--snapmix-cams: invalid choice: 'both'"),
        (["--tta-rule", "majority"], "--tta-rule: invalid choice: 'majority'"),
    ]:
        with pytest.raises(SystemExit):
            covid_ct.parse_args(bad)
        assert message in capsys.readouterr().err, bad


def test_cpe_needs_four_feature_cells(tmp_path):
    # ResNet-18 at 32 px has a 1×1 feature map: the CPE methods must refuse before loading data.
    with pytest.raises(ValueError, match=r"1×1 feature map.*--img-size"):
        covid_ct.main([*SMOKE, "--img-size", "32", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# end to end on the staged COVID-CT data
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One epoch of ``full`` on 8+8 training images; returns (out dir, results, printed text)."""
    if not HAS_SITE_B:
        pytest.skip("needs the staged COVID-CT data")
    out = tmp_path_factory.mktemp("smoke")
    (out / ".B_full_seed0.pt.camkit-999999999-0123abcd.tmp").write_bytes(b"killed half-way")
    results, text = run_main([*SMOKE, "--epochs", "1", "--out", str(out)])
    return out, results, text


@needs_data
def test_smoke_results_json(smoke):
    out, results, _ = smoke
    rows = on_disk(out)
    assert nest(rows) == results and len(rows) == 2
    settings = rows[0]["settings"]
    assert settings == rows[1]["settings"] and {r["seed"] for r in rows} == {0}
    for key, value in {"model": "resnet18", "img_size": 64, "epochs": 1, "train_subset": 8,
                       "test_subset": 4, "batch_size": 8, "lr": 1e-2, "cpe_normalize": True,
                       "cpe_temperature": 0.1, "torch": torch.__version__,
                       "timm": timm.__version__}.items():  # fmt: skip
        assert settings[key] == value, key
    assert set(results) == {"B"} and list(results["B"]) == ["full", "full+tta"]
    for row, entry in results["B"].items():
        for key in (*METRIC_KEYS, "train_seconds"):
            assert len(entry[key]) == 1, (row, key)
        for key in METRIC_KEYS:
            assert 0.0 <= entry[key][0] <= 100.0, (row, key)
        assert entry["train_seconds"][0] > 0
        assert entry["best_epoch"] == [1] and entry["epochs"] == [1]
    tta = results["B"]["full+tta"]
    assert 1 <= tta["tta_forwards"][0] <= 1 + 31  # the unmasked pass plus at most k copies
    assert 0 <= tta["tta_flipped"][0] <= 8
    assert "tta_forwards" not in results["B"]["full"]
    # 4 + 4 test images: accuracy is a multiple of 12.5 %
    assert (results["B"]["full"]["acc"][0] / 12.5) == pytest.approx(
        round(results["B"]["full"]["acc"][0] / 12.5)
    )


@needs_data
def test_smoke_checkpoint_and_cache(smoke):
    out, _, _ = smoke
    ckpt = load_ckpt(out / "B_full_seed0.pt")
    assert ckpt["epoch"] == 1 and ckpt["best_epoch"] == 1
    assert ckpt["config"]["snapmix"] and ckpt["config"]["cpe"]
    assert ckpt["best_state"] is not None  # site B has a validation split
    assert {"optimizer", "model", "best_val", "train_seconds", "epochs"} <= set(ckpt)
    assert (out / "cache_B_64.pt").is_file()
    # the stale temporary file of a killed write was removed at start, and none was left
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@needs_data
def test_smoke_printed_table(smoke):
    _, results, text = smoke
    assert "| method" in text and "accuracy" in text and "f1" in text
    full_rows = [line for line in text.splitlines() if line.startswith("| full ")]
    tta_rows = [line for line in text.splitlines() if line.startswith("| full+tta ")]
    assert len(full_rows) == 1 and len(tta_rows) == 1
    assert f"{results['B']['full']['acc'][0]:.2f}" in full_rows[0]
    assert "k = 31" in text and "2×2-pixel cells" in text  # TTA geometry scaled to 64 px
    assert "image-forwards per test image" in text and "labels flipped" in text


@needs_data
def test_resume_continues_and_matches_an_uninterrupted_run(smoke, tmp_path):
    out, _, _ = smoke
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    results, text = run_main([*SMOKE, "--epochs", "2", "--resume", "--out", str(resumed)])
    assert "resuming B_full_seed0.pt from epoch 1/2" in text
    assert "16 from cache, 0 decoded" in text
    # only the missing epoch is trained
    assert "epoch 1/2 loss" not in text and "epoch 2/2 loss" in text
    ckpt = load_ckpt(resumed / "B_full_seed0.pt")
    assert ckpt["epoch"] == 2 and ckpt["epochs"] == 2
    assert results["B"]["full"]["epochs"] == [2]

    fresh = tmp_path / "fresh"
    fresh_results, _ = run_main([*SMOKE, "--epochs", "2", "--out", str(fresh)])
    straight = load_ckpt(fresh / "B_full_seed0.pt")
    for name, tensor in straight["model"].items():
        assert torch.allclose(ckpt["model"][name].float(), tensor.float(), atol=1e-5), name
    for row in ("full", "full+tta"):
        for key in METRIC_KEYS:
            assert results["B"][row][key] == pytest.approx(fresh_results["B"][row][key])

    # a finished run is only evaluated again
    again, text = run_main([*SMOKE, "--epochs", "2", "--resume", "--out", str(resumed)])
    assert "from epoch 2/2" in text and "epoch 2/2 loss" not in text
    assert again["B"]["full"]["acc"] == results["B"]["full"]["acc"]


@needs_data
def test_resume_refuses_other_settings(smoke, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(smoke[0], out)
    with pytest.raises(ValueError, match="other settings"):
        run_main([*SMOKE, "--epochs", "2", "--lr", "0.1", "--resume", "--out", str(out)])
    with pytest.raises(ValueError, match="ask for at least 1 epochs"):
        run_main([*SMOKE, "--epochs", "0", "--resume", "--out", str(out)])


def spy(monkeypatch, module, *names: str) -> dict[str, list]:
    """Replace ``module``'s classes ``names`` by factories that keep every object they build."""
    built: dict[str, list] = {name: [] for name in names}
    for name in names:
        cls = getattr(module, name)

        def make(*args, _cls=cls, _name=name, **kwargs):
            built[_name].append(_cls(*args, **kwargs))
            return built[_name][-1]

        monkeypatch.setattr(module, name, make)
    return built


@needs_data
def test_recipe_options_reach_the_train_step_and_the_tta_and_are_recorded(
    smoke, tmp_path, monkeypatch
):
    built = spy(monkeypatch, covid_ct, "TrainStep", "CAMMaskingTTA")
    recipe = ["--cpe-weight", "0.1", "--snapmix-cams", "mixed", "--tta-rule", "relative"]
    out = tmp_path / "recipe"
    run_main([*SMOKE, "--epochs", "1", *recipe, "--out", str(out)])
    (step,), (tta,) = built["TrainStep"], built["CAMMaskingTTA"]
    assert step.cpe_weight == 0.1 and step.snapmix.cam_source == "mixed" and step.cpe is not None
    assert (tta.rule, tta.theta) == ("relative", 0.5)
    for row in on_disk(out):
        settings = row["settings"]
        assert (settings["cpe_weight"], settings["snapmix_cams"]) == (0.1, "mixed"), row["method"]
        assert (settings["tta_rule"], settings["tta_theta"]) == ("relative", 0.5)
        assert settings["tta"] == "k=31 theta=0.5 cell=2px"
    config = load_ckpt(out / "B_full_seed0.pt")["config"]
    assert (config["cpe_weight"], config["snapmix_cams"]) == (0.1, "mixed")
    # the smoke run recorded the defaults
    assert {k: on_disk(smoke[0])[0]["settings"][k] for k in ("cpe_weight", "tta_rule")} == {
        "cpe_weight": 1.0,
        "tta_rule": "threshold",
    }

    # a training setting of another value is refused on --resume, before any training
    for other in (["--cpe-weight", "1"], ["--snapmix-cams", "unmixed"]):
        argv = [*SMOKE, "--epochs", "2", *recipe, *other, "--resume", "--out", str(out)]
        with pytest.raises(ValueError, match=r"other settings.*'(cpe_weight|snapmix_cams)'"):
            run_main(argv)
    assert load_ckpt(out / "B_full_seed0.pt")["epoch"] == 1

    # the TTA rule does not change the training: a finished run is evaluated again with
    # another rule, into rows of their own; a checkpoint written before the recipe options
    # existed resumes as the defaults it trained with
    legacy = tmp_path / "legacy"
    shutil.copytree(smoke[0], legacy)
    ckpt = load_ckpt(legacy / "B_full_seed0.pt")
    for key in ("cpe_weight", "snapmix_cams"):
        del ckpt["config"][key]
    torch.save(ckpt, legacy / "B_full_seed0.pt")
    argv = [*SMOKE, "--epochs", "1", "--tta-rule", "argmax", "--resume", "--out", str(legacy)]
    results, text = run_main(argv)
    assert "resuming B_full_seed0.pt from epoch 1/1" in text and "epoch 1/1 loss" not in text
    assert built["CAMMaskingTTA"][-1].rule == "argmax"
    rows = on_disk(legacy)
    assert [(r["method"], r["settings"]["tta_rule"]) for r in rows] == [
        ("full", "threshold"),
        ("full+tta", "threshold"),
        ("full", "argmax"),
        ("full+tta", "argmax"),
    ]
    assert results["B"]["full"]["acc"] == [rows[0]["acc"]]  # same weights, same plain accuracy


@needs_data
def test_checkpoint_option_evaluates_the_selected_weights(smoke, tmp_path):
    out, results, _ = smoke
    argv = [*SMOKE, "--method", "baseline", "--epochs", "0", "--out", str(tmp_path)]
    evaluated, _ = run_main([*argv, "--checkpoint", str(out / "B_full_seed0.pt")])
    for key in METRIC_KEYS:
        assert evaluated["B"]["baseline"][key] == pytest.approx(results["B"]["full"][key])
    assert evaluated["B"]["baseline"]["train_seconds"] == [0.0]


@needs_data
def test_both_sites_train_jointly_and_report_per_site(tmp_path):
    # a stand-in site A: a few COVID-CT images in the SARS-CoV-2 CT folder layout
    site_a = tmp_path / "site_a"
    for label, (src, dst) in enumerate([("CT_NonCOVID", "non-COVID"), ("CT_COVID", "COVID")]):
        (site_a / dst).mkdir(parents=True)
        for path in sorted((DATA / "COVID-CT" / src).iterdir())[:4]:
            shutil.copy(path, site_a / dst / f"{label}_{path.name}")
    argv = [*SMOKE, "--site", "both", "--data-a", str(site_a), "--method", "baseline", "--tta"]
    results, text = run_main([*argv, "--epochs", "1", "--out", str(tmp_path / "out")])
    assert set(results) == {"A", "B"}
    assert all(list(results[s]) == ["baseline", "baseline+tta"] for s in results)
    assert "train 22 images, val 8, test A 2, test B 8" in text  # A: 3+3 train, 1+1 test
    assert "SARS-CoV-2 CT (site A)" in text and "COVID-CT (site B)" in text
    assert (tmp_path / "out" / "both_baseline_seed0.pt").is_file()
    assert (tmp_path / "out" / "cache_A_64.pt").is_file()
    # one model: the same training time reported for both sites
    assert results["A"]["baseline"]["train_seconds"] == results["B"]["baseline"]["train_seconds"]


@needs_data
def test_full_reuses_the_snapmix_cpe_model_and_checkpoint(tmp_path):
    argv = [*SMOKE, "--method", "snapmix_cpe", "full", "--epochs", "1", "--out", str(tmp_path)]
    results, text = run_main(argv)
    assert list(results["B"]) == ["snapmix_cpe", "full", "full+tta"]
    assert "full seed 0: same training recipe as snapmix_cpe, reusing its model" in text
    assert text.count("epoch 1/1 loss") == 1  # trained once
    for key in METRIC_KEYS:
        assert results["B"]["full"][key] == results["B"]["snapmix_cpe"][key]
    ckpt = load_ckpt(tmp_path / "B_full_seed0.pt")  # --resume --method full finds the run
    assert ckpt["epoch"] == 1 and ckpt["config"]["snapmix"] and ckpt["config"]["cpe"]
    _, text = run_main(
        [*SMOKE, "--method", "full", "--epochs", "1", "--resume", "--out", str(tmp_path)]
    )
    assert "resuming B_full_seed0.pt from epoch 1/1" in text


def test_pretrained_backbone_is_fetched_once_and_the_head_is_new(monkeypatch, tmp_path):
    create = timm.create_model
    calls = []

    def fake_create(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        torch.manual_seed(1234 if pretrained else torch.initial_seed())
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(covid_ct.timm, "create_model", fake_create)
    args = covid_ct.parse_args(["--pretrained", "--img-size", "64", "--out", str(tmp_path)])
    backbone = covid_ct.pretrained_weights(args)
    assert calls == [True] and "fc.weight" not in backbone and "conv1.weight" in backbone
    torch.manual_seed(5)
    model = covid_ct.create_model(args, torch.device("cpu"), backbone)
    assert torch.equal(model.conv1.weight, backbone["conv1.weight"])
    torch.manual_seed(5)
    assert torch.equal(model.fc.weight, create("resnet18", num_classes=2).fc.weight)
    opt = covid_ct.make_optimizer(model, args.lr, pretrained=args.pretrained)
    assert [g["base_lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-2])


def test_pretrained_failure_is_explained(monkeypatch, tmp_path):
    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no route to the Hugging Face Hub")
        return timm.create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(covid_ct.timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=r"--pretrained: could not load .*no route"):
        covid_ct.pretrained_weights(covid_ct.parse_args(["--pretrained", "--out", str(tmp_path)]))


def test_covidx_site_trains_three_classes_and_reports_per_class_scores(tmp_path):
    """``--site X`` on a generated tree in the COVIDx-CT list format (no images are staged)."""
    root = tmp_path / "covidx"
    root.mkdir()
    gen = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("val", 2), ("test", 3)):
        lines = []
        for label in range(3):
            for i in range(per_class):
                name = f"{split}_{label}_{i}.png"
                pixels = gen.integers(0, 256, (80, 96), dtype=np.uint8)
                Image.fromarray(pixels).save(root / name)
                lines.append(f"{name} {label} 8 4 88 76")
        (root / f"{split}_COVIDx_CT-3A.txt").write_text("\n".join(lines) + "\n")
    argv = [
        "--site", "X", "--data-x", str(root), "--model", "resnet18", "--img-size", "64",
        "--epochs", "1", "--batch-size", "6", "--method", "baseline", "full", "--seeds", "0",
        "--device", "cpu", "--workers", "1", "--quiet", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        results = nest(covid_ct.main(argv))
    assert set(results) == {"X"} and set(results["X"]) == {"baseline", "full", "full+tta"}
    per_class = {
        f"{m}_{c}" for c in ("Normal", "Pneumonia", "COVID-19") for m in ("sensitivity", "ppv")
    }
    for entry in results["X"].values():
        assert per_class <= set(entry)
        assert all(0.0 <= entry[k][0] <= 100.0 for k in per_class | {"acc", "f1"})
        # recall is the sensitivity of COVID-19, the positive class
        assert entry["recall"] == entry["sensitivity_COVID-19"]
    assert "COVIDx-CT: test set (9 images)" in printed.getvalue()
    assert "sensitivity_Pneumonia" in printed.getvalue()
    model = torch.load(tmp_path / "out" / "X_baseline_seed0.pt", weights_only=True)["model"]
    assert model["fc.weight"].shape[0] == 3


# ------------------------------------------------------------------------------------------------
# script safety: merged results, refusals, NaN losses, unreadable checkpoints; figures
# ------------------------------------------------------------------------------------------------


@needs_data
def test_results_are_merged_across_runs_into_one_folder(smoke, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(smoke[0], out)
    first = on_disk(out)
    stale = out / ".results.json.camkit-999999999-0123abcd.tmp"  # a write killed half-way
    stale.write_text("{")
    argv = [*SMOKE, "--method", "baseline", "--seeds", "1", "--epochs", "0", "--out", str(out)]
    _, text = run_main(argv)
    assert "removed .results.json.camkit-999999999-0123abcd.tmp" in text and not stale.exists()
    rows = on_disk(out)
    assert rows[:2] == first  # the first run's rows are kept, in place
    assert [(r["method"], r["seed"]) for r in rows[2:]] == [("baseline", 1)]
    # the same run again replaces only its own row
    run_main([*argv, "--resume"])
    assert on_disk(out)[:2] == first and len(on_disk(out)) == 3


@needs_data
def test_rerun_without_resume_refuses_even_when_quiet(smoke, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(smoke[0], out)
    before = (out / "B_full_seed0.pt").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        covid_ct.main([*SMOKE, "--epochs", "1", "--quiet", "--out", str(out)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert str(out / "B_full_seed0.pt") in err and "--resume" in err and "--overwrite" in err
    assert (out / "B_full_seed0.pt").read_bytes() == before  # untouched
    with pytest.raises(SystemExit):
        covid_ct.main([*SMOKE, "--resume", "--overwrite", "--out", str(out)])
    # --overwrite trains the run again from scratch
    _, text = run_main([*SMOKE, "--epochs", "1", "--overwrite", "--out", str(out)])
    assert "resuming" not in text and "epoch 1/1 loss" in text


@needs_data
@pytest.mark.parametrize("kind", ["empty", "truncated", "bare state_dict"])
def test_resume_from_an_unreadable_checkpoint_names_the_file(smoke, tmp_path, kind):
    out = tmp_path / "run"
    shutil.copytree(smoke[0], out)
    path = out / "B_full_seed0.pt"
    if kind == "empty":
        path.write_bytes(b"")
        expected = r"B_full_seed0\.pt: the checkpoint file is empty"
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
        expected = r"B_full_seed0\.pt: cannot read the checkpoint .*truncated"
    else:
        torch.save(load_ckpt(path)["model"], path)
        expected = r"B_full_seed0\.pt: expected a run checkpoint .* got a bare state_dict"
    with pytest.raises(ValueError, match=expected):
        run_main([*SMOKE, "--epochs", "1", "--resume", "--out", str(out)])


@needs_data
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"training loss is nan at epoch 1.*no checkpoint"):
        run_main([*SMOKE, "--epochs", "1", "--lr", "nan", "--quiet", "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a" / "B_full_seed0.pt").exists()

    class NaNFromTheThirdStep(covid_ct.TrainStep):  # 2 steps per epoch: epoch 2 diverges
        calls = 0

        def forward(self, images, labels):
            out = super().forward(images, labels)
            NaNFromTheThirdStep.calls += 1
            return out._replace(loss=out.loss * float("nan")) if self.calls > 2 else out

    monkeypatch.setattr(covid_ct, "TrainStep", NaNFromTheThirdStep)
    out = tmp_path / "b"
    with pytest.raises(SystemExit, match=r"loss is nan at epoch 2.*B_full_seed0\.pt keeps epoch 1"):
        run_main([*SMOKE, "--epochs", "2", "--out", str(out)])
    ckpt = load_ckpt(out / "B_full_seed0.pt")
    assert ckpt["epoch"] == 1 and all(v.isfinite().all() for v in ckpt["model"].values())


@needs_data
def test_demo_writes_a_cam_figure_and_figures_writes_every_kind(tmp_path):
    fast = ["--img-size", "64", "--train-subset", "4", "--test-subset", "2", "--batch-size", "8"]
    fast += ["--device", "cpu", "--workers", "2", "--epochs", "1", "--quiet"]
    _, text = run_main(["--demo", *fast, "--out", str(tmp_path / "demo")])
    figures = sorted((tmp_path / "demo" / "figures").iterdir())
    assert [p.name for p in figures] == ["B_cpe_seed0_cams.png"]
    assert f"figure: {figures[0]}" in text and figures[0].read_bytes()[:4] == b"\x89PNG"
    argv = [*fast, "--method", "baseline", "--seeds", "0", "--figures"]
    run_main([*argv, "--out", str(tmp_path / "all")])
    names = sorted(p.name for p in (tmp_path / "all" / "figures").iterdir())
    kinds = ("cams", "deletion", "snapmix", "tta")
    assert names == [f"B_baseline_seed0_{kind}.png" for kind in kinds]


def test_default_data_root_lookups_agree(monkeypatch, tmp_path):
    """The examples, the benchmarks and the tests find the same data folder, or none."""
    import mnist_usps

    from benchmarks import data as bench_data

    lookups = (covid_ct._default_data_root, mnist_usps._default_data_root, bench_data.data_root)
    monkeypatch.chdir(tmp_path)  # the lookup starts at the scripts, not the working directory
    monkeypatch.delenv("CAMKIT_DATA", raising=False)
    found = data_root()
    assert [lookup() for lookup in lookups] == [found] * 3
    if found is not None:
        assert any(found == p / "shared" / "data" for p in EXAMPLES.parents)
    monkeypatch.setenv("CAMKIT_DATA", str(tmp_path / "elsewhere"))  # returned unchecked
    assert [lookup() for lookup in lookups] == [tmp_path / "elsewhere"] * 3
