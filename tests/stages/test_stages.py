"""Every shipped model config (models/*.yaml) through every stage, each a real `edgeq run --stages X` on the
committed trained model, on small subsets: the stage writes its artifacts and only those, report.json lists
and evaluates them, INT8 TFLite ones are fully integer, INT8 ones agree with FP32.

A new models/*.yaml is covered without touching this file (as timm's tests follow its registry). The full
default runs are tests/e2e/test_reference_models.py (slow).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_config, run_edgeq, shipped_model_configs, stage_made, stage_test_params
from edgeq.core.artifacts import sha256_of, size_of
from edgeq.stages import registry

MODELS = shipped_model_configs()
EVAL_IMAGES = 200
# each stage's small subsets (its row's tests.options): every stage still does all its steps, on fewer images
FAST_STAGES = {s.name: dict(s.tests.options) for s in registry.STAGES}
FAST = {"data": {"calibration_size": 50, "eval_size": EVAL_IMAGES}, "benchmark": {"rounds": 2, "runs": 5, "warmup": 1}}


def _combos(names=None) -> list:
    """(model, stage) params of the rows named (all rows: None), read from the registry."""
    return stage_test_params([s for s in registry.STAGES if names is None or s.name in names], MODELS)


ALL = _combos()
INT8_TFLITE = _combos([s.name for s in registry.STAGES
                       if any(n.startswith("int8_tflite") for n in stage_made(s, registry.STAGES)[0])])


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    """`stage_run(model, stage)` -> (run dir, report.json); one run per pair, shared by the tests of the pair."""
    cache: dict = {}

    def get(model: str, stage: str):
        if (model, stage) not in cache:
            root = tmp_path_factory.mktemp(f"{model}-{stage}")
            cfg = make_config(root, model, stages=FAST_STAGES, **FAST)  # `--stages` picks the one stage
            selected = ",".join((*registry.stage(stage).tests.run_with, stage))
            proc = run_edgeq("run", cfg, "--out", root / "run", "--stages", selected, timeout=1800)
            rep = json.loads((root / "run" / "report.json").read_text()) if proc.returncode == 0 else None
            cache[(model, stage)] = (root / "run", proc, rep)
        out, proc, rep = cache[(model, stage)]
        assert proc.returncode == 0, proc.stderr[-3000:]  # a failed run fails each of its tests, once run
        return out, rep
    return get


def _by_name(rep: dict) -> dict:
    return {a["name"]: a for a in rep["artifacts"]}


def _made(rep: dict, stage: str) -> list[str]:
    """The artifacts the stage's run made (the row's, with those of the stages it runs with)."""
    always, may = stage_made(registry.stage(stage), registry.STAGES)
    return [*always, *(n for n in may if n in _by_name(rep))]


@pytest.mark.parametrize("model,stage", ALL)
def test_stage_writes_its_artifacts_and_only_those(stage_run, model, stage):
    out, rep = stage_run(model, stage)
    arts = _by_name(rep)
    fp32_source = [n for n, a in arts.items() if a["precision"] == "fp32" and a["format"] in ("keras", "savedmodel")]
    always, may = stage_made(registry.stage(stage), registry.STAGES)
    assert {*fp32_source, *always} <= set(arts) <= {*fp32_source, *always, *may} and len(fp32_source) == 1
    manifest = {a["name"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    for name in _made(rep, stage):
        f = out / arts[name]["path"]  # a file, or a directory artifact (an OpenVINO IR: model.xml + model.bin)
        assert f.exists() and size_of(f) == arts[name]["size_bytes"] > 0
        assert sha256_of(f) == arts[name]["sha256"] == manifest[name]["sha256"]


@pytest.mark.parametrize("model,stage", ALL)
def test_stage_artifacts_are_evaluated_on_the_eval_subset(stage_run, model, stage):
    _, rep = stage_run(model, stage)
    assert rep["dataset"]["n_eval"] == EVAL_IMAGES
    arts = _by_name(rep)
    for name in _made(rep, stage):
        acc = arts[name]["accuracy"]
        assert acc["n"] == EVAL_IMAGES and acc["dataset"] == rep["dataset"]["eval"]
        assert acc["ci95"][0] <= acc["top1"] <= acc["ci95"][1] and acc["top1"] <= acc["top5"]


@pytest.mark.parametrize("model,stage", ALL)
def test_stage_int8_artifacts_agree_with_fp32(stage_run, model, stage):
    """A trained model's INT8 twin predicts the FP32 top-1 on nearly every image, and loses no significant top-1."""
    _, rep = stage_run(model, stage)
    arts = _by_name(rep)
    int8 = [n for n in _made(rep, stage) if arts[n]["precision"] == "int8"]
    assert int8
    for name in int8:
        assert arts[name]["agreement_with_fp32"]["top1_agreement"] >= 0.9, name
        assert arts[name]["vs_fp32"]["n"] == EVAL_IMAGES
        assert arts[name]["vs_fp32"]["drop_ci95_pt"][0] <= 1.0, name  # no drop of more than 1 pt shown


