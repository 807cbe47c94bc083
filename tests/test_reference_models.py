"""The committed default models through the TFLite path, with the spine's bars checked on real data.

Uses the trained weights in models/ (never trains). With Debian's dataset-fashion-mnist installed the
evaluation is the full 10,000-image test set, else the shipped 1,000-image sample.
"""
import json
from pathlib import Path

import pytest

from conftest import run_edgeq

REPO = Path(__file__).resolve().parent.parent
BARS = {  # model: (FP32 top-1 floor, INT8/FP32 TFLite size ratio ceiling)
    "mobilenet_v2": (0.88, 0.40),
    "resnet50": (0.85, 0.30),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BARS))
def test_reference_model_tflite_bars(name, tmp_path):
    if not (REPO / "models" / f"{name}.keras").exists():
        pytest.fail(f"models/{name}.keras is missing: train it with `edgeq train-reference {name}`")
    out = tmp_path / name
    proc = run_edgeq("run", REPO / "models" / f"{name}.yaml", "--out", out, "--stages", "tflite_ptq",
                     timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
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
