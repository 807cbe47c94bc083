"""The run's FP32 ONNX, shared by every stage that quantizes ONNX (onnx_ptq, nncf_ptq, precision): the ONNX input as
given, or the Keras model exported once as the artifact `fp32_onnx` (the same key, so whichever stage runs first makes
it and the others reuse it)."""
from __future__ import annotations

from pathlib import Path

from edgeq.core.artifacts import Artifact
from edgeq.loaders.onnx import OnnxInput, read_onnx_input
from edgeq.methods.onnx.from_keras import INPUT_NAME, keras_to_onnx, max_abs_diff_vs_keras

EXPORT_NOTES = ("exporter", "opset", "input_layout", "onnx_checker", "max_abs_diff_vs_keras", "transposes",
                "identity_reshapes_removed")


def fp32_onnx(ctx, opset: int) -> tuple[Artifact, OnnxInput, dict]:
    """The FP32 ONNX to quantize, its input, and the section's account of it: the run's ONNX input as given,
    or the Keras model exported (`fp32_onnx`) and checked against Keras on calibration images."""
    hwc = tuple(ctx.cfg.model.input_shape)
    if ctx.is_onnx_input:
        info = read_onnx_input(ctx.fp32.abspath(ctx.run_dir), hwc, where=ctx.cfg.model.path)
        return ctx.fp32, info, {"input": {"source": str(ctx.cfg.model.path), "input": info.name, "dims": info.dims,
                                          "layout": info.layout, "exporter": ctx.fp32.notes.get("exporter")}}
    model = ctx.keras_model()
    check_x = ctx.pre(ctx.splits.calibration.images[:64])

    def make_fp32(tmp: Path) -> dict:
        notes = keras_to_onnx(model, tmp, opset, name="fp32_onnx")
        notes["max_abs_diff_vs_keras"] = max_abs_diff_vs_keras(model, tmp, check_x)
        notes["checked_on"] = f"{len(check_x)} calibration images"
        return notes

    fp32 = ctx.produce("fp32_onnx", "fp32.onnx", {"opset": opset}, make_fp32, fmt="onnx", precision="fp32",
                       method="none", stage="onnx_export", params={"opset": opset}, parent=ctx.fp32.name)
    info = OnnxInput(INPUT_NAME, [None, hwc[2], hwc[0], hwc[1]], "NCHW", None)
    return fp32, info, {"export": {k: fp32.notes.get(k) for k in EXPORT_NOTES}}
