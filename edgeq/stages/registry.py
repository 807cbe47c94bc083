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
    "onnx_ptq": "edgeq.stages.onnx_ptq:run_stage",
    "onnx_fallback": "edgeq.stages.onnx_fallback:run_stage",
    "qat": "edgeq.stages.qat:run_stage",
    "comparison": "edgeq.stages.comparison:run_stage",
}
# stages that fine-tune the FP32 model, so need it trainable: Keras, or PyTorch given as state_dict + factory
# (not an ONNX graph, nor a TorchScript / torch.export file) -> why, for the skip message
KERAS_ONLY_STAGES = {
    "qat": "QAT fine-tunes a Keras model, or a PyTorch nn.Module given as its state_dict with model.factory (an "
           "ONNX graph, TorchScript file or torch.export program holds no trainable module): give one of those",
    "comparison": "the PTQ-vs-QAT comparison needs QAT",
}


def skip_reason(stage: str, model) -> str | None:
    """Why `stage` cannot run for the input `model` (config `model:` section: format, factory), or None."""
    from edgeq.core.formats import runs_from_onnx

    if stage not in KERAS_ONLY_STAGES or not runs_from_onnx(model.format):
        return None
    if model.format == "pytorch" and model.factory:
        return None  # the nn.Module is fine-tuned with NNCF (edgeq.methods.torch)
    return f"the input model is {model.format}; {KERAS_ONLY_STAGES[stage]}"


# stage name -> "module:function(ctx)" run after [evaluate], for stages that summarise evaluated artifacts
AFTER_EVALUATE: dict[str, str] = {"comparison": "edgeq.stages.comparison:after_evaluate"}
