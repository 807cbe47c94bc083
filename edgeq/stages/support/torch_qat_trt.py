"""The `qat` stage's TensorRT artifact for a PyTorch model: `int8_onnx_qat_trt`, NNCF QAT in the scheme TensorRT's
explicit quantization takes (int8 activations with zero-point 0, int8 per-channel weights, float biases;
`edgeq.methods.torch.qat.SCHEMES`), fine-tuned like `int8_onnx_qat` and exported as QDQ ONNX. It pairs with
onnx_ptq's `int8_onnx_trt` (PTQ, same scheme) in the PTQ-vs-QAT tests; its TensorRT readiness is checked after
the stages, as for every INT8 ONNX (`edgeq.targets.offline_checks`: the artifact's "tensorrt" compatibility record).

Whether it is made (`tensorrt_wanted`): `stages.qat.tensorrt_artifact`; unset, it follows the other TensorRT
artifact, `stages.onnx_ptq.tensorrt_artifact`, when onnx_ptq runs: the QAT artifact is made exactly when the PTQ
one it is compared with is.
"""
from __future__ import annotations

from pathlib import Path

from edgeq.core.artifacts import Artifact
from edgeq.methods.torch import qat as torch_qat

NAME, FILENAME = "int8_onnx_qat_trt", "int8_qat_trt.onnx"
# as onnx_ptq's int8_onnx_trt: evaluated with ORT running its Q/DQ nodes as written (the int8 arithmetic TensorRT
# performs), not timed on CPUs
NOTES = {"graph_optimization": "basic",
         "graph_optimization_why": "TensorRT artifact: ORT runs its Q/DQ nodes as written (basic level), the int8 "
                                   "arithmetic TensorRT performs",
         "only_for": {"kinds": ["jetson"], "why": "built for TensorRT (Jetson target); ONNX Runtime on a CPU is not "
                                                  "where it runs, see int8_onnx_qat for CPUs"}}
PARAMS = {"weights": "int8 per-channel symmetric (NNCF)",
          "activations": "int8 per-tensor symmetric, zero-point 0 (NNCF PERFORMANCE preset, signed; range init + "
                         "fine-tune)",
          "biases": "float (TensorRT takes int8 Q/DQ only)", "scheme": "tensorrt"}
KERAS_NOTE = (f"{NAME} not made: the TensorRT-scheme QAT ONNX is made for PyTorch models only (NNCF's PyTorch QAT); "
              "a Keras model's int8_onnx_qat is ONNX Runtime's host scheme. For TensorRT use onnx_ptq's int8_onnx_trt "
              "(PTQ), or give the model as PyTorch")


def tensorrt_wanted(cfg) -> tuple[bool, str]:
    """(whether the run makes int8_onnx_qat_trt, why), from stages.qat.tensorrt_artifact (see the module)."""
    q, o = cfg.stages.qat.tensorrt_artifact, cfg.stages.onnx_ptq
    if q is not None:
        return q, f"stages.qat.tensorrt_artifact: {str(q).lower()}"
    if not o.enabled:
        return False, "stages.qat.tensorrt_artifact unset and stages.onnx_ptq off (no int8_onnx_trt to compare with)"
    return o.tensorrt_artifact, ("stages.qat.tensorrt_artifact unset: follows stages.onnx_ptq.tensorrt_artifact "
                                 f"({str(o.tensorrt_artifact).lower()})")


def make_tensorrt_qat(ctx, fine_tuned, fine_tune_notes, key: dict, params: dict, hwc: tuple, opset: int,
                      parent: str) -> Artifact:
    """int8_onnx_qat_trt from `fine_tuned()` (the TensorRT-scheme QatResult; called only when not reused);
    `fine_tune_notes(result)`: the fine-tune's notes, as int8_onnx_qat records them."""

    def make(tmp: Path) -> dict:
        r = fine_tuned()
        return {**fine_tune_notes(r), **torch_qat.export_qdq_onnx(r.model, tmp, hwc, opset, int32_biases=False),
                "scheme": torch_qat.SCHEMES["tensorrt"], **NOTES}

    return ctx.produce(NAME, FILENAME, {**key, "scheme": "tensorrt"}, make, fmt="onnx", precision="int8",
                       method="qat", stage="qat", params={**params, **PARAMS}, parent=parent)


def markdown_lines(a: Artifact | None, why: str) -> list[str]:
    """The qat section's lines on int8_onnx_qat_trt: how it was made and what ORT makes of it, or why not."""
    if a is None:
        return [f"- {NAME}: not made ({why})"]
    n, k = a.notes, a.notes.get("ort_kernels") or {}
    q = n.get("quantizer") or {}
    lines = [f"- {NAME} ({why}): TensorRT scheme, {PARAMS['activations']}; weights {PARAMS['weights']}; biases "
             f"float; {q.get('batch_norms_folded', 0)} batch norms folded; fine-tuned {n.get('epochs_run')} epoch(s), "
             f"validation top-1 {n.get('validation_top1_before_fine_tune')} before, "
             f"{n.get('validation_top1_after_fine_tune')} after; TensorRT readiness: its \"tensorrt\" compatibility "
             "record"]
    if k:
        lines.append(f"- {NAME} in ORT (optimisation {k['graph_optimization']}): {k['integer_convs']} integer / "
                     f"{k['float_convs']} float Conv, {k['integer_matmuls']} integer / {k['float_matmuls']} float "
                     "MatMul/Gemm (ONNX Runtime's CPU kernels, for the record: this model is made for TensorRT); "
                     f"evaluated at ORT level '{n.get('graph_optimization')}', not timed on this CPU")
    return lines
