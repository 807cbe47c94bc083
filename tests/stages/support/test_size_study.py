"""stages.tflite_ptq.size_study: the INT8 TFLite made again from fewer calibration images, each a real model
evaluated on the evaluation set and paired with the largest size's model and with FP32."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_config, run_edgeq


def test_the_curve_pairs_each_size_with_the_largest_and_names_the_sizes_that_cost_accuracy():
    from edgeq.stages.support.size_study import markdown, size_curve

    labels = np.zeros(2000, int)
    fp32 = labels.copy()
    preds = {n: labels.copy() for n in (16, 64, 256)}
    preds[16][:200] = 1  # 10 pt worse than 256: significant after Holm
    preds[64][:4] = 1  # 0.2 pt: not significant (p = 0.125)
    d = size_curve(labels, preds, fp32)
    rows = {r["images"]: r for r in d["rows"]}
    assert rows[16]["vs_largest"]["drop_pt"] == pytest.approx(10.0) and rows[16]["vs_largest"]["p_holm"] < 1e-10
    assert rows[64]["vs_largest"]["p_holm"] > 0.05 and "vs_largest" not in rows[256]
    assert rows[16]["vs_fp32"]["drop_pt"] == pytest.approx(10.0) and rows[256]["top1"] == 1.0
    assert d["enough_from"] == 64 and "fewer than 64 images cost accuracy significantly (16: Holm across 2 sizes)" \
        in d["verdict"]
    assert "64 -> 256 images changed top-1 by +0.20 pt" in d["verdict"] and "unlikely to help" in d["verdict"]
    md = markdown(d)
    assert "| 16 | 90.00 [" in md and "— (reference)" in md


def test_a_size_larger_than_the_calibration_split_is_refused_before_the_run(tiny_project, tmp_path):
    cfg = make_config(tmp_path, tiny_project, stages={"tflite_ptq": {"size_study": [8, 400]}})
    proc = run_edgeq("run", cfg, "--out", tmp_path / "run", "--no-benchmark")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "stages.tflite_ptq.size_study is 400 but the calibration split has 40 images" in proc.stderr


@pytest.mark.slow  # two `edgeq run`s of the tiny project: ~40 s on a loaded 2-core host
def test_a_run_with_a_size_study_reports_the_curve_from_real_models(tiny_project, tmp_path):
    cfg = make_config(tmp_path, tiny_project, stages={"tflite_ptq": {"representative_images": 40,
                                                                     "size_study": [40, 4, 16]}})
    proc = run_edgeq("run", cfg, "--out", tmp_path / "run", "--no-benchmark")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    d = rep["calibration_size_study"]
    assert [r["images"] for r in d["rows"]] == [4, 16, 40] and d["largest"] == 40
    assert d["n_eval"] == rep["dataset"]["n_eval"] and all("vs_fp32" in r for r in d["rows"])
    assert d["matches_int8_tflite_ptq"] is True  # 40 images = the stage's own INT8 model, prediction for prediction
    assert sorted(p.name for p in (tmp_path / "run" / "size_study").glob("*.tflite")) == [
        "int8_ptq_cal16.tflite", "int8_ptq_cal4.tflite", "int8_ptq_cal40.tflite"]
    assert {a["name"] for a in rep["artifacts"]} == {"fp32_keras", "fp32_tflite", "int8_tflite_ptq"}  # never shipped
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Calibration size study" in md and "Verdict: 16 -> 40 images changed top-1 by" in md
    made = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "size_study").iterdir()}
    again = run_edgeq("run", cfg, "--out", tmp_path / "run", "--no-benchmark")  # a rerun reuses models and predictions
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "size_study").iterdir()} == made
    assert json.loads((tmp_path / "run" / "report.json").read_text())["calibration_size_study"]["rows"] == d["rows"]
