"""The `tflite_ptq` stage: FP32 TFLite baseline + full-integer INT8 TFLite."""
from __future__ import annotations

from ..artifacts import Artifact
from ..config import TflitePtqSpec
from ..data import representative_dataset
from . import tflite_ptq


def run_stage(ctx, opts: TflitePtqSpec) -> list[Artifact]:
    model = ctx.keras_model()
    out = []
    parent = ctx.fp32.name
    if opts.export_fp32:
        def make_fp32(tmp):
            tmp.write_bytes(tflite_ptq.convert_fp32(model, name="fp32_tflite"))
        out.append(ctx.produce("fp32_tflite", "fp32.tflite", {}, make_fp32, fmt="tflite", precision="fp32",
                               method="none", stage="tflite_export", params={}, parent=parent))
    n = opts.representative_images
    if n > len(ctx.splits.calibration):
        from ..errors import DataError
        raise DataError(f"stages.tflite_ptq.representative_images is {n} but the calibration split has only "
                        f"{len(ctx.splits.calibration)} images (data.calibration_size)")
    params = opts.model_dump(exclude={"enabled", "export_fp32"})

    def make_int8(tmp):
        data = tflite_ptq.convert_int8(model, representative_dataset(ctx.splits.calibration, ctx.pre, n),
                                       input_type=opts.input_type, output_type=opts.output_type,
                                       per_channel=opts.per_channel, allow_float_ops=opts.allow_float_ops,
                                       name="int8_tflite_ptq", calibration_images=n)
        tmp.write_bytes(data)
        return {**tflite_ptq.tensor_summary(data), "float_ops": tflite_ptq.float_ops(data),
                "size_floor": tflite_ptq.param_floor_bytes(model)}

    out.append(ctx.produce("int8_tflite_ptq", "int8_ptq.tflite",
                           {"calibration": ctx.splits.calibration.fingerprint()}, make_int8,
                           fmt="tflite", precision="int8", method="ptq", stage="tflite_ptq", params=params,
                           parent=parent))
    return out
