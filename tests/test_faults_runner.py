"""The runner under bad input (issue 28): one line and a non-zero exit, never a silent row.

Option errors exit 2 with argparse's ``prog: error: message`` and nothing else; problems found
while running (files, data, checkpoints) exit 1 with ``python -m benchmarks.runner: error: ...``.
The loop's refusals run on a small in-memory dataset, so most of this needs no data on disk.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from benchmarks.runner import loop
from benchmarks.runner.data import Data
from benchmarks.runner.recipes import RECIPES, RunConfig
from benchmarks.runner.run import main
from tests.helpers import needs_site_b, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
PROG = "python -m benchmarks.runner: error: "


def _usage_error(argv: list[str], capsys) -> str:
    """The one line an option error prints (exit 2)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines  # no usage block
    return lines[0]


def _run_error(argv: list[str]) -> str:
    """The one line a problem found while running gives (``SystemExit(message)``: exit 1)."""
    with pytest.raises(SystemExit) as info, contextlib.redirect_stdout(io.StringIO()):
        main(argv)
    assert isinstance(info.value.code, str) and "\n" not in info.value.code
    return info.value.code


def test_option_errors_are_one_line_at_parse_time(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")]
    cases = {
        ("--batch-size", "1"): "--batch-size: expected an int >= 2 (a batch of one image is "
        "dropped: BatchNorm needs two), got 1",
        ("--tta-images", "-5", "--vote-study"): "--tta-images: expected a positive int, got -5",
        ("--tta-images", "0", "--vote-study"): "--tta-images: expected a positive int, got 0",
        ("--tta-images", "5"): "--tta-images: only the vote-rule study uses it; add --vote-study",
        ("--epochs", "-1"): "--epochs: expected an int >= 0, got -1",
        ("--device", "bogus"): "--device bogus: expected auto, cpu, cuda or cuda:N (a torch "
        "device), got 'bogus'",
        ("--seeds", "0", "-1"): "--seeds: expected ints from 0 to 2**31 - 1, got [0, -1]",
        ("--head-init", "zero"): "--head-init zero: only with pretrained weights (--pretrained "
        "or --pretrained-file); a model trained from scratch keeps timm's initialisation",
        ("--pretrained-lr-scale", "0.5"): "--pretrained-lr-scale: only with pretrained weights "
        "(--pretrained or --pretrained-file); from scratch every layer trains at --lr",
        ("--overwrite", "--reevaluate"): "--overwrite and --reevaluate: give one (train again "
        "from scratch, or evaluate the finished runs again without training)",
    }
    for args, message in cases.items():
        assert _usage_error(["train", *args, *out], capsys) == PROG + message, args
    line = _usage_error(
        ["train", "--model", "vit_tiny_patch16_224", "--img-size", "64", *out], capsys
    )
    assert line == (
        f"{PROG}--model vit_tiny_patch16_224 at --img-size 64: no class activation map of a 64×64 "
        "image (Input height (64) doesn't match model (224).)"
    )
    line = _usage_error(["train", "--methods", "bogus", *out], capsys)
    assert line.startswith("python -m benchmarks.runner train: error: argument --methods: invalid")
    assert not (tmp_path / "o").exists()  # nothing made before the options are valid


def test_bad_weights_files_are_refused_before_any_run_naming_the_file(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    line = _usage_error(["train", "--pretrained-file", str(text), "--out", str(tmp_path)], capsys)
    assert line == (
        f"{PROG}--pretrained-file {text}: cannot read the checkpoint (12 bytes): a text file (it "
        "starts with 'not weights'), not a weights file"
    )
    line = _usage_error(
        ["train", "--pretrained-file", str(tmp_path), "--out", str(tmp_path)], capsys
    )
    assert line == f"{PROG}--pretrained-file {tmp_path}: a folder, expected a weights file"
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    del state["layer2.0.conv1.weight"]
    lacking = tmp_path / "lacking.pth"
    torch.save(state, lacking)
    line = _usage_error(
        ["train", "--pretrained-file", str(lacking), "--out", str(tmp_path)], capsys
    )
    assert line == (
        f"{PROG}--pretrained-file {lacking}: the checkpoint (timm's layout) does not fit "
        "resnet18: 1 tensors of the model are missing (layer2.0.conv1.weight)"
    )


def _rows_file(path: Path) -> Path:
    row = {"dataset": "site-B", "method": "baseline", "settings": {"lr": 0.01}, "epochs": 2}
    rows = [{**row, "seed": s, "acc": 70.0 + s, "train_seconds": 1.0} for s in range(2)]
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_report_only_reads_and_names_a_missing_or_broken_file(tmp_path):
    missing = tmp_path / "typo" / "results.json"
    assert _run_error(["report", str(missing)]) == f"{PROG}{missing}: no such results file"
    assert not (tmp_path / "typo").exists()  # no folder, no empty results file

    path = _rows_file(tmp_path / "results.json")
    path.chmod(0o444)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["report", str(path)]) == []
    assert "| baseline | 2 | 2 |" in buffer.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no lock file taken

    path.chmod(0o644)
    path.write_text('{"rows": [')
    assert _run_error(["report", str(path)]) == (
        f"{PROG}{path}: not valid JSON (Expecting value: line 1, column 11): a truncated or "
        "corrupt results file; move it aside (rerunning the command evaluates the finished runs' "
        "checkpoints again)"
    )
    path.write_text('{"rows": [{"dataset": "site-B", "method": "a", "seed": 0, "settings": 1}]}')
    assert _run_error(["report", str(path)]) == (
        f"{PROG}{path}: row 0: expected 'settings' to be a dict, got int (1)"
    )
    path.write_text('{"rows": []}')
    assert _run_error(["report", str(path)]) == f"{PROG}{path}: the results file has no rows yet"


def test_the_exit_status_and_stderr_of_a_run_error(tmp_path):
    missing = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.runner", "report", str(missing)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 1
    assert proc.stderr == f"{PROG}{missing}: no such results file\n"


def test_train_refuses_a_broken_results_file_and_reevaluate_without_a_checkpoint(tmp_path):
    out = tmp_path / "o"
    results = tmp_path / "results.json"
    results.write_text('{"rows": [{"dataset": "site-B"')
    argv = ["train", "--img-size", "64", "--out", str(out), "--quiet"]
    line = _run_error([*argv, "--results", str(results)])
    assert line.startswith(f"{PROG}{results}: not valid JSON (")
    assert results.read_text() == '{"rows": [{"dataset": "site-B"'  # untouched
    line = _run_error([*argv, "--reevaluate", "--methods", "full"])
    assert line == (
        f"{PROG}--reevaluate: site-B full seed 0 has no checkpoint at "
        f"{out / 'site-B_snapmix_cpe_seed0.pt'}; train it first (the same command without "
        "--reevaluate)"
    )
    assert not list(out.glob("*.pt"))  # nothing trained, no data cache written
    (tmp_path / "a-file").write_text("")
    line = _run_error(["train", "--out", str(tmp_path / "a-file")])
    assert line == (
        f"{PROG}{tmp_path / 'a-file' / 'results.json'}: the results file cannot be written "
        f"({tmp_path / 'a-file'} is a file, not a folder)"
    )
    line = _run_error([*argv, "--data", str(tmp_path / "missing")])
    assert line.startswith(PROG) and str(tmp_path / "missing") in line


@needs_site_b
def test_a_full_disk_under_out_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import camkit._io
    from tests.test_io import _FullDisk

    monkeypatch.setattr(
        camkit._io, "open", lambda *a, **k: _FullDisk(open(*a, **k), 100), raising=False
    )
    argv = ["train", "--img-size", "64", "--train-subset", "2", "--test-subset", "2"]
    line = _run_error([*argv, "--epochs", "1", "--out", str(tmp_path), "--quiet"])
    assert line.startswith(PROG + str(tmp_path))
    assert line.endswith(
        f": no space left on device (disk or quota full in {tmp_path}); the previous file, if "
        "any, is unchanged"
    )


# ----- the loop, on a dataset in memory


def _data(n: int = 8) -> Data:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 32, 32, generator=gen)
    labels = torch.arange(n) % 2
    return Data(
        train=(images, labels),
        val=None,
        tests={"t": (images[:4], labels[:4])},
        num_classes=2,
        class_names=("a", "b"),
        positive=1,
        to_input=lambda x: x,
        augment=lambda x: x,
    )


