"""The stages of a run, in order: one `Stage` row each, carrying everything the other parts need to know of it.

The pipeline runs the rows in order, the preflight sizes the run from them, config validation builds the
`stages:` section from their options classes, the report renders their sections with the builders they name,
and tests/stages parametrizes over them. Adding a stage is its module plus one row here.

Functions are named as "module:function" strings, imported on first use: heavy imports stay lazy, and this
table imports neither the stage modules nor the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from edgeq.core.formats import resolve, runs_from_onnx  # noqa: F401  (re-exported: the rows name functions as 'module:function')
from edgeq.core.options import (ComparisonSpec, LitertQuantSpec, OnnxFallbackSpec, MixedPrecisionSpec, NncfPtqSpec, OnnxPtqSpec, PrecisionSpec, QatSpec,
                                Strict, TflitePtqSpec, use_stage_table)


@dataclass(frozen=True)
class StageTests:
    """How tests/stages/test_stages.py runs a stage on each shipped model config: a real `edgeq run --stages`
    of it (and of `run_with`, the stages it needs) on small subsets."""

    artifacts: tuple[str, ...] = ()  # report.json names its fast run always adds
    may_make: tuple[str, ...] = ()  # names it adds only when the data asks (e.g. a fallback over the budget)
    options: Mapping[str, Any] = field(default_factory=dict)  # small subsets: every step still runs, on less
    run_with: tuple[str, ...] = ()  # stages its run needs before it (their own fast options apply)
    heavy: bool = False  # slow on a large model (tens of MB of weights): in the `slow` set there
    models: tuple[str, ...] | None = None  # the shipped configs (models/<name>.yaml) to run on; None: all


@dataclass(frozen=True)
class Stage:
    """One stage: its module's name is its config key (`stages.<name>`) and its `--stages` name."""

    name: str
    run: str  # "module:function", run(ctx, options) -> list[Artifact]
    options: type[Strict]  # its `stages.<name>` options (edgeq.core.options)
    artifacts: int  # the most artifacts it writes (preflight's free-space estimate: model size x artifacts)
    # results section key -> "module:function" rendering it at report time, (section, artifacts, compatibility) -> md
    sections: Mapping[str, str] = field(default_factory=dict)
    # why it needs a trainable model: a Keras model, or a PyTorch model (state_dict + model.factory, a torch.export
    # program or a TorchScript file, fine-tuned with NNCF); skipped, with this, for an ONNX graph
    needs_trainable: str | None = None
    after_evaluate: str | None = None  # "module:function", f(ctx) once the artifacts are evaluated
    tests: StageTests = StageTests()


_SECTIONS = "edgeq.report.sections"

