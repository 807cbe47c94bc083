"""Adding a stage is one module plus one registry row: a trial stage, written here, is validated by
`edgeq validate`, run and evaluated by `edgeq run`, shown in the report, and parametrized into the per-stage
tests, without touching any other file. And every shipped stage's row is complete."""
from __future__ import annotations

import json
import sys

import pytest
import yaml

from conftest import shipped_model_configs, stage_made, stage_test_params
from edgeq.cli import main
from edgeq.core.options import Strict
from edgeq.stages import registry

TRIAL_MODULE = '''
"""A trial stage: a copy of the run's INT8 TFLite under another name (a real artifact, evaluated like any)."""
import shutil

from pydantic import Field

from edgeq.core.options import Strict


class TrialCopySpec(Strict):
    enabled: bool = False
    label: str = "trial"
    copies: int = Field(1, ge=1, le=1)


def run_stage(ctx, opts):
    int8 = ctx.manifest.artifacts["int8_tflite_ptq"]

    def make(tmp):
        shutil.copyfile(int8.abspath(ctx.run_dir), tmp)
        return {"copy_of": int8.name}

    art = ctx.produce(f"int8_tflite_{opts.label}", f"int8_{opts.label}.tflite", {"of": int8.sha256}, make,
                      fmt="tflite", precision="int8", method="ptq_trial", stage="trial_copy",
                      params={"label": opts.label}, parent=int8.name)
    ctx.results.set_section("trial_copy", {"artifact": art.name, "copy_of": int8.name, "bytes": art.size_bytes})
    return [art]


def section_markdown(section, artifacts, compatibility):
    return f"## Trial copy\\n\\n{section['artifact']} is a copy of {section['copy_of']} ({section['bytes']} bytes)."
'''


@pytest.fixture
def trial_row(tmp_path, monkeypatch):
    """The trial module on sys.path and its ONE row appended to the registry (undone after the test)."""
    (tmp_path / "trial_copy.py").write_text(TRIAL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import trial_copy

    row = registry.Stage("trial_copy", "trial_copy:run_stage", trial_copy.TrialCopySpec, artifacts=1,
                         sections={"trial_copy": "trial_copy:section_markdown"},
                         tests=registry.StageTests(artifacts=("int8_tflite_trial",), run_with=("tflite_ptq",)))
    monkeypatch.setattr(registry, "STAGES", (*registry.STAGES, row))
    yield row
    sys.modules.pop("trial_copy", None)


def _config(tiny_project, tmp_path, trial: dict | None) -> str:
    raw = yaml.safe_load((tiny_project / "tiny.yaml").read_text())
    raw["model"]["path"] = str(tiny_project / "tiny.keras")
    raw["data"]["path"] = str(tiny_project / "images")
    raw["benchmark"] = {"runs": 5, "warmup": 1, "rounds": 2}
    if trial is not None:
        raw["stages"]["trial_copy"] = trial
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_trial_stage_options_are_validated_from_its_row(trial_row, tiny_project, tmp_path, capsys):
    ok = _config(tiny_project, tmp_path, {"enabled": True, "label": "trial"})
    assert main(["validate", ok, "--out", str(tmp_path / "run")]) == 0
    assert "trial_copy" in capsys.readouterr().out
    misspelt = _config(tiny_project, tmp_path, {"enabled": True, "lable": "trial"})
    assert main(["validate", misspelt, "--out", str(tmp_path / "run")]) == 2
    assert "unknown key 'stages.trial_copy.lable'" in capsys.readouterr().err
    out_of_range = _config(tiny_project, tmp_path, {"copies": 2})
    assert main(["validate", out_of_range, "--out", str(tmp_path / "run")]) == 2
    assert "'stages.trial_copy.copies'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_stage_key_is_still_refused(trial_row, tiny_project, tmp_path, capsys):
    raw = yaml.safe_load(open(_config(tiny_project, tmp_path, None)))
    raw["stages"]["trial_copi"] = {"enabled": True}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    assert main(["validate", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "unknown key 'stages.trial_copi'" in capsys.readouterr().err


def test_trial_stage_runs_is_evaluated_and_reported(trial_row, tiny_project, tmp_path, capsys):
    cfg = _config(tiny_project, tmp_path, {"enabled": True, "label": "trial"})
    out = tmp_path / "run"
    assert main(["run", cfg, "--out", str(out), "--stages", "tflite_ptq,trial_copy"]) == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    arts = {a["name"]: a for a in rep["artifacts"]}
    trial, int8 = arts["int8_tflite_trial"], arts["int8_tflite_ptq"]
    assert trial["stage"] == "trial_copy" and trial["sha256"] == int8["sha256"]
    assert trial["accuracy"]["n"] == int8["accuracy"]["n"] > 0 and trial["accuracy"]["top1"] == int8["accuracy"]["top1"]
    assert trial["latency_ms"]["host"]["median"] is not None
    shown = f"int8_tflite_trial is a copy of int8_tflite_ptq ({trial['size_bytes']} bytes)"
    assert rep["trial_copy"]["bytes"] == trial["size_bytes"] and shown in rep["trial_copy"]["markdown"]
    assert shown in (out / "report.md").read_text() and "Trial copy" in (out / "report.html").read_text()
    stored = json.loads((out / "results.json").read_text())["sections"]["trial_copy"]
    assert "markdown" not in stored  # the stage stores data; the report renders it


def test_trial_stage_joins_the_per_stage_tests(trial_row):
    models = shipped_model_configs()
    params = stage_test_params(registry.STAGES, models)
    assert {f"{m}-trial_copy" for m in models} <= {p.id for p in params}
    assert stage_made(trial_row, registry.STAGES) == (["fp32_tflite", "int8_tflite_ptq", "int8_tflite_trial"], [])


@pytest.mark.parametrize("row", registry.STAGES, ids=lambda r: r.name)
def test_every_row_is_complete(row):
    """Its run function, after-evaluate hook and section builders resolve; its options are a strict schema with an
    `enabled` switch; its tests name the stages it runs with."""
    assert registry.resolve(row.run) and (row.after_evaluate is None or registry.resolve(row.after_evaluate))
    assert row.sections and all(registry.resolve(spec) for spec in row.sections.values())
    assert issubclass(row.options, Strict) and "enabled" in row.options.model_fields and row.artifacts >= 1
    assert set(row.tests.run_with) <= set(registry.names()) and row.name.isidentifier()
    assert row.run.split(":")[0] == f"edgeq.stages.{row.name}"  # module name = stage name = config key


def test_no_stage_module_imports_the_report():
    """Stages return data; the report renders it (the registry only names the builders, as strings)."""
    import ast
    from pathlib import Path

    import edgeq.stages

    for f in Path(edgeq.stages.__file__).parent.rglob("*.py"):
        tree = ast.parse(f.read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m == "edgeq.report" or m.startswith("edgeq.report.")], f
