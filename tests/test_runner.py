"""The experiment runner (`benchmarks.runner`): recipe parts, resumable runs, rows, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmarks.runner import data as runner_data
from benchmarks.runner import loop
from benchmarks.runner.data import ImageCache, first_n_per_class
from benchmarks.runner.io import load_checkpoint
from benchmarks.runner.methods import METHODS, build_step
from benchmarks.runner.models import make_optimizer, step_lr_scale, tta_geometry
from benchmarks.runner.recipes import RECIPES, RunConfig
from benchmarks.runner.run import Runner, main
from tests.helpers import DATA, needs_digits, needs_site_b, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = RECIPES["site-B"].replace(img_size=64, epochs=2, train_subset=4, test_subset=2)
TINY = TINY.replace(batch_size=4)


def test_step_schedule_follows_the_released_recipe():
    scales = [step_lr_scale(epoch, 200) for epoch in range(200)]
    assert scales[79] == 1 and scales[80] == pytest.approx(0.1)
    assert scales[150] == pytest.approx(1e-2) and scales[180] == pytest.approx(1e-3)
    assert [step_lr_scale(e, 20) for e in (7, 8, 15, 18)] == pytest.approx([1, 0.1, 1e-2, 1e-3])


@pytest.mark.parametrize(("pretrained", "backbone"), [(None, 1e-2), ("timm", 1e-3)])
def test_optimizer_groups_give_pretrained_layers_a_tenth(pretrained, backbone):
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=2)
    opt = make_optimizer(model, RECIPES["site-B"].replace(pretrained=pretrained))
    body, head = opt.param_groups
    assert (body["base_lr"], head["base_lr"]) == (pytest.approx(backbone), 1e-2)
    assert head["params"] == list(model.get_classifier().parameters())
    assert len(body["params"]) + len(head["params"]) == len(list(model.parameters()))


def test_tta_geometry_scales_the_cells_and_caps_k():
    assert tta_geometry(224, 31) == (8, 784, 31)
    assert tta_geometry(128, 31) == (5, 676, 31)
    assert tta_geometry(32, 31) == (1, 1024, 31)
    assert tta_geometry(16, 1000) == (1, 256, 256)


def test_first_n_per_class_is_deterministic_and_ordered():
    assert first_n_per_class([1, 1, 0, 1, 0, 0], 2) == [0, 1, 2, 4]
    assert first_n_per_class([1, 0], None) == [0, 1]


class _FakeDataset:
    def __init__(self, folder: Path, n: int = 3):
        self.samples = []
        for i in range(n):
            path = folder / f"{i}.png"
            Image.new("RGB", (10, 6), (40 * i, 0, 0)).save(path)
            self.samples.append((str(path), i % 2))
        self.targets = [label for _, label in self.samples]
        self.reads = 0

    def __getitem__(self, i):
        self.reads += 1
        with Image.open(self.samples[i][0]) as image:
            return image.convert("RGB"), self.samples[i][1]


def test_image_cache_decodes_each_image_once(tmp_path):
    ds = _FakeDataset(tmp_path)
    cache = ImageCache(tmp_path / "cache.pt", log=lambda _: None)
    first = cache.images(ds, [0, 2], 8)
    cache.save()
    assert first.shape == (2, 3, 8, 8) and first.dtype == torch.uint8
    assert first[1, 0, 0, 0] == 80 and ds.reads == 2
    again = ImageCache(tmp_path / "cache.pt", log=lambda _: None)
    assert torch.equal(again.images(ds, [0, 2], 8), first) and ds.reads == 2
    again.images(ds, [0, 1, 2], 8)
    assert ds.reads == 3
    os.utime(ds.samples[0][0], ns=(0, 0))  # a changed file is decoded again
    again.images(ds, [0], 8)
    assert ds.reads == 4


def test_every_method_builds_its_step():
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    for name, method in METHODS.items():
        step = build_step(name, model, 3, torch.Generator(), RECIPES["site-B"])
        assert (step.mix is None) == (method.mix is None), name
        assert (step.cpe is None) == (method.cpe is None), name
        if method.cpe == "paper":
            assert not step.cpe.normalize and step.cpe.temperature == 1.0
        if method.cpe == "norm_w01":
            assert step.cpe_weight == 0.1
    assert METHODS["full"].training == "snapmix_cpe" and METHODS["full"].tta


def _run(tmp_path: Path, method: str = "full", recipe=TINY, **kwargs) -> tuple[Runner, list]:
    runner = Runner(tmp_path / "results.json", torch.device("cpu"), log=lambda _: None)
    cfg = RunConfig("site-B", method, 0, recipe, tmp_path)
    return runner, runner.run(cfg, **kwargs)


@needs_site_b
def test_a_run_writes_its_rows_and_a_checkpoint_and_a_rerun_skips(tmp_path):
    _, rows = _run(tmp_path)
    (row,) = rows
    assert (row["dataset"], row["method"], row["seed"], row["epochs"]) == ("site-B", "full", 0, 2)
    for key in ("acc", "precision", "recall", "f1", "val_acc", "tta_flipped", "tta_forwards"):
        assert key in row, key
    assert 0 < row["cam_body_share"] <= 100 and len(row["val_curve"]) == 2  # CT: where CAMs sit
    assert 0 < row["body_area"] < 100
    assert row["settings"]["mix"] == "snapmix" and row["settings"]["cpe_form"] == "paper"
    assert (
        row["settings"]["img_size"] == 64 and row["n_test"] == 4 and len(row["train_losses"]) == 2
    )
    # full trains as snapmix_cpe: its checkpoint is that method's, and snapmix_cpe reuses it
    ckpt = load_checkpoint(tmp_path / "site-B_snapmix_cpe_seed0.pt", required=("best_state",))
    assert ckpt["epoch"] == 2
    stamp = (tmp_path / "site-B_snapmix_cpe_seed0.pt").stat().st_mtime_ns
    _, (plain,) = _run(tmp_path, "snapmix_cpe")
    assert plain["train_seconds"] == row["train_seconds"] and "tta_flipped" not in plain
    assert (tmp_path / "site-B_snapmix_cpe_seed0.pt").stat().st_mtime_ns == stamp
    assert _run(tmp_path)[1] == rows  # done: the rows come from the results file


@needs_site_b
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, crash_after_epoch):
    _, straight = _run(tmp_path / "straight", "snapmix")
    with crash_after_epoch(1):
        _run(tmp_path / "resumed", "snapmix")
    logs = []
    runner = Runner(tmp_path / "resumed" / "results.json", torch.device("cpu"), log=logs.append)
    (resumed,) = runner.run(RunConfig("site-B", "snapmix", 0, TINY, tmp_path / "resumed"))
    assert any("resuming site-B_snapmix_seed0.pt from epoch 1/2" in line for line in logs)
    for key in ("acc", "val_acc", "best_epoch", "train_losses"):
        assert resumed[key] == straight[0][key], key
    a = load_checkpoint(tmp_path / "straight" / "site-B_snapmix_seed0.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "site-B_snapmix_seed0.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_site_b
def test_resume_refuses_other_settings_and_overwrite_trains_again(tmp_path):
    _run(tmp_path, "baseline")
    (tmp_path / "results.json").unlink()  # the rows are gone: the checkpoint is resumed
    with pytest.raises(ValueError, match=r"other settings .*'lr': \(0.01, 0.1\)\}; use another "
                       r"--out, or --overwrite to train it again from scratch$"):  # fmt: skip
        _run(tmp_path, "baseline", TINY.replace(lr=0.1))
    with pytest.raises(ValueError, match="ask for at least 2 epochs"):
        _run(tmp_path, "baseline", TINY.replace(epochs=1))
    _, (row,) = _run(tmp_path, "baseline", TINY.replace(lr=0.1), overwrite=True)
    assert row["settings"]["lr"] == 0.1


@needs_site_b
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"training loss is nan at epoch 1.*no checkpoint"):
        _run(tmp_path / "a", "baseline", TINY.replace(lr=float("nan")))
    assert not (tmp_path / "a" / "site-B_baseline_seed0.pt").exists()
    real = loop.build_step

    def nan_from_the_second_epoch(*args):
        step = real(*args)
        forward, calls = step.forward, []

        def patched(images, labels, mixed_params=None):
            out = forward(images, labels, mixed_params)
            calls.append(1)
            return out._replace(loss=out.loss * float("nan")) if len(calls) > 2 else out

        step.forward = patched
        return step

    monkeypatch.setattr(loop, "build_step", nan_from_the_second_epoch)
    with pytest.raises(SystemExit, match=r"loss is nan at epoch 2.*seed0\.pt keeps epoch 1"):
        _run(tmp_path / "b", "baseline")
    ckpt = load_checkpoint(tmp_path / "b" / "site-B_baseline_seed0.pt")
    assert ckpt["epoch"] == 1 and all(v.isfinite().all() for v in ckpt["model"].values())


@pytest.mark.slow
@needs_digits
def test_the_digits_draw_is_fixed_disjoint_and_a_stream_run_resumes_exactly(
    tmp_path, crash_after_epoch
):
    recipe = RECIPES["digits"].replace(train_digits=256, val_digits=64, epochs=2, batch_size=64)
    recipe = recipe.replace(tta_images=16, deletion_images=8, test_subset=3)
    data = runner_data.load_digits(recipe, {}, tmp_path, torch.device("cpu"), lambda _: None)
    assert data.train[0].shape == (256, 1, 28, 28) and data.val[1].shape[0] <= 30
    train_keys = {bytes(x.numpy()) for x in (data.train[0] * 255).to(torch.uint8)}
    assert not any(bytes(x.numpy()) in train_keys for x in (data.val[0] * 255).to(torch.uint8))
    again = runner_data.load_digits(recipe, {}, tmp_path, torch.device("cpu"), lambda _: None)
    assert torch.equal(again.train[0], data.train[0])  # the fixed draw
    assert set(data.tests) == {"mnist-usps", "mnist-mnistm"}
    assert data.tests["mnist-mnistm"][0].shape[1] == 3
    cfg = RunConfig("digits", "snapmix", 0, recipe, tmp_path / "straight")
    straight = loop.train(cfg, data, torch.device("cpu"), lambda _: None)
    # the last epoch is the one reported: what a reader of the checkpoint gets too
    weights = loop.selected_weights(cfg)
    assert all(torch.equal(weights[k], v) for k, v in straight["best_state"].items())
    resumed_cfg = RunConfig("digits", "snapmix", 0, recipe, tmp_path / "resumed")
    with crash_after_epoch(1):
        loop.train(resumed_cfg, data, torch.device("cpu"), lambda _: None)
    with pytest.raises(ValueError, match=r"stopped at epoch 1 of 2; run the same command again"):
        loop.selected_weights(resumed_cfg)
    resumed = loop.train(resumed_cfg, data, torch.device("cpu"), lambda _: None)
    assert resumed["losses"] == straight["losses"]  # the random streams were restored
    assert all(torch.equal(resumed["best_state"][k], v) for k, v in straight["best_state"].items())
    rows = loop.evaluate_run(cfg, data, straight, torch.device("cpu"), vote_study=True)
    assert [r["dataset"] for r in rows] == ["mnist-usps", "mnist-mnistm"]
    assert "deletion_auc" in rows[0] and "deletion_auc" not in rows[1]
    assert rows[0]["tta_rules"]["argmax"]["test"]["n"] == 16
    assert rows[0]["val_acc"] == rows[1]["val_acc"]


def _cli(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_errors_are_one_line_naming_the_option(capsys, tmp_path):
    out = ["--out", str(tmp_path)]
    assert "--lr: expected a finite value >= 0, got nan" in _cli(
        ["train", "--lr", "nan", *out], capsys
    )
    assert "--epochs: expected an int >= 0, got -1" in _cli(
        ["train", "--epochs", "-1", *out], capsys
    )
    line = _cli(["train", "--model", "not_a_model", *out], capsys)
    assert line.endswith("--model not_a_model: not a timm model (timm.list_models() names them)")
    assert "--pretrained-file nope.pth: no such file" in _cli(
        ["train", "--pretrained-file", "nope.pth", *out], capsys
    )
    line = _cli(["train", "--methods", "cpe", "--img-size", "32", *out], capsys)
    assert "--img-size 32: resnet18 gives a 1×1 feature map" in line


@needs_site_b
def test_the_cli_trains_and_reports(tmp_path):
    argv = ["train", "--methods", "baseline", "cutmix", "--epochs", "1", "--img-size", "64"]
    argv += ["--train-subset", "4", "--test-subset", "2", "--batch-size", "4", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        rows = main([*argv, "--out", str(tmp_path)])
    assert [r["method"] for r in rows] == ["baseline", "cutmix"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["rows"]) == 2
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main(["report", str(tmp_path / "results.json"), "--md", str(tmp_path / "r.md")])
    text = (tmp_path / "r.md").read_text()
    assert (
        "## site-B" in text and "| cutmix | 1 | 1 |" in text and text.strip() in buffer.getvalue()
    )
    shutil.rmtree(tmp_path)
