"""LiteRT Quantizer recipes (stages.litert_quant): real W8A8 and W4A8 .tflite artifacts from the run's FP32 .tflite,
fully integer, run by LiteRT, evaluated and benchmarked like every artifact."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeq.core.config import LITERT_RECIPES
from edgeq.core.errors import QuantizationError
from edgeq.methods.tflite import litert as litert_quant
from edgeq.stages.litert_quant import artifact_name

RECIPES = ["w8a8", "w8a8_octav", "w4a8", "w4a8_octav", "w4a8_auto"]


@pytest.fixture(scope="module")
def lq_run(tiny_project, tmp_path_factory):
    from edgeq.core.config import load_config
    from edgeq.run.pipeline import run_pipeline

    cfg = load_config(tiny_project / "tiny.yaml")
    cfg.stages.litert_quant.enabled = True
    cfg.stages.litert_quant.recipes = RECIPES
    cfg.stages.litert_quant.calibration_images = 40
    cfg.benchmark.rounds, cfg.benchmark.runs, cfg.benchmark.warmup = 2, 5, 1
    run_dir = run_pipeline(cfg, tmp_path_factory.mktemp("lq") / "run", log=lambda m: None)
    manifest = {a["name"]: a for a in json.loads((run_dir / "manifest.json").read_text())["artifacts"]}
    return run_dir, json.loads((run_dir / "report.json").read_text()), manifest


def test_every_recipe_is_a_fully_integer_artifact_evaluated_and_benchmarked(lq_run):
    run_dir, rep, manifest = lq_run
    arts = {a["name"]: a for a in rep["artifacts"]}
    for r in RECIPES:
        name = artifact_name(litert_quant.RECIPES[r])
        a = manifest[name]
        assert a["parent"] == "fp32_tflite" and a["stage"] == "litert_quant"
        assert a["notes"]["float_ops"] == [] and "float32" not in a["notes"]["tensor_dtypes"]
        assert a["params"]["recipe"] == r and a["params"]["range_method"] in ("minmax", "octav", "auto")
        assert a["notes"]["rounding"] and a["notes"]["range_method"] and a["notes"]["litert_recipe"]
        assert arts[name]["accuracy"]["top1"] is not None  # LiteRT ran it over the evaluation split
        assert arts[name]["latency_ms"]["host"]["median"] is not None
        assert (run_dir / a["path"]).stat().st_size == a["size_bytes"]


def test_w4a8_stores_packed_int4_weights_and_is_smaller_than_w8a8(lq_run):
    _, _, manifest = lq_run
    w8, w4 = manifest["int8_tflite_lq"], manifest["int4_tflite_w4a8"]
    assert w4["precision"] == "int4" and w8["precision"] == "int8"
    b8, b4 = w8["notes"]["weight_bytes"], w4["notes"]["weight_bytes"]
    assert b4.get("int4", 0) > 0 and "int4" not in b8
    int4_values = 2 * b4["int4"]
    assert int4_values <= b8["int8"] - b4.get("int8", 0) + 2  # packed: two weights per byte
    assert w4["size_bytes"] < w8["size_bytes"]


def test_every_config_recipe_is_a_row_of_the_recipe_table():
    assert set(LITERT_RECIPES) == set(litert_quant.RECIPES)
    for r in litert_quant.RECIPES.values():
        entries = litert_quant.recipe_entries(r)
        assert entries[0]["operation"] == "*" and entries[0]["op_config"]["activation_tensor_config"]["num_bits"] == 8
        assert (r.weight_bits == 4) == any(e["op_config"]["weight_tensor_config"]["num_bits"] == 4 for e in entries)


def test_unknown_recipe_is_a_config_error(tmp_path):
    from edgeq.core.config import config_from_dict
    from edgeq.core.errors import ConfigError

    raw = {"name": "x", "model": {"path": "m.keras", "input_shape": [16, 16, 3], "num_classes": 3},
           "stages": {"litert_quant": {"enabled": True, "recipes": ["w3a8"]}}}
    with pytest.raises(ConfigError, match="stages.litert_quant.recipes"):
        config_from_dict(raw, base_dir=tmp_path)


def test_gptq_quantizes_every_weight_and_tracks_fp32(lq_run, tiny_project):
    """litert-quantizer 0.11's GPTQ finds no Hessian for an FC whose input an earlier op calibrated and would leave
    its float weights under an int8 type; edgeq supplies the Hessians and checks every weight buffer."""
    from edgeq.core.config import load_config
    from edgeq.run.inputs import load_splits, preprocess_of
    from edgeq.measure.predictors import TFLitePredictor

    run_dir, _, manifest = lq_run
    fp32 = (run_dir / manifest["fp32_tflite"]["path"]).read_bytes()
    cfg = load_config(tiny_project / "tiny.yaml")
    pre = preprocess_of(cfg)
    splits = load_splits(cfg, pre)
    x = pre(splits.calibration.images[:40])
    data, notes = litert_quant.quantize_tflite(fp32, litert_quant.RECIPES["w8a8_gptq"], x, name="gptq")
    litert_quant.check_weights_quantized(data, "w8a8_gptq")  # raises on a float buffer under an int8 type
    assert notes["float_ops"] == [] and "GPTQ" in notes["rounding"]
    gptq_file, ref_file = run_dir / "gptq.tflite", run_dir / manifest["fp32_tflite"]["path"]
    gptq_file.write_bytes(data)
    ev = pre(splits.eval.images)
    agree = (TFLitePredictor(gptq_file).predict(ev).argmax(1) == TFLitePredictor(ref_file).predict(ev).argmax(1))
    assert agree.mean() >= 0.9


def test_weights_that_do_not_match_their_type_are_refused(lq_run):
    from ai_edge_litert.tools import flatbuffer_utils as fu

    run_dir, _, manifest = lq_run
    m = fu.read_model_from_bytearray(bytearray((run_dir / manifest["int8_tflite_lq"]["path"]).read_bytes()))
    t = next(t for t in m.subgraphs[0].tensors if t.type == 9 and m.buffers[t.buffer].data is not None
             and len(m.buffers[t.buffer].data) > 16)
    m.buffers[t.buffer].data = np.zeros(4 * len(m.buffers[t.buffer].data), np.uint8)  # float32-sized, int8-typed
    with pytest.raises(QuantizationError, match="do not match their tensor type"):
        litert_quant.check_weights_quantized(bytes(fu.convert_object_to_bytearray(m)), "w8a8")


def test_litert_quant_without_the_fp32_tflite_is_refused_up_front(tmp_path):
    from edgeq.core.config import config_from_dict
    from edgeq.core.errors import ConfigError

    raw = {"name": "x", "model": {"path": "m.keras", "input_shape": [16, 16, 3], "num_classes": 3},
           "stages": {"tflite_ptq": {"export_fp32": False}, "litert_quant": {"enabled": True}}}
    with pytest.raises(ConfigError, match="stages.litert_quant quantizes the run's FP32 .tflite"):
        config_from_dict(raw, base_dir=tmp_path)


def test_report_states_the_int8_file_with_every_weight_at_four_bits(lq_run):
    """What int4 weights alone can save on this model: the converter's INT8 file with every int8 weight byte
    halved, in bytes and as a ratio (scales, zero points, int32 biases and the graph do not shrink)."""
    run_dir, rep, manifest = lq_run
    floor = rep["litert_quant"]["int4_floor"]
    int8 = manifest[floor["of"]]
    assert floor["int8_weight_bytes"] > 0
    assert floor["bytes"] == int8["size_bytes"] - floor["int8_weight_bytes"] // 2
    assert floor["ratio"] == round(floor["bytes"] / int8["size_bytes"], 4)
    assert f"{floor['bytes']:,} bytes = {floor['ratio']:.3f}×" in rep["litert_quant"]["markdown"]


def test_auto_recipe_chooses_the_range_method_per_op_by_measured_error(lq_run):
    """w4a8_auto: min-max or OCTAV per op by the SQNR that op loses, then the per-op model against both uniform
    ones by output error on held-back calibration images; the lowest is what was written, and the report says so."""
    run_dir, rep, manifest = lq_run
    a = manifest["int4_tflite_w4a8_auto"]
    notes = a["notes"]
    errors = {k: v["output_mse"] for k, v in notes["candidates"].items()}
    assert set(errors) == {"uniform minmax", "uniform octav", "per op"}
    assert errors[notes["route"]] == min(errors.values())  # a tie keeps the per-op model (it is the same one)
    assert set(notes["op_range_methods"]) <= {"minmax", "octav"} and sum(notes["op_range_methods"].values()) > 3
    assert notes["float_ops"] == [] and notes["weight_bytes"].get("int4", 0) > 0
    assert a["method"] == "ptq_auto" and "held-back" in notes["selection"]
    if notes["route"] == "per op":  # the written recipe overrides exactly the ops that chose OCTAV
        overridden = [e for e in notes["litert_recipe"] if e["regex"] != ".*" and e["algorithm_key"] == "OCTAV"]
        assert len(overridden) == len(notes["ops_not_minmax"]) == notes["op_range_methods"].get("octav", 0)
    assert "int4_tflite_w4a8_auto: route **" in rep["litert_quant"]["markdown"]
