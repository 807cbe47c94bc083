"""A run directory whose manifest.json or results.json was damaged (a crash of another tool, a bad edit):
rerunning the same command succeeds and rewrites the file whole."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_edgeq

DAMAGE = {
    "truncated": lambda text: text[: len(text) // 3],
    "not_an_object": lambda text: "[]\n",
}
CASES = [pytest.param(f, d, id=f"{f}-{d}") for f in ("manifest.json", "results.json") for d in DAMAGE]


@pytest.mark.parametrize("file,damage", CASES)
def test_rerun_over_a_damaged_run_file_succeeds_and_rewrites_it(file, damage, tiny_run, tiny_project, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    (out / file).write_text(DAMAGE[damage]((out / file).read_text()))
    proc = run_edgeq("run", tiny_project / "tiny.yaml", "--out", out, "--no-benchmark")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert isinstance(json.loads((out / file).read_text()), dict)
    rep = json.loads((out / "report.json").read_text())
    manifest = {a["name"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert set(manifest) == {a["name"] for a in rep["artifacts"]} == {"fp32_keras", "fp32_tflite", "int8_tflite_ptq"}
    for a in rep["artifacts"]:
        assert manifest[a["name"]]["sha256"] == a["sha256"] and (out / a["path"]).is_file()
        assert a["accuracy"]["n"] == 40