RECIPE = RECIPES["site-B"].replace(img_size=32, epochs=1, batch_size=4, selection="last")


def _cfg(tmp_path, recipe=RECIPE, method: str = "baseline") -> RunConfig:
    return RunConfig("site-B", method, 0, recipe, tmp_path)


def test_an_epoch_without_a_step_is_refused_rather_than_written(tmp_path):
    for n, recipe, rule in [
        (1, RECIPE, "a batch needs 2 images"),
        (3, RECIPE.replace(drop_last=True), "the last short batch is dropped"),
    ]:
        with pytest.raises(ValueError) as info:
            loop.train(_cfg(tmp_path, recipe), _data(n), torch.device("cpu"), lambda _: None)
        assert str(info.value) == (
            f"--batch-size 4: {n} training images give no training step per epoch ({rule}); use "
            "a smaller --batch-size or more images"
        )
    assert not list(tmp_path.iterdir())
    # zero epochs stay allowed: the (pretrained) model evaluated as it is, on purpose
    run = loop.train(_cfg(tmp_path, RECIPE.replace(epochs=0)), _data(1), torch.device("cpu"), print)
    assert run["losses"] == [] and run["epochs"] == 0
    zero = _cfg(tmp_path, RECIPE.replace(epochs=0))  # nothing to train: --reevaluate may run it
    assert loop.train(zero, _data(1), torch.device("cpu"), print, no_training=True)["epochs"] == 0


