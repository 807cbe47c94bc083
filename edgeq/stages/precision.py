"""The `precision` stage: the precisions beside INT8 as real artifacts, evaluated, paired against FP32 and timed
like every other artifact.

- `fp16_tflite`: FP16 weights (converter supported_types=[float16]);
- `dynamic_tflite`: dynamic-range INT8 (int8 weights, float activations; no representative dataset);
- `int16x8_tflite`: int16 activations, int8 weights, calibrated on the INT8 TFLite's representative images;
- `int16_onnx`: ONNX Runtime static QDQ with int16 activations and int8 weights, from the run's FP32 ONNX.

Each artifact's notes say what the CPU runtimes make of its precision (`kernels`); a precision they run on
reference kernels is marked `slow_kernels`, and what-to-ship (edgeq.report.verdicts.ship) passes it over unless
it is the only one within the budget. A variant that cannot be made is recorded as "not made: <why>" in the
report's `precision` section; the others stand.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from edgeq.core.artifacts import Artifact
from edgeq.core.errors import QuantizationError
from edgeq.core.options import PrecisionSpec
from edgeq.methods.tflite import convert as tflite_convert

# variant -> (artifact name, file name, manifest precision, manifest method)
TFLITE_VARIANTS = {
    "fp16": ("fp16_tflite", "fp16.tflite", "fp16", "cast"),
    "dynamic": ("dynamic_tflite", "dynamic.tflite", "int8-dynamic", "ptq_dynamic"),
    "int16x8": ("int16x8_tflite", "int16x8.tflite", "int16x8", "ptq"),
}
ONNX_VARIANTS = {"int16": ("int16_onnx", "int16_qdq.onnx", "int16", "ptq")}
# precisions CPU runtimes run on reference (or Q/DQ-around-float) kernels: what-to-ship passes them over on a CPU
SLOW_ON_CPU = {
    "int16x8": "LiteRT has no XNNPACK int16x8 kernels: reference kernels, tens of times slower than FP32 on "
               "CPUs (docs/precision.md)",
    "int16": "ONNX Runtime has no int16 convolution kernels on CPUs: each op runs in float between a "
             "DequantizeLinear and a QuantizeLinear",
}
ONNX_INT16_KERNELS = ("Q/DQ around float ops (ONNX Runtime has no int16 Conv/MatMul kernels on CPUs): slow on "
                      "CPUs; for NPUs and runtimes with 16-bit activations (e.g. QNN HTP)")


def run_stage(ctx, opts: PrecisionSpec) -> list[Artifact]:
    """The TFLite variants in `opts.tflite` and the ONNX variants in `opts.onnx`; the not-made ones say why."""
    out: list[Artifact] = []
    not_made: dict[str, str] = {}
    n = ctx.calibration(opts.representative_images or ctx.cfg.stages.tflite_ptq.representative_images,
                        "stages.precision.representative_images").n
    for variant in opts.tflite:
        name = TFLITE_VARIANTS[variant][0]
        try:
            out.append(_tflite_variant(ctx, variant, n, opts.eval_images.get(variant)))
        except QuantizationError as e:
            not_made[name] = str(e)
            ctx.log(f"  - {name}: not made: {e}")
    for variant in opts.onnx:
        name = ONNX_VARIANTS[variant][0]
        try:
            out.append(_onnx_int16(ctx, n, opts.eval_images.get("int16")))
        except QuantizationError as e:
            not_made[name] = str(e)
            ctx.log(f"  - {name}: not made: {e}")
    section = {"made": [a.name for a in out], "not_made": not_made, "calibration_images": n,
               "eval_images": {a.name: a.params["eval_images"] for a in out  # those a subset is drawn for
                               if a.params.get("eval_images", len(ctx.splits.eval)) < len(ctx.splits.eval)},
               "kernels": {a.name: a.notes.get("kernels") for a in out}}
    ctx.results.set_section("precision", section)
    return out


def _kernel_notes(precision_key: str, kernels: str) -> dict:
    notes = {"kernels": kernels}
    if precision_key in SLOW_ON_CPU:
        notes["slow_kernels"] = SLOW_ON_CPU[precision_key]
    return notes


def _eval_param(eval_images: int | None) -> dict:
    """The artifact's `eval_images` param (read by measure.evaluate): a seeded subset of the evaluation images."""
    return {} if eval_images is None else {"eval_images": eval_images}


