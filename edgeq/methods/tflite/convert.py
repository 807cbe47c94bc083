"""TFLite post-training quantisation: full-integer INT8 with a representative dataset; FP16, dynamic-range INT8
and 16x8 variants (stages.precision) beside it.

A model is never shipped silently hybrid: when full-integer is asked and any tensor stays float, the
stage fails and names the ops (unless `allow_float_ops` is set).
"""
from __future__ import annotations

import numpy as np

from edgeq.core.errors import QuantizationError
from edgeq.core.progress import spinner, track
from edgeq.core.tfcompat import quiet_stderr, tf
from edgeq.measure.predictors import load_tflite_interpreter
from edgeq.methods.keras.fakequant import kernel_of


def _converter(model):
    """A TFLite converter over one trace of the model's inference call, frozen directly.

    `TFLiteConverter.from_keras_model` (and `from_concrete_functions` given the model) first saves the model as a
    SavedModel, for which tf_keras traces every layer's call functions (hundreds of concrete functions for a
    MobileNetV2, more for a tfmot QAT model) and loads it back: 90-95 % of a conversion (benchmarks/
    export_time.py, docs/performance.md). The converter needs only the whole model's inference function: traced
    once here and frozen without the SavedModel round trip. Same ops, same outputs; the input is named "input"."""
    t = tf()
    spec = t.TensorSpec((None, *model.input_shape[1:]), model.inputs[0].dtype, name="input")
    call = t.function(lambda x: model(x, training=False))
    conv = t.lite.TFLiteConverter.from_concrete_functions([call.get_concrete_function(spec)], model)
    conv.experimental_lower_to_saved_model = False
    return conv


def _convert(conv, what: str, name: str) -> bytes:
    import warnings

    try:
        with spinner(f"convert {name} (TFLite converter)"), quiet_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = conv.convert()
    except Exception as e:  # the converter raises ConverterError, RuntimeError, ValueError...
        lines = [ln.strip() for ln in str(e).splitlines() if "error" in ln.lower()] or [str(e).strip()]
        raise QuantizationError(f"TFLite converter failed on {what}: {lines[0][:400]}") from None
    return with_signature(data)


