"""The stages of a run, in order: name -> "module:function", imported on first use (heavy imports stay lazy).

Each stage function is `run_stage(ctx, options) -> list[Artifact]`; AFTER_EVALUATE hooks summarise
evaluated artifacts (e.g. the PTQ-vs-QAT table).
"""
from __future__ import annotations

from edgeq.core.formats import resolve  # noqa: F401  (re-exported: stages are named 'module:function')

# stage name -> "module:function"; each function is run_stage(ctx, options) -> list[Artifact]
STAGES: dict[str, str] = {
    "tflite_ptq": "edgeq.stages.tflite_ptq:run_stage",
    "litert_quant": "edgeq.stages.litert_quant:run_stage",
    "mixed_precision": "edgeq.stages.mixed_precision:run_stage",
    "onnx_ptq": "edgeq.stages.onnx_ptq:run_stage",
    "onnx_fallback": "edgeq.stages.onnx_fallback:run_stage",
    "qat": "edgeq.stages.qat:run_stage",
    "comparison": "edgeq.stages.comparison:run_stage",
}
# stages that need a trainable Keras model (not one translated from ONNX) -> why, for the skip message
KERAS_ONLY_STAGES = {
    "qat": "QAT fine-tunes a Keras model (for PyTorch, fine-tune with torchao's QAT and export the result)",
    "comparison": "the PTQ-vs-QAT comparison needs QAT",
}
# stage name -> "module:function(ctx)" run after [evaluate], for stages that summarise evaluated artifacts
AFTER_EVALUATE: dict[str, str] = {"comparison": "edgeq.stages.comparison:after_evaluate"}