def _tflite_variant(ctx, variant: str, n: int, eval_images: int | None = None) -> Artifact:
    name, filename, precision, method = TFLITE_VARIANTS[variant]
    calibrated = variant == "int16x8"
    cal = ctx.calibration(n, "stages.precision.representative_images")

    def make(tmp: Path) -> dict:
        model = ctx.keras_model()
        if variant == "fp16":
            data = tflite_convert.convert_fp16(model, name=name)
        elif variant == "dynamic":
            data = tflite_convert.convert_dynamic(model, name=name)
        else:
            data = tflite_convert.convert_int16x8(model, cal.one_at_a_time(),
                                                  name=name, calibration_images=n)
        tmp.write_bytes(data)
        return {**tflite_convert.tensor_summary(data),
                **_kernel_notes(variant, tflite_convert.KERNEL_NOTES[precision])}

    key = {"variant": variant, **(cal.key if calibrated else {})}
    params = {"variant": variant, **({"representative_images": n} if calibrated else {}),
              **(_eval_param(eval_images) if variant in SLOW_ON_CPU else {})}
    return ctx.produce(name, filename, key, make, fmt="tflite", precision=precision, method=method,
                       stage="precision", params=params, parent=ctx.fp32.name)


def _fp32_onnx(ctx):
    """The run's FP32 ONNX (its input, or stages.onnx_ptq's export) and its input; QuantizationError if none."""
    from edgeq.loaders.onnx import OnnxInput, read_onnx_input
    from edgeq.methods.onnx.from_keras import INPUT_NAME

    hwc = tuple(ctx.cfg.model.input_shape)
    if ctx.is_onnx_input:
        return ctx.fp32, read_onnx_input(ctx.fp32.abspath(ctx.run_dir), hwc, where=ctx.cfg.model.path)
    fp32 = ctx.manifest.artifacts.get("fp32_onnx")
    if not ctx.cfg.stages.onnx_ptq.enabled or fp32 is None:
        raise QuantizationError("needs the FP32 ONNX export of the Keras model: enable stages.onnx_ptq, or drop "
                                "int16 from stages.precision.onnx")
    return fp32, OnnxInput(INPUT_NAME, [None, hwc[2], hwc[0], hwc[1]], "NCHW", None)


def _onnx_int16(ctx, n: int, eval_images: int | None = None) -> Artifact:
    """int16_onnx: ORT quantize_static, int16 activations (symmetric) and per-channel int8 weights, QDQ. ORT raises
    the model to opset 21 (native int16 Q/DQ); the model is opened in ORT here, so one it cannot run is not made."""
    from edgeq.methods.onnx.ort_int8 import Int8Scheme, host_op_types, prepare, quantize_onnx

    name, filename, precision, method = ONNX_VARIANTS["int16"]
    fp32, info = _fp32_onnx(ctx)
    scheme = Int8Scheme("int16", "int8", True, False, True, "qdq", True,
                        "A16W8: int16 activations with zero-point 0, per-channel int8 weights, QDQ (opset 21)")
    cal = ctx.calibration(n, "stages.precision.representative_images")
    images = cal.array()

    def make(tmp: Path) -> dict:
        import onnx

        with tempfile.TemporaryDirectory(dir=ctx.artifact_dir(), prefix=".precision.") as work:
            prepared = prepare(fp32.abspath(ctx.run_dir), info, tuple(ctx.cfg.model.input_shape), Path(work), name)
            notes = quantize_onnx(prepared, tmp, scheme, images, input_name=info.name, nchw=info.layout == "NCHW",
                                  batch=info.batch, calibration_method="minmax", exclude_nodes=[],
                                  op_types=host_op_types("qdq"), name=name)
        model = onnx.load(str(tmp))
        notes["opset"] = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        notes["q_types"] = _q_types(model)
        _check_runs(tmp)
        return {**notes, **_kernel_notes("int16", ONNX_INT16_KERNELS)}

    key = {**cal.key, "scheme": scheme.to_dict()}
    return ctx.produce(name, filename, key, make, fmt="onnx", precision=precision, method=method,
                       stage="precision", params={"scheme": scheme.to_dict(), "calibration_images": n,
                                                  **_eval_param(eval_images)},
                       parent=fp32.name)


def _q_types(model) -> dict[str, int]:
    """Element types of the QuantizeLinear outputs (activations) and of the weights DequantizeLinear reads."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    types: dict[str, int] = {}

    def count(key: str) -> None:
        types[key] = types.get(key, 0) + 1

    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            count("weights:" + onnx.helper.tensor_dtype_to_np_dtype(inits[node.input[0]].data_type).name)
        elif node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits:
            count("activations:" + onnx.helper.tensor_dtype_to_np_dtype(inits[node.input[2]].data_type).name)
    return types


def _check_runs(path: Path) -> None:
    """QuantizationError naming ORT's refusal when this ONNX Runtime cannot open the model."""
    import onnxruntime as ort

    from edgeq.core.errors import first_line

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises Fail/InvalidGraph/NotImplemented...
        raise QuantizationError(f"ONNX Runtime {ort.__version__} cannot run the int16 QDQ model: "
                                f"{first_line(e, 300)}") from None