class _NanGradient(torch.autograd.Function):
    """Zero in the forward pass, NaN in the backward one: a finite loss, broken weights."""

    @staticmethod
    def forward(ctx, weight):
        ctx.shape = weight.shape
        return weight.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, float("nan"))


def test_weights_made_nan_by_an_epochs_last_step_stop_the_run(tmp_path, monkeypatch):
    real = loop.build_step

    def nan_gradient_at_the_last_step(name, model, *args):
        step = real(name, model, *args)
        forward, calls = step.forward, []

        def patched(images, labels, mixed_params=None):
            out = forward(images, labels, mixed_params)
            calls.append(1)
            if len(calls) == 2:  # epoch 1 has 2 steps: its last one
                weight = model.get_classifier().weight
                return out._replace(loss=out.loss + _NanGradient.apply(weight))
            return out

        step.forward = patched
        return step

    monkeypatch.setattr(loop, "build_step", nan_gradient_at_the_last_step)
    with pytest.raises(SystemExit) as info:
        loop.train(_cfg(tmp_path), _data(8), torch.device("cpu"), lambda _: None)
    assert info.value.code == (
        "site-B baseline seed 0: 1 weight tensors are not finite after epoch 1 (fc.weight), the "
        "training loss being finite; stopped, no checkpoint was written. Lower --lr (now 0.01) "
        "or check the data"
    )
    assert not (tmp_path / "site-B_baseline_seed0.pt").exists()


def test_reevaluate_refuses_an_unfinished_run_rather_than_training_it(tmp_path, crash_after_epoch):
    cfg = _cfg(tmp_path, RECIPE.replace(epochs=2))
    with crash_after_epoch(1):
        loop.train(cfg, _data(), torch.device("cpu"), lambda _: None)
    stamp = loop.checkpoint_path(cfg).stat().st_mtime_ns
    with pytest.raises(ValueError) as info:
        loop.train(cfg, _data(), torch.device("cpu"), lambda _: None, no_training=True)
    assert str(info.value) == (
        f"--reevaluate: {loop.checkpoint_path(cfg)} stopped at epoch 1 of 2; finish it first "
        "(the same command without --reevaluate)"
    )
    assert loop.checkpoint_path(cfg).stat().st_mtime_ns == stamp
    finished = loop.train(cfg, _data(), torch.device("cpu"), lambda _: None)  # a rerun finishes
    again = loop.train(cfg, _data(), torch.device("cpu"), lambda _: None, no_training=True)
    assert again["losses"] == finished["losses"] and len(again["losses"]) == 2


def test_no_message_asks_for_an_option_the_runner_does_not_have():
    from benchmarks.runner.run import build_parser

    options = {o for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
               for o in a.option_strings}  # fmt: skip
    root = Path(__file__).resolve().parents[1] / "benchmarks" / "runner"
    files = sorted(root.glob("*.py"))
    assert len(files) > 5
    for path in files:
        for word in ("--resume", "--continue"):
            assert word not in options and word not in path.read_text(), (path.name, word)
