"""The runner on volumes: AdrenalMNIST3D (shape masks, not CT intensities) through
`benchmarks.runner` for each method of the ``volumes`` table, resumed after an interruption, the
volume flips, the command line's refusals, and the table's markdown (on rows written here)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from benchmarks import reproduce
from benchmarks.runner.io import load_checkpoint, merge_results
from benchmarks.runner.methods import METHODS
from benchmarks.runner.models import feature_grid, input_shape
from benchmarks.runner.recipes import RECIPES, RunConfig
from benchmarks.runner.run import ROW_KEY, Runner, main
from benchmarks.runner.volumes import flip_volumes
from tests.helpers import needs_medmnist, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
# 2 training volumes of each class, 1 validation and 1 test volume of each: one step an epoch
TINY3D = RECIPES["adrenal3d"].replace(epochs=1, train_subset=2, test_subset=1, batch_size=4)


def _run(out, method: str, recipe=TINY3D, log=lambda _: None) -> dict:
    runner = Runner(out / "results.json", torch.device("cpu"), log=log)
    (row,) = runner.run(RunConfig("adrenal3d", method, 0, recipe, out))
    return row


def test_flip_volumes_flips_each_volume_along_each_axis_by_its_own_draw():
    x = torch.rand(64, 1, 2, 3, 4)
    torch.manual_seed(0)
    draws = torch.rand(64, 3) < 0.5
    torch.manual_seed(0)
    y = flip_volumes(x)
    for i in range(64):
        want = x[i]
        for axis in range(3):
            want = want.flip(1 + axis) if draws[i, axis] else want
        assert torch.equal(y[i], want), i
    assert len({tuple(d.tolist()) for d in draws}) == 8  # every combination of the three flips
    with pytest.raises(ValueError, match=r"x: expected a batch of volumes \(B, C, D, H, W\), got "):
        flip_volumes(torch.zeros(2, 1, 4, 4))


def test_the_recipe_keeps_two_cells_a_side_for_the_cams():
    recipe = RECIPES["adrenal3d"]
    assert input_shape(recipe) == (1, 28, 28, 28)
    assert feature_grid(recipe, 2) == (2, 2, 2)
    assert input_shape(RECIPES["site-B"]) == (3, 112, 112)  # images: as before


@needs_medmnist
@pytest.mark.parametrize("method", ["baseline", "cutmix", "snapmix", "cpe_norm"])
def test_each_method_of_the_table_trains_and_evaluates_on_real_volumes(tmp_path, method):
    import monai

    row = _run(tmp_path, method)
    assert (row["dataset"], row["method"], row["seed"], row["epochs"]) == (
        "adrenal3d",
        method,
        0,
        1,
    )
    assert row["n_test"] == 2 and len(row["train_losses"]) == 1 and row["val_acc"] in (0, 50, 100)
    assert all(0.0 <= row[k] <= 100.0 for k in ("acc", "precision", "recall", "f1"))
    assert "cam_body_share" not in row  # a CT-slice measure
    settings = row["settings"]
    assert settings["model"] == "monai:ResNet" and settings["monai"] == monai.__version__
    assert settings["model_kwargs"]["spatial_dims"] == 3 and settings["img_size"] == 28
    assert settings["mix"] == METHODS[method].mix
    state = load_checkpoint(tmp_path / f"adrenal3d_{method}_seed0.pt")["model"]
    assert state["module.conv1.weight"].shape == (16, 1, 3, 3, 3)  # a 3-D network
    assert _run(tmp_path, method) == row  # done: the row comes from the results file


@needs_medmnist
def test_an_interrupted_volume_run_resumes_to_the_uninterrupted_result(tmp_path, crash_after_epoch):
    recipe = TINY3D.replace(epochs=2)
    straight = _run(tmp_path / "straight", "cutmix", recipe)
    with crash_after_epoch(1):
        _run(tmp_path / "resumed", "cutmix", recipe)
    logs: list[str] = []
    resumed = _run(tmp_path / "resumed", "cutmix", recipe, log=logs.append)
    assert any("resuming adrenal3d_cutmix_seed0.pt from epoch 1/2" in line for line in logs)
    for key in ("acc", "val_acc", "best_epoch", "train_losses", "val_curve"):
        assert resumed[key] == straight[key], key
    a = load_checkpoint(tmp_path / "straight" / "adrenal3d_cutmix_seed0.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "adrenal3d_cutmix_seed0.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _cli_error(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    code = exit_info.value.code
    return (2, capsys.readouterr().err) if code == 2 else (1, str(code))


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--methods", "full"], 2, "error: --methods full: the CAM-masking TTA rows are measured "
         "on images; adrenal3d holds volumes (train the other methods)\n"),
        (["--vote-study"], 2, "error: --vote-study: the CAM-masking TTA rows are measured on "
         "images; adrenal3d holds volumes"),
        (["--model", "monai:NoSuchNet"], 2, "error: --model monai:NoSuchNet: expected "
         "monai:<Net> with <Net> a class of monai.networks.nets"),
        (["--img-size", "32"], 1, "error: --img-size: AdrenalMNIST3D comes at 28 or 64 voxels "
         "a side, got 32"),
        (["--model", "resnet18"], 2, "error: --model resnet18: adrenal3d holds volumes; it needs "
         "a 3-D network, monai:<Net> with spatial_dims 3"),
        (["--model", "monai:DenseNet121"], 2, "error: --model monai:DenseNet121: could not be "
         "built from the recipe's arguments {'block': 'basic', "),
    ],
)  # fmt: skip
def test_the_command_line_refuses_what_volumes_lack_in_one_line(
    tmp_path, capsys, extra, code, message
):
    argv = ["train", "--dataset", "adrenal3d", "--out", str(tmp_path), "--quiet", *extra]
    got_code, text = _cli_error(argv, capsys)
    assert got_code == code and message in text and text.count("\n") <= 1, text


def _row(method: str, seed: int, acc: float, val: float) -> dict:
    settings = {**RECIPES["adrenal3d"].settings(), **METHODS[method].settings()}
    return {"dataset": "adrenal3d", "method": method, "seed": seed, "settings": settings,
            "acc": acc, "val_acc": val, "precision": 50.0, "recall": 50.0, "f1": 60.0 + seed,
            "n_test": 298, "train_seconds": 60.0, "epochs": 10, "best_epoch": 3 + seed}  # fmt: skip


def test_the_volumes_table_gives_settings_paired_intervals_and_cpu_time(tmp_path):
    rows = []
    for seed in range(3):
        rows.append(_row("baseline", seed, 80.0 + seed, 70.0))
        rows.append(_row("cutmix", seed, 81.0 + 2 * seed, 70.0 + seed))  # Δ 1, 2, 3
        rows.append(_row("cpe_norm", seed, 80.0 + seed, 69.0))  # Δ 0 everywhere, val −1
    merge_results(tmp_path / "adrenal3d_cpu.json", rows, key=ROW_KEY)
    with contextlib.redirect_stdout(io.StringIO()):
        reproduce.main(["--table", "volumes", "--report-only", "--results", str(tmp_path)])
    md = (tmp_path / "adrenal3d_cpu.md").read_text()
    assert "shape masks, not CT intensities" in md
    assert "python benchmarks/reproduce.py --table volumes --publish" in md
    assert "model monai:ResNet" in md and "img_size 28" in md and "lr 0.03" in md
    lines = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| ")}
    # mean 2, sd 1: 2 ± 4.303 / √3 (the t-interval of `benchmarks.runner.report.paired_ci`)
    assert lines["| cutmix"] == (
        "| cutmix | mix cutmix, CPE off | 3 | 71.00 ± 1.00 | +1.00 [-1.48, +3.48] "
        "| 83.00 ± 2.00 | +2.00 [-0.48, +4.48] | 61.00 ± 1.00 | 3, 4, 5 | 60 | 6.0 |"
    )
    assert lines["| cpe_norm"].startswith(
        "| cpe_norm | mix none, CPE L2-normalised, τ = 0.1, weight 1 | 3 | 69.00 ± 0.00 "
        "| -1.00 [-1.00, -1.00] | 81.00 ± 1.00 | +0.00 [+0.00, +0.00] |"
    )
    assert lines["| baseline"].startswith("| baseline | mix none, CPE off | 3 | 70.00 ± 0.00 | — |")
    assert "Training the 9 models above took 9.0 min" in md
    assert "recommended" not in json.loads((tmp_path / "adrenal3d_cpu.json").read_text())
    assert "A subset" not in md and "max-pool off" in md and "final feature map is 2×2×2" in md
    smoke = _row("baseline", 0, 50.0, 50.0)
    smoke["settings"].update(train_subset=2, test_subset=1)
    smoke["n_test"] = 2
    merge_results(tmp_path / "smoke" / "adrenal3d_cpu.json", [smoke], key=ROW_KEY)
    with contextlib.redirect_stdout(io.StringIO()):
        reproduce.main(
            ["--table", "volumes", "--report-only", "--results", str(tmp_path / "smoke")]
        )
    assert (
        "**A subset, not the table**: the first 2 training and 1 validation and test volumes of "
        "each class (2 test volumes)." in (tmp_path / "smoke" / "adrenal3d_cpu.md").read_text()
    )


def test_the_volume_loader_refuses_a_2d_model_and_other_sizes():
    from benchmarks.runner.volumes import load_adrenal3d

    def load(recipe):
        load_adrenal3d(recipe, {}, None, torch.device("cpu"), lambda _: None)

    with pytest.raises(ValueError, match=r"--model resnet18: adrenal3d holds volumes; it needs a "):
        load(RECIPES["site-B"])
    with pytest.raises(ValueError, match=r"--img-size: AdrenalMNIST3D comes at 28 or 64 voxels"):
        load(RECIPES["adrenal3d"].replace(img_size=32))
    with pytest.raises(ValueError, match=r"mean, std: the volumes have one channel, got mean "):
        load(RECIPES["adrenal3d"].replace(mean=(0.1, 0.2, 0.3)))