def with_signature(data: bytes, key: str = "serving_default") -> bytes:
    """The model with a signature (input "input", output "output_0") if it has none: a converter not lowered
    through a SavedModel writes none, and LiteRT's signature runner and litert-quantizer need one."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.convert_bytearray_to_object(bytearray(data))
    if model.signatureDefs:
        return data
    sub = model.subgraphs[0]

    def tmap(name: str, index: int):
        t = schema.TensorMapT()
        t.name, t.tensorIndex = name, int(index)
        return t

    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = key, 0
    sig.inputs = [tmap("input" if len(sub.inputs) == 1 else f"input_{i}", ix) for i, ix in enumerate(sub.inputs)]
    sig.outputs = [tmap(f"output_{i}", ix) for i, ix in enumerate(sub.outputs)]
    model.signatureDefs = [sig]
    return bytes(fu.convert_object_to_bytearray(model))


def convert_fp32(model, *, name: str = "fp32_tflite") -> bytes:
    return _convert(_converter(model), "the FP32 export", name)


def _tracked(representative_dataset, images: int | None, name: str):
    """The representative dataset with a progress display over its images (the converter's calibration)."""
    return lambda: track(representative_dataset(), images, f"calibrate {name} (representative images)", "images")


def convert_int8(model, representative_dataset, *, input_type: str = "int8", output_type: str = "int8",
                 per_channel: bool = True, allow_float_ops: bool = False, name: str = "int8_tflite",
                 calibration_images: int | None = None) -> bytes:
    """Full-integer INT8 TFLite; `name` labels the progress display, `calibration_images` sizes its bar."""
    t = tf()
    conv = _converter(model)
    conv.optimizations = [t.lite.Optimize.DEFAULT]
    conv.representative_dataset = _tracked(representative_dataset, calibration_images, name)
    if allow_float_ops:
        conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8, t.lite.OpsSet.TFLITE_BUILTINS]
    else:
        conv.target_spec.supported_ops = [t.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = getattr(t, input_type)  # int8 | uint8 | float32: tf dtype names
    conv.inference_output_type = getattr(t, output_type)
    conv._experimental_disable_per_channel = not per_channel
    data = _convert(conv, "the INT8 full-integer quantisation", name)
    if not allow_float_ops:
        floats = float_ops(data, allow_io=input_type == "float32" or output_type == "float32")
        if floats:
            raise QuantizationError("INT8 model is not fully integer; float tensors remain at ops: "
                                    + ", ".join(floats[:20]) + " — exclude or replace these layers, "
                                    "or set stages.tflite_ptq.allow_float_ops: true for a hybrid model")
    return data


# ------------------------------------------------------------------ other precisions (stages.precision)
# what LiteRT's CPU kernels make of each precision; measured on x86-64 with LiteRT 2.3 (docs/precision.md)
KERNEL_NOTES = {
    "fp16": "XNNPACK dequantizes FP16 weights to FP32 at load: FP32 arithmetic and speed on CPUs, half the file; "
            "FP16 arithmetic needs a GPU delegate or an Armv8.2+ core with FP16 support",
    "int8-dynamic": "hybrid kernels: int8 weights, activations quantized per op at run time (float between ops); "
                    "its speed against FP32 and full INT8 depends on the model: measure it",
    "int16x8": "reference (no XNNPACK int16x8 kernels): slow on CPUs",
}


def convert_fp16(model, *, name: str = "fp16_tflite") -> bytes:
    """FP16 weights, float32 I/O and arithmetic where the runtime dequantizes (supported_types=[float16])."""
    from edgeq.core.tfcompat import tf

    t = tf()
    conv = _converter(model)
    conv.optimizations = [t.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [t.float16]
    return _convert(conv, "the FP16 conversion", name)


def convert_dynamic(model, *, name: str = "dynamic_tflite") -> bytes:
    """Dynamic-range INT8: int8 weights, float activations (Optimize.DEFAULT, no representative dataset)."""
    from edgeq.core.tfcompat import tf

    conv = _converter(model)
    conv.optimizations = [tf().lite.Optimize.DEFAULT]
    return _convert(conv, "the dynamic-range INT8 quantisation", name)


def convert_int16x8(model, representative_dataset, *, name: str = "int16x8_tflite",
                    calibration_images: int | None = None) -> bytes:
    """16x8: int16 activations, int8 weights, float32 I/O, calibrated like the full-integer INT8 model."""
    from edgeq.core.tfcompat import tf

    t = tf()
    conv = _converter(model)
    conv.optimizations = [t.lite.Optimize.DEFAULT]
    conv.representative_dataset = _tracked(representative_dataset, calibration_images, name)
    conv.target_spec.supported_ops = [t.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    return _convert(conv, "the 16x8 quantisation (int16 activations, int8 weights)", name)


def tensor_summary(data: bytes) -> dict:
    """Counts of tensor dtypes and op types in a .tflite model."""
    interp, _ = load_tflite_interpreter(content=data)
    dtypes: dict[str, int] = {}
    for t in interp.get_tensor_details():
        k = np.dtype(t["dtype"]).name
        dtypes[k] = dtypes.get(k, 0) + 1
    ops: dict[str, int] = {}
    for op in interp._get_ops_details():
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    return {"tensor_dtypes": dtypes, "ops": ops}


def float_ops(data: bytes, allow_io: bool = False) -> list[str]:
    """'OP_NAME#index(tensor)' for every op that reads or writes a float32 tensor."""
    interp, _ = load_tflite_interpreter(content=data)
    details = {t["index"]: t for t in interp.get_tensor_details()}
    io = set()
    if allow_io:
        io = {d["index"] for d in interp.get_input_details()} | {d["index"] for d in interp.get_output_details()}
    bad = []
    for op in interp._get_ops_details():
        for idx in list(op["inputs"]) + list(op["outputs"]):
            if idx < 0 or idx in io:
                continue
            t = details.get(idx)
            if t is not None and np.dtype(t["dtype"]) == np.float32:
                bad.append(f"{op['op_name']}#{op['index']}({t['name']})")
                break
    # float graph inputs/outputs with no op touching them are caught too
    for d in interp.get_input_details() + interp.get_output_details():
        if d["index"] not in io and np.dtype(d["dtype"]) == np.float32 and not any(d["name"] in b for b in bad):
            bad.append(f"IO({d['name']})")
    return bad


def param_floor_bytes(model) -> dict:
    """Lower bound of an INT8 model's size: kernel weights x 1 byte + one int32 bias per output
    channel of every conv/dense layer x 4 bytes (batch norm folds into those)."""
    weights = biases = 0
    for wl in filter(None, map(kernel_of, leaf_layers(model))):
        shape = wl.kernel.shape
        weights += int(np.prod(shape))
        biases += int(shape[-1] * (shape[-2] if wl.reduce_axes == (0, 1) else 1))  # depthwise: C_in x multiplier
    return {"weights": weights, "biases": biases, "floor_bytes": weights + 4 * biases}


def int8_notes(data: bytes, model) -> dict:
    """The notes every INT8 TFLite artifact records: tensor dtypes and ops, float ops, the size floor."""
    return {**tensor_summary(data), "float_ops": float_ops(data), "size_floor": param_floor_bytes(model)}


def leaf_layers(model):
    """Every non-container layer of a Keras model, nested models flattened."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from leaf_layers(layer)
        else:
            yield layer
