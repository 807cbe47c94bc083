"""`edgeq report RUN_DIR`: the summary table of a finished run, from its report.json, without running anything.

(`edgeq validate` on good configs: tests/reliability/test_runs.py for the tiny project, tests/stages/test_stages.py for
every shipped model; on bad ones: tests/reliability/test_bad_input.py.)
"""
from __future__ import annotations

import json

from conftest import run_edgeq


def test_report_prints_every_artifact_with_its_top1_from_report_json(tiny_run):
    out, _ = tiny_run
    rep = json.loads((out / "report.json").read_text())
    proc = run_edgeq("report", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {ln.split()[0]: ln for ln in proc.stdout.splitlines() if ln.strip() and ln.split()[0] in
            {a["name"] for a in rep["artifacts"]}}
    assert set(rows) == {a["name"] for a in rep["artifacts"]}
    for a in rep["artifacts"]:
        assert f"{a['accuracy']['top1'] * 100:.2f}" in rows[a["name"]], rows[a["name"]]
    assert rep["model"] in proc.stdout


def test_report_of_a_directory_without_a_run_says_how_to_make_one(tmp_path):
    proc = run_edgeq("report", tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"edgeq: error: {tmp_path / 'report.json'}: no report")
    assert f"edgeq run CONFIG --out {tmp_path}" in line
