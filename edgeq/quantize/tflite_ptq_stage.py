"""The `tflite_ptq` stage: FP32 TFLite baseline + full-integer INT8 TFLite."""
from __future__ import annotations

from ..artifacts import Artifact
from ..config import TflitePtqSpec
from ..data import representative_dataset
from . import tflite_ptq
from .calibration import calibration_count


def run_stage(ctx, opts: TflitePtqSpec) -> list[Artifact]:
    """The FP32 TFLite export (`export_fp32`) and the full-integer INT8 TFLite of the run's Keras model."""
    model = ctx.keras_model()
    out = []
    parent = ctx.fp32.name
    if opts.export_fp32:
        def make_fp32(tmp):
            tmp.write_bytes(tflite_ptq.convert_fp32(model, name="fp32_tflite"))
        out.append(ctx.produce("fp32_tflite", "fp32.tflite", {}, make_fp32, fmt="tflite", precision="fp32",
                               method="none", stage="tflite_export", params={}, parent=parent))
    n = calibration_count(ctx.splits.calibration, opts.representative_images,
                          "stages.tflite_ptq.representative_images")
    params = opts.model_dump(exclude={"enabled", "export_fp32"})

    def make_int8(tmp):
        data = tflite_ptq.convert_int8(model, representative_dataset(ctx.splits.calibration, ctx.pre, n),
                                       input_type=opts.input_type, output_type=opts.output_type,
                                       per_channel=opts.per_channel, allow_float_ops=opts.allow_float_ops,
                                       name="int8_tflite_ptq", calibration_images=n)
        tmp.write_bytes(data)
        return tflite_ptq.int8_notes(data, model)

    out.append(ctx.produce("int8_tflite_ptq", "int8_ptq.tflite",
                           {"calibration": ctx.splits.calibration.fingerprint()}, make_int8,
                           fmt="tflite", precision="int8", method="ptq", stage="tflite_ptq", params=params,
                           parent=parent))
    return out
