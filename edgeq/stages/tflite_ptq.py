"""The `tflite_ptq` stage: FP32 TFLite baseline + full-integer INT8 TFLite.

A Keras input converts directly; an ONNX input (given, or exported from PyTorch) is first translated to a
Keras model by onnx2tf (onnx_to_tf), and its FP32 .tflite is checked against the FP32 ONNX before anything
is quantised from it."""
from __future__ import annotations

from edgeq.core.artifacts import Artifact
from edgeq.core.config import TflitePtqSpec
from edgeq.core.errors import QuantizationError
from edgeq.methods.tflite import convert as tflite_ptq
from edgeq.methods.onnx.to_tf import fidelity, param_floor_bytes

FIDELITY_IMAGES = 256  # calibration images the FP32 .tflite of an ONNX input is checked on


def run_stage(ctx, opts: TflitePtqSpec) -> list[Artifact]:
    """The FP32 TFLite export (`export_fp32`; always for ONNX input) and the full-integer INT8 TFLite."""
    out = []
    parent = ctx.fp32.name
    onnx_input = ctx.is_onnx_input
    if opts.export_fp32 or onnx_input:
        def make_fp32(tmp):
            tmp.write_bytes(tflite_ptq.convert_fp32(ctx.keras_model(), name="fp32_tflite"))
            return _translation_notes(ctx, tmp, opts) if onnx_input else {}
        fp32_params = {"max_translation_error": opts.max_translation_error} if onnx_input else {}
        out.append(ctx.produce("fp32_tflite", "fp32.tflite", {}, make_fp32, fmt="tflite", precision="fp32",
                               method="none", stage="tflite_export", params=fp32_params, parent=parent))
    cal = ctx.calibration(opts.representative_images, "stages.tflite_ptq.representative_images")
    params = opts.model_dump(exclude={"enabled", "export_fp32", "max_translation_error"})

    def make_int8(tmp):
        model = ctx.keras_model()
        data = tflite_ptq.convert_int8(model, cal.one_at_a_time(),
                                       input_type=opts.input_type, output_type=opts.output_type,
                                       per_channel=opts.per_channel, allow_float_ops=opts.allow_float_ops,
                                       name="int8_tflite_ptq", calibration_images=cal.n)
        tmp.write_bytes(data)
        notes = tflite_ptq.int8_notes(data, model)
        if onnx_input:
            notes["size_floor"] = param_floor_bytes(ctx.fp32.abspath(ctx.run_dir))
        return notes

    out.append(ctx.produce("int8_tflite_ptq", "int8_ptq.tflite",
                           {"calibration": cal.split.fingerprint()}, make_int8,
                           fmt="tflite", precision="int8", method="ptq", stage="tflite_ptq", params=params,
                           parent=parent))
    if onnx_input:
        section = {"source": ctx.fp32.notes if ctx.fp32.stage == "import" and ctx.fp32.notes.get("source_format")
                   else None, "translation": out[0].notes.get("translation"), "vs_onnx": out[0].notes.get("vs_onnx")}
        ctx.results.set_section("tflite_ptq", section)
    return out


def _translation_notes(ctx, tmp, opts: TflitePtqSpec) -> dict:
    """The FP32 .tflite of an ONNX input against the FP32 ONNX on calibration images; a QuantizationError if it
    does not match."""
    vs = fidelity(ctx.fp32.abspath(ctx.run_dir), tmp, ctx.pre(ctx.splits.calibration.images[:FIDELITY_IMAGES]))
    if vs["relative"] > opts.max_translation_error:
        raise QuantizationError(
            f"{ctx.cfg.model.path}: the TFLite translation does not reproduce the ONNX model: max |Δlogit| "
            f"{vs['max_abs_logit_diff']:.3g} ({vs['relative']:.2%} of the largest logit, limit "
            f"{opts.max_translation_error:.2%}), top-1 agreement {vs['top1_agreement']:.1%} on {vs['images']} "
            "calibration images; report the model to onnx2tf, or raise stages.tflite_ptq.max_translation_error "
            "if that difference is acceptable")
    return {"translation": ctx.translation, "vs_onnx": vs}
