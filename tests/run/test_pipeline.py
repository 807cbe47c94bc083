"""The spine end to end through the real `edgeq` command on a tiny user model (.keras + ImageFolder)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CONFIG, run_edgeq, write_image_folder


def _only_error_line(proc):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("edgeq: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_run_writes_contract(tiny_run):
    out, proc = tiny_run
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"] == "tiny" and rep["versions"]["tensorflow"]
    names = [a["name"] for a in rep["artifacts"]]
    assert names == ["fp32_keras", "fp32_tflite", "int8_tflite_ptq"]
    for a in rep["artifacts"]:
        for k in ("name", "format", "precision", "method", "path", "size_bytes", "sha256", "accuracy", "latency_ms"):
            assert k in a
        assert (out / a["path"]).is_file()
        assert set(a["accuracy"]) >= {"top1", "top5", "n", "dataset"}
        assert list(a["latency_ms"])[0] == "host"
    fp32, int8 = rep["artifacts"][1], rep["artifacts"][2]
    assert (fp32["method"], int8["method"], int8["precision"]) == ("none", "ptq", "int8")
    assert int8["accuracy"]["n"] == 40 and 0 <= int8["accuracy"]["top1"] <= 1
    assert int8["latency_ms"]["host"]["median"] > 0 and int8["latency_ms"]["host"]["threads"] == 1
    keras = rep["artifacts"][0]["latency_ms"]["host"]
    assert keras["median"] is None and "not a deployment format" in keras["reason"]
    assert rep["checks"]["int8_tflite_ptq"]["fully_integer"] is True
    assert rep["host"]["cpu"]["simd"] is not None
    man = json.loads((out / "manifest.json").read_text())
    assert {a["name"] for a in man["artifacts"]} == set(names) and man["versions"]["numpy"]
    assert (out / "report.md").read_text().count("int8_tflite_ptq") >= 1
    assert "<img" in (out / "report.html").read_text()
    assert "int8_tflite_ptq" in proc.stdout  # summary table printed


def test_int8_tflite_is_fully_integer_and_tracks_fp32(tiny_run):
    out, _ = tiny_run
    from edgeq.methods.tflite.convert import float_ops, tensor_summary
    data = (out / "artifacts" / "int8_ptq.tflite").read_bytes()
    assert float_ops(data) == []
    assert "float32" not in tensor_summary(data)["tensor_dtypes"]
    rep = json.loads((out / "report.json").read_text())
    by = {a["name"]: a for a in rep["artifacts"]}
    assert by["int8_tflite_ptq"]["agreement_with_fp32"]["top1_agreement"] >= 0.9


def test_rerun_resumes_without_rebuilding(tiny_run, tiny_project):
    out, _ = tiny_run
    before = (out / "artifacts" / "int8_ptq.tflite").stat().st_mtime_ns
    proc = run_edgeq("run", tiny_project / "tiny.yaml", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "int8_tflite_ptq: reused" in proc.stdout
    assert (out / "artifacts" / "int8_ptq.tflite").stat().st_mtime_ns == before


def test_uint8_io_option(tiny_project, tmp_path):
    cfg = tmp_path / "u8.yaml"
    cfg.write_text(TINY_CONFIG.format(model=tiny_project / "tiny.keras", images=tiny_project / "images")
                   .replace("representative_images: 40", "representative_images: 40, input_type: uint8, output_type: uint8"))
    proc = run_edgeq("run", cfg, "--out", tmp_path / "run", "--no-benchmark")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from edgeq.measure.predictors import TFLitePredictor
    p = TFLitePredictor(tmp_path / "run" / "artifacts" / "int8_ptq.tflite")
    assert p.input_dtype == np.uint8 and p.output_dtype == np.uint8


# ------------------------------------------------------------------ bad input
def _config(tmp_path, tiny_project, model="tiny.keras", images="images", extra=""):
    shutil.copy(tiny_project / "tiny.keras", tmp_path / "tiny.keras")
    if images == "images" and not (tmp_path / "images").exists():
        shutil.copytree(tiny_project / "images", tmp_path / "images")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_CONFIG.format(model=model, images=images) + extra)
    return cfg


def _assert_nothing_written(out: Path):
    assert not (out / "artifacts").exists() or not any((out / "artifacts").iterdir())
    assert not list(out.parent.rglob("*.part*"))


def test_missing_model(tmp_path, tiny_project):
    cfg = _config(tmp_path, tiny_project, model="nope.keras")
    line = _only_error_line(run_edgeq("run", cfg, "--out", tmp_path / "o"))
    assert "nope.keras: model file not found" in line
    _assert_nothing_written(tmp_path / "o")


def test_corrupt_model(tmp_path, tiny_project):
    cfg = _config(tmp_path, tiny_project)
    (tmp_path / "tiny.keras").write_bytes(b"\x00garbage" * 100)
    line = _only_error_line(run_edgeq("run", cfg, "--out", tmp_path / "o"))
    assert "tiny.keras" in line and "not a valid .keras file" in line
    _assert_nothing_written(tmp_path / "o")


def test_input_shape_mismatch(tmp_path, tiny_project):
    cfg = _config(tmp_path, tiny_project)
    cfg.write_text(cfg.read_text().replace("[16, 16, 3]", "[32, 32, 3]"))
    line = _only_error_line(run_edgeq("run", cfg, "--out", tmp_path / "o"))
    assert "does not match config model.input_shape [32, 32, 3]" in line
    _assert_nothing_written(tmp_path / "o")


def test_empty_calibration_dir(tmp_path, tiny_project):
    (tmp_path / "empty").mkdir()
    cfg = _config(tmp_path, tiny_project, images="empty")
    line = _only_error_line(run_edgeq("run", cfg, "--out", tmp_path / "o"))
    assert "empty: no class sub-directories" in line
    _assert_nothing_written(tmp_path / "o")


def test_non_image_calibration_dir(tmp_path, tiny_project):
    (tmp_path / "txt" / "a").mkdir(parents=True)
    (tmp_path / "txt" / "a" / "readme.md").write_text("# not an image")
    cfg = _config(tmp_path, tiny_project, images="txt")
    line = _only_error_line(run_edgeq("run", cfg, "--out", tmp_path / "o"))
    assert "readme.md: not an image file" in line


def test_fewer_calibration_images_than_asked(tmp_path, tiny_project):
    write_image_folder(tmp_path / "few", 12)
    cfg = _config(tmp_path, tiny_project, images="few")
    line = _only_error_line(run_edgeq("run", cfg, "--out", tmp_path / "o"))
    assert "40 images asked for but only 12 available" in line
    _assert_nothing_written(tmp_path / "o")


def test_unknown_key(tmp_path, tiny_project):
    cfg = _config(tmp_path, tiny_project, extra="benchmark_runs: 5\n")
    line = _only_error_line(run_edgeq("run", cfg, "--out", tmp_path / "o"))
    assert str(cfg) in line and "unknown key 'benchmark_runs'" in line
    assert not (tmp_path / "o").exists()


def test_bad_rerun_keeps_finished_artifacts(tiny_run, tiny_project, tmp_path):
    out, _ = tiny_run
    before = {p.name: p.read_bytes() for p in (out / "artifacts").iterdir()}
    cfg = _config(tmp_path, tiny_project)
    (tmp_path / "tiny.keras").write_bytes(b"broken")
    _only_error_line(run_edgeq("run", cfg, "--out", out))
    assert {p.name: p.read_bytes() for p in (out / "artifacts").iterdir()} == before


def test_per_layer_error_in_report(tiny_run):
    out, _ = tiny_run
    rep = json.loads((out / "report.json").read_text())
    pl = {a["name"]: a for a in rep["artifacts"]}["int8_tflite_ptq"]["per_layer_error"]
    assert pl["reference"] == "fp32_tflite" and pl["images"] == 8
    ops = [r["op"] for r in pl["layers"]]
    assert "CONV_2D" in ops and "DEPTHWISE_CONV_2D" in ops
    assert all(r["sqnr_db"] > 10 for r in pl["layers"])  # a healthy INT8 model stays well above noise
    assert "Per-layer error" in (out / "report.md").read_text()


def test_targets_without_inventory_fail_before_any_work(tmp_path, tiny_project):
    cfg = _config(tmp_path, tiny_project, extra="targets: [{device: pi4}]\n")
    line = _only_error_line(run_edgeq("run", cfg, "--out", tmp_path / "o"))
    assert "no `inventory:` file is set" in line
    assert not (tmp_path / "o").exists()
    (tmp_path / "inv.yaml").write_text("devices: [{name: pi5, kind: host}]\n")
    cfg.write_text(cfg.read_text() + "inventory: inv.yaml\n")
    line = _only_error_line(run_edgeq("run", cfg, "--out", tmp_path / "o"))
    assert "no device named 'pi4'" in line and "pi5" in line
    assert not (tmp_path / "o").exists()


def test_report_records_where_the_time_went(tiny_run):
    out, _ = tiny_run
    rep = json.loads((out / "report.json").read_text())
    phases = rep["stage_seconds"]
    assert list(phases)[:3] == ["preflight", "import", "tflite_ptq"]
    assert {"evaluate", "benchmark:host"} <= set(phases)
    assert all(v >= 0 for v in phases.values()) and phases["tflite_ptq"] > 0
    assert sum(phases.values()) <= rep["wall_seconds"] + 0.5  # phases are parts of the run, not more
    assert "of which preflight" in (out / "report.md").read_text()
