"""A wheel built from the repository installs and imports with the core dependencies only."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the optional extras and test tools: `import camkit` and a training step must need none of them
# (matplotlib is left out: torchmetrics imports it whenever its metadata is installed; that camkit
# imports without it is pinned in test_viz.py; tqdm neither: timm's huggingface_hub requires it)
BLOCKED = ("pytest", "pytorch_grad_cam", "mkdocs", "torchcam", "cv2")


@pytest.mark.slow
def test_wheel_imports_with_core_dependencies_only(tmp_path):
    # built from a copy: setuptools writes build/ and egg-info next to the sources
    source = tmp_path / "src"
    shutil.copytree(
        ROOT / "camkit", source / "camkit", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("camkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "camkit/__init__.py" in names and "camkit/py.typed" in names
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # stub packages first on the path make the extras fail to import, as in an environment
    # without them (torch and torchmetrics probe for some of them and must cope as well)
    stubs = tmp_path / "stubs"
    for name in BLOCKED:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed')\n")
    probe = textwrap.dedent(
        """
        import camkit, camkit.viz, camkit.metrics, camkit.datasets, torch
        assert camkit.__file__.startswith(sys.argv[1]), camkit.__file__
        model = __import__("timm").create_model("resnet18", num_classes=2)
        out = camkit.TrainStep(model, cpe=camkit.ContrastivePatchLoss())(
            torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
        )
        print("ok", float(out.loss.detach()) > 0)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", "import sys\n" + probe, str(site)],
        cwd=tmp_path,  # not the repository: only the wheel's camkit is importable
        env={"PYTHONPATH": f"{stubs}:{site}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == "ok True"