STAGES: tuple[Stage, ...] = (
    Stage("tflite_ptq", "edgeq.stages.tflite_ptq:run_stage", TflitePtqSpec, artifacts=2,
          sections={"tflite_ptq": f"{_SECTIONS}:tflite_translation_markdown"},
          after_evaluate="edgeq.stages.support.size_study:after_evaluate",  # opt-in: size_study
          tests=StageTests(artifacts=("fp32_tflite", "int8_tflite_ptq"), options={"representative_images": 50})),
    Stage("litert_quant", "edgeq.stages.litert_quant:run_stage", LitertQuantSpec, artifacts=3,
          sections={"litert_quant": f"{_SECTIONS}:litert_quant_markdown",
                    "tflite_fallback": f"{_SECTIONS}:tflite_fallback_markdown"},
          tests=StageTests(artifacts=("int8_tflite_lq",), options={"recipes": ["w8a8"], "calibration_images": 50},
                           run_with=("tflite_ptq",), heavy=True)),
    Stage("onnx_ptq", "edgeq.stages.onnx_ptq:run_stage", OnnxPtqSpec, artifacts=3,
          sections={"onnx_ptq": f"{_SECTIONS}:onnx_ptq_markdown"},
          tests=StageTests(artifacts=("fp32_onnx", "int8_onnx_ptq", "int8_onnx_ptq_adv", "int8_onnx_trt"),
                           options={"calibration_images": 30})),
    Stage("onnx_fallback", "edgeq.stages.onnx_fallback:run_stage", OnnxFallbackSpec, artifacts=1,
          sections={"onnx_fallback": f"{_SECTIONS}:onnx_fallback_markdown"},
          tests=StageTests(may_make=("int8_onnx_fallback",), run_with=("onnx_ptq",), heavy=True,
                           options={"holdout_images": 20, "candidates": 1, "max_float_nodes": 1})),
    # after onnx_ptq: int16_onnx needs its FP32 ONNX
    Stage("precision", "edgeq.stages.precision:run_stage", PrecisionSpec, artifacts=4,
          sections={"precision": f"{_SECTIONS}:precision_markdown"},
          tests=StageTests(artifacts=("fp16_tflite", "dynamic_tflite"), run_with=("tflite_ptq",),
                           options={"tflite": ["fp16", "dynamic"], "onnx": []})),
    # a bit width per weight layer under the accuracy budget, smallest file (after tflite_ptq: needs the FP32 .tflite)
    Stage("mixed_precision", "edgeq.stages.mixed_precision:run_stage", MixedPrecisionSpec, artifacts=1,
          sections={"mixed_precision": f"{_SECTIONS}:mixed_precision_markdown"},
          tests=StageTests(may_make=("mixed_tflite",), run_with=("tflite_ptq",), heavy=True, models=(),  # tests/stages/test_mixed_precision.py
                           options={"calibration_images": 20, "holdout_images": 20, "sensitivity_images": 20,
                                    "search_rounds": 1})),
    # NNCF + OpenVINO, judged beside edgeq's own routes (edgeq[openvino]); a route that cannot be made is recorded so
    Stage("nncf_ptq", "edgeq.stages.nncf_ptq:run_stage", NncfPtqSpec, artifacts=4,
          sections={"nncf_ptq": f"{_SECTIONS}:nncf_ptq_markdown"},
          tests=StageTests(may_make=("fp32_onnx", "fp32_openvino", "int8_openvino_nncf", "int8_onnx_nncf"),
                           options={"calibration_images": 30, "routes": ["openvino", "onnx"]},
                           models=("mobilenet_v2",))),
    Stage("qat", "edgeq.stages.qat:run_stage", QatSpec, artifacts=3,
          sections={"qat": f"{_SECTIONS}:qat_markdown"},
          needs_trainable="QAT fine-tunes a Keras model, or a PyTorch model given as its state_dict with "
                          "model.factory, a torch.export program (.pt2) or a TorchScript file (an ONNX graph holds "
                          "no trainable module): give one of those",
          tests=StageTests(artifacts=("int8_tflite_qat",), heavy=True,
                           options={"train_images": 256, "steps_per_epoch": 2, "batch_size": 32,
                                    "validation_images": 32, "calibration_images": 50})),
    Stage("comparison", "edgeq.stages.comparison:run_stage", ComparisonSpec, artifacts=1,
          sections={"comparison": f"{_SECTIONS}:comparison_markdown"},
          needs_trainable="the PTQ-vs-QAT comparison needs QAT",
          after_evaluate="edgeq.stages.comparison:after_evaluate",
          tests=StageTests(artifacts=("int8_tflite_ptq_adv",), heavy=True,
                           options={"bits": [8], "eval_images": 200, "calibration_images": 50})),
)


def stage(name: str) -> Stage:
    """The row of stage `name` (a KeyError for an unknown one: callers check names against `names()`)."""
    return {s.name: s for s in STAGES}[name]


def skip_reason(name: str, model) -> str | None:
    """Why stage `name` cannot run for the input model (the config's `model:` section), or None."""
    row = stage(name)
    if row.needs_trainable is None or not runs_from_onnx(model.format):
        return None
    if model.format == "pytorch":
        return None  # fine-tuned with NNCF (edgeq.methods.torch; a .pt2 or TorchScript file rebuilt as a module)
    return f"the input model is {model.format}; {row.needs_trainable}"


def names() -> list[str]:
    """Every stage's name, in run order."""
    return [s.name for s in STAGES]


# config validation (edgeq.core) reads the stages from here; read at each validation, so a row added later counts
use_stage_table(lambda: {s.name: s.options for s in STAGES})
