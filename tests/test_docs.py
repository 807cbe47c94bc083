"""The documentation: README stays a front page (<= 150 lines, the two commands), the MkDocs site builds in strict
mode (a broken link or reference fails), and every config shown in README or docs/ is a valid config."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_is_a_front_page_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make run" in text and "make test" in text


def test_docs_site_builds_in_strict_mode(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    p = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "reference" / "index.html").is_file()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_config_block_in_the_docs_parses_and_names_only_known_sections(doc):
    from edgeq.core.config import RunConfig

    known = set(RunConfig.model_fields)
    for block in yaml_blocks(doc):
        raw = yaml.safe_load(block)
        if not isinstance(raw, dict) or "model" not in raw:
            continue  # an inventory or a fragment
        assert set(raw) <= known, f"{doc.name}: unknown keys {set(raw) - known}"


@pytest.mark.slow
def test_python_example_of_the_docs_runs(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "docs" / "examples" / "quantize_in_memory.py"), str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=1200, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "INT8 top-1" in p.stdout and "ship on this host:" in p.stdout