@pytest.mark.parametrize("model,stage", INT8_TFLITE)
def test_stage_int8_tflite_is_fully_integer(stage_run, model, stage):
    from ai_edge_litert.interpreter import Interpreter

    out, rep = stage_run(model, stage)
    arts = _by_name(rep)
    for name in (n for n in _made(rep, stage) if n.startswith("int8_tflite")):
        interp = Interpreter(model_path=str(out / arts[name]["path"]))
        dtypes = {np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
        assert dtypes <= {"int8", "int32"}, (name, dtypes)  # activations and weights int8, biases int32
        assert rep["checks"][name]["fully_integer"] is True


@pytest.mark.parametrize("model,stage", _combos(["onnx_ptq"]))
def test_stage_int8_onnx_stores_int8_weights_between_qdq_pairs(stage_run, model, stage):
    import onnx
    from onnx import TensorProto

    out, rep = stage_run(model, stage)
    arts = _by_name(rep)
    # the host model's weight type follows this CPU's int8 kernels; TensorRT's is always symmetric int8
    for name, allowed in (("int8_onnx_ptq", {TensorProto.INT8, TensorProto.UINT8}), ("int8_onnx_trt", {TensorProto.INT8})):
        m = onnx.load(str(out / arts[name]["path"]))
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in m.graph.node}, name
        weights = [i for i in m.graph.initializer if len(i.dims) >= 2]
        assert weights and {i.data_type for i in weights} <= allowed, name


@pytest.mark.parametrize("model,stage", _combos(["qat"]))
def test_qat_stage_fine_tunes_the_steps_asked_and_reports_them(stage_run, model, stage):
    _, rep = stage_run(model, stage)
    q = rep["qat"]
    asked = FAST_STAGES["qat"]
    assert q["steps"] == asked["steps_per_epoch"] and q["train_images"] == asked["train_images"]
    assert q["fine_tune_seconds"] > 0 and "QAT" in q["markdown"]


@pytest.mark.parametrize("model,stage", _combos(["comparison"]))
def test_comparison_stage_alone_fills_its_own_cell_and_says_why_others_are_empty(stage_run, model, stage):
    _, rep = stage_run(model, stage)
    cells = {(r["bits"], r["method"]): r for r in rep["comparison"]["rows"]}
    assert set(cells) == {(32, "fp32"), (8, "ptq_naive"), (8, "ptq_advanced"), (8, "qat")}
    adv = _by_name(rep)["int8_tflite_ptq_adv"]
    assert cells[(8, "ptq_advanced")]["top1"] == adv["accuracy"]["top1"]
    for method in ("ptq_naive", "qat"):  # their stages did not run: no figure, and a reason
        assert cells[(8, method)]["top1"] is None and cells[(8, method)]["reason"]


@pytest.mark.parametrize("model", list(MODELS))
def test_shipped_config_validates_with_every_stage_and_writes_nothing(model, tmp_path):
    proc = run_edgeq("validate", MODELS[model], "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"ok ({model}" in proc.stdout
    from edgeq.core.config import load_config

    cfg = load_config(MODELS[model])
    enabled = [n for n in registry.names() if getattr(cfg.stages, n).enabled]
    assert {"tflite_ptq", "onnx_ptq", "qat", "comparison"} <= set(enabled)  # every default config runs these
    assert "stages " + ", ".join(enabled) + ";" in proc.stdout
    assert not (tmp_path / "run").exists()
