"""A model with an op TFLite's INT8 converter leaves in float: `edgeq run` refuses to ship it as INT8 and names
the op, unless `stages.tflite_ptq.allow_float_ops` asks for the hybrid model, which the report then marks as
not fully integer.

SIN has only a float kernel in TFLite: the full-integer converter wraps it in DEQUANTIZE/QUANTIZE instead of
failing (checked on TF 2.21: FLOOR, ROUND, SQUARE, CUMSUM behave the same; EXP, LOG, GELU, LayerNorm
quantise). `tf.math.sin` on a Keras tensor is a built-in TFOpLambda layer, so the .keras file loads in safe mode.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_config, run_edgeq


@pytest.fixture(scope="module")
def sin_model(tmp_path_factory) -> Path:
    """conv -> sin -> pooling -> dense, 16x16x3 -> 3 classes, saved as .keras."""
    import edgeq  # noqa: F401
    from edgeq.core.tfcompat import keras, set_seed, tf

    set_seed(0)
    k = keras()
    inp = k.Input((16, 16, 3))
    x = k.layers.Conv2D(8, 3, padding="same")(inp)
    x = tf().math.sin(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    m = k.Model(inp, k.layers.Dense(3, activation="softmax")(x), name="sin_cnn")
    path = tmp_path_factory.mktemp("sin") / "sin.keras"
    m.save(path)
    return path


def _config(tmp_path: Path, tiny_project: Path, sin_model: Path, **tflite_ptq) -> Path:
    return make_config(tmp_path, tiny_project, model={"path": str(sin_model)},
                       stages={"tflite_ptq": {"representative_images": 40, **tflite_ptq}})


def test_int8_ptq_of_a_model_with_a_float_only_op_fails_naming_the_op(tmp_path, tiny_project, sin_model):
    proc = run_edgeq("run", _config(tmp_path, tiny_project, sin_model), "--out", tmp_path / "run", "--no-benchmark")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgeq: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "not fully integer" in errors[0] and "SIN#" in errors[0] and "allow_float_ops" in errors[0]
    assert not (tmp_path / "run" / "artifacts" / "int8_ptq.tflite").exists()
    assert not (tmp_path / "run" / "report.json").exists()


def test_allow_float_ops_ships_the_hybrid_model_marked_not_fully_integer(tmp_path, tiny_project, sin_model):
    from ai_edge_litert.interpreter import Interpreter

    cfg = _config(tmp_path, tiny_project, sin_model, allow_float_ops=True)
    proc = run_edgeq("run", cfg, "--out", tmp_path / "run", "--no-benchmark")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    int8 = next(a for a in rep["artifacts"] if a["name"] == "int8_tflite_ptq")
    assert rep["checks"]["int8_tflite_ptq"]["fully_integer"] is False
    assert int8["accuracy"]["n"] == 40 and int8["accuracy"]["top1"] is not None  # it runs and is evaluated
    interp = Interpreter(model_path=str(tmp_path / "run" / int8["path"]))
    tensors = {t["index"]: np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    sin = [op for op in interp._get_ops_details() if op["op_name"] == "SIN"]
    assert len(sin) == 1 and tensors[int(sin[0]["outputs"][0])] == "float32"
