"""The API docs must build: mkdocs --strict fails on broken references and unparsable docstrings."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import camkit

ROOT = Path(__file__).resolve().parents[1]

# Sphinx/reST habits that mkdocstrings' Google parser does not read (the docs have no translator).
_SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`")
_EXAMPLE_TITLE = re.compile(r"^\s*Example:\s*$", re.MULTILINE)
_LITERAL_MARKER = re.compile(r"\S::\s*$", re.MULTILINE)


def test_docstrings_are_markdown_not_sphinx():
    offenders = []
    for path in sorted((ROOT / "camkit").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for name, pattern in (
            ("Sphinx role", _SPHINX_ROLE),
            ("'Example:' title (use 'Examples:')", _EXAMPLE_TITLE),
            ("reST '::' literal marker", _LITERAL_MARKER),
        ):
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.skipif(
    shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
    reason="mkdocs is not installed (pip install -e '.[docs]')",
)
@pytest.mark.slow
def test_docs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    site = tmp_path / "site"
    result = subprocess.run(
        [mkdocs, "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = (site / "api" / "cam" / "index.html").read_text()
    for name in ("CAMExtractor", "forward_frozen", "normalize_cams", "cell_sums"):
        assert name in page
    html = "".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    anchors = set(re.findall(r'id="(camkit\.[\w.]+)"', html))
    # Every public name has its entry, under its public path camkit.<name>.
    missing = sorted(name for name in camkit.__all__ if f"camkit.{name}" not in anchors)
    assert not missing, f"public names without an API entry: {missing}"
    # Only the public API is rendered: no private helper or private module shows.
    private = sorted(a for a in anchors if any(part.startswith("_") for part in a.split(".")))
    assert not private, f"private objects in the API reference: {private}"
