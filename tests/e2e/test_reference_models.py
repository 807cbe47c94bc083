"""The committed default models through their default runs (MobileNetV2: every stage; ResNet-50: its PTQ
stages), with the spine's bars and the report.json contract (intervals, paired tests, verdicts, conditions, what to ship) checked on
real data.

Uses the trained weights in models/ (never trains). With Debian's dataset-fashion-mnist installed the
evaluation is the full 10,000-image test set, else the shipped 1,000-image sample.
"""
import json
from pathlib import Path

import pytest

from conftest import run_edgeq

REPO = Path(__file__).resolve().parents[2]
# ResNet-50's QAT and comparison stages (~7 of its ~9.5 minutes) run in tests/stages/test_stages.py on subsets;
# here its PTQ stages carry the report contract, which needs no QAT artifact
STAGES = {"resnet50": "tflite_ptq,onnx_ptq"}
BARS = {  # model: (FP32 top-1 floor, INT8/FP32 TFLite size ratio ceiling)
    "mobilenet_v2": (0.88, 0.40),
    "resnet50": (0.85, 0.30),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BARS))
def test_reference_model_default_run(name, tmp_path):
    if not (REPO / "models" / f"{name}.keras").exists():
        pytest.fail(f"models/{name}.keras is missing: train it with `edgeq train-reference {name}`")
    out = tmp_path / name
    stages = ["--stages", STAGES[name]] if STAGES.get(name) else []
    proc = run_edgeq("run", REPO / "models" / f"{name}.yaml", "--out", out, *stages, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    _check_contract(rep)
    by = {a["name"]: a for a in rep["artifacts"]}
    fp32, int8 = by["fp32_tflite"], by["int8_tflite_ptq"]
    floor, size_ceiling = BARS[name]
    if rep["dataset"]["full_test_set"]:
        assert fp32["accuracy"]["top1"] >= floor
    assert rep["checks"]["int8_tflite_ptq"]["fully_integer"]
    assert rep["checks"]["int8_tflite_ptq"]["top1_drop_points"] <= 1.0
    assert rep["checks"]["int8_tflite_ptq"]["size_ratio"] <= size_ceiling
    assert int8["latency_ms"]["host"]["median"] > 0 and fp32["latency_ms"]["host"]["median"] > 0
    info = json.loads((REPO / "models" / f"{name}.train.json").read_text())
    assert info["fp32_top1_test"] >= floor  # recorded by the training recipe on the full test set


def _check_contract(rep: dict) -> None:
    """Every key issue #10 added to report.json, on a real default run."""
    assert set(rep["conditions"]["host"]) >= {"loadavg_before", "loadavg_after", "cpu", "threads", "busy_processes"}
    assert rep["ship"]["host"]["artifact"] in {a["name"] for a in rep["artifacts"]}
    assert rep["budget"]["max_accuracy_drop_pt"] > 0
    for a in rep["artifacts"]:
        if a["accuracy"]["top1"] is None:  # resnet50.yaml: the Keras model is not evaluated (its FP32 .tflite is)
            assert a["format"] == "keras" and "keras_baseline" in a["accuracy"]["reason"]
            continue
        lo, hi = a["accuracy"]["ci95"]
        assert lo <= a["accuracy"]["top1"] <= hi
        if a["precision"] != "fp32":  # every FP32 artifact is a baseline (keras, tflite, onnx, openvino)
            v = a["vs_fp32"]
            assert set(v) >= {"reference", "n", "drop_pt", "drop_ci95_pt", "mcnemar", "verdict"}
            assert set(v["mcnemar"]) == {"b", "c", "p"} and v["n"] == a["accuracy"]["n"]
        host = a["latency_ms"]["host"]
        if host.get("median") is not None:
            assert host["median_ci95"][0] <= host["median"] <= host["median_ci95"][1]
            assert isinstance(host["noisy"], bool)
            if a["precision"] == "int8":
                assert host["ratio_to_fp32"]["reference"] in ("fp32_tflite", "fp32_onnx", "fp32_openvino")
    assert "p = " in rep["comparison"]["verdict"] or "p < 0.001" in rep["comparison"]["verdict"]
    assert {t["format"] for t in rep["comparison"]["tests"]} == {"tflite", "onnx"}
