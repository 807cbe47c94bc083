"""Is a QDQ ONNX model ready for TensorRT explicit (INT8) quantization? Every violation names its node.

TensorRT builds an INT8 engine from an ONNX graph whose Quantize/DequantizeLinear nodes say where int8 is
wanted. It takes int8 Q/DQ with zero-point 0 only, weights quantized per output channel, and fuses a Q/DQ
pair into a neighbouring layer only for the layer types below; a residual Add runs in int8 only when both of
its inputs come through DequantizeLinear. Used by the onnx_ptq stage and by the Jetson target.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .base import Compatibility

# op type -> index of the weight input and the output-channel axis of that weight (None: no weight input)
INT8_COMPUTE_OPS: dict[str, tuple[int, int] | None] = {
    "Conv": (1, 0),  # W: [C_out, C_in/g, kH, kW]
    "ConvTranspose": (1, 1),  # W: [C_in, C_out/g, kH, kW]
    "MatMul": (1, 1),  # W: [K, N]
    "Gemm": (1, 0),  # W: [N, K] with transB=1; [K, N] (axis 1) without, see _weight_axis
}
# layer types TensorRT can run in INT8 or carry int8 data through (shape ops, pooling, activations fused
# into the producing conv). An op consuming a DequantizeLinear output that is not here runs in float
# behind a forced reformat, which defeats the Q/DQ placement.
INT8_CAPABLE_OPS = frozenset({
    *INT8_COMPUTE_OPS, "Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Relu", "Clip", "LeakyRelu", "Pad", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity",
    "Slice", "Resize", "QuantizeLinear",
})
# quantized operators that only ONNX Runtime executes (QOperator format); TensorRT cannot parse them
ORT_ONLY_QUANT_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearAveragePool", "QLinearGlobalAveragePool",
    "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax", "QGemm", "ConvInteger",
    "MatMulInteger", "DynamicQuantizeLinear", "QAttention", "QEmbedLayerNormalization",
})
_INT8 = 3  # onnx.TensorProto.INT8
_UINT8 = 2


def check_tensorrt_qdq(onnx_path: Path, artifact: str | None = None) -> Compatibility:
    """Check a QDQ ONNX file against TensorRT's explicit-quantization rules; `problems` lists each violation."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    onnx_path = Path(onnx_path)
    try:
        model = onnx.load(str(onnx_path))
    except Exception as e:  # protobuf raises DecodeError and others for a file that is not ONNX
        raise ModelError(f"{onnx_path}: not a readable ONNX model ({e.__class__.__name__})") from None
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for n in g.node:  # Constant nodes hold weights too
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            inits[n.output[0]] = n.attribute[0].t
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def arr(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def q_output_type(q) -> int:
        for a in q.attribute:
            if a.name == "output_dtype" and a.i:
                return a.i
        zp = q.input[2] if len(q.input) > 2 and q.input[2] else None
        if zp is None:
            return _UINT8  # the ONNX default when there is no zero-point
        return inits[zp].data_type if zp in inits else 0

    def dq_input_type(dq) -> int:
        x = dq.input[0]
        if x in inits:
            return inits[x].data_type
        p = producer.get(x)
        return q_output_type(p) if p is not None and p.op_type == "QuantizeLinear" else 0

    def is_dq_output(t: str) -> bool:
        p = producer.get(t)
        return p is not None and p.op_type == "DequantizeLinear"

    problems: list[str] = []
    type_name = onnx.TensorProto.DataType.Name
    n_q = n_dq = n_int8_compute = n_float_compute = 0
    for n in g.node:
        label = f"{n.op_type} '{n.name or n.output[0]}'"
        if n.op_type in ORT_ONLY_QUANT_OPS or n.op_type.startswith("QLinear"):
            problems.append(f"{label}: ONNX Runtime-only quantized operator; TensorRT needs the QDQ format "
                            "(stages.onnx_ptq.quant_format: qdq)")
            continue
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            is_q = n.op_type == "QuantizeLinear"
            n_q += is_q
            n_dq += not is_q
            t = q_output_type(n) if is_q else dq_input_type(n)
            if t != _INT8:
                what = type_name(t) if t else "unknown"
                hint = " (a quantized bias: keep biases float)" if t == onnx.TensorProto.INT32 else ""
                problems.append(f"{label}: {what} quantization{hint}; TensorRT takes int8 Q/DQ only")
            zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
            if zp is not None and zp in inits and np.any(arr(zp) != 0):
                problems.append(f"{label}: zero-point is not 0 (asymmetric); TensorRT needs symmetric int8")
            scale = arr(n.input[1])
            if scale is not None and np.any(scale <= 0):
                problems.append(f"{label}: scale <= 0")
            if is_q:
                outs = consumers.get(n.output[0], [])
                if not outs or any(c.op_type != "DequantizeLinear" for c in outs):
                    problems.append(f"{label}: not followed by DequantizeLinear only; TensorRT needs Q/DQ pairs")
            continue
        if n.op_type in INT8_COMPUTE_OPS:
            w_idx, axis = _weight_axis(n)
            weight = n.input[w_idx] if len(n.input) > w_idx else ""
            if n.op_type == "MatMul" and weight not in inits and not (
                    is_dq_output(weight) and producer[weight].input[0] in inits):
                w_idx = None  # activation x activation MatMul: no weight to check
            act_ok = is_dq_output(n.input[0])
            if not act_ok:
                problems.append(f"{label}: input '{n.input[0]}' is not quantized; the layer runs in float")
            if w_idx is not None:
                ok = _check_weight(n, label, weight, axis, inits, producer, arr, problems)
                act_ok = act_ok and ok
            n_int8_compute += act_ok
            n_float_compute += not act_ok
            continue
        dq_inputs = [i for i in n.input if i and is_dq_output(i)]
        if n.op_type == "Add":
            branches = [i for i in n.input if i and i not in inits]
            if len(branches) >= 2 and dq_inputs and len(dq_inputs) < len(branches):
                missing = [i for i in branches if not is_dq_output(i)]
                problems.append(f"{label}: residual input(s) {missing} not quantized; both branches of an Add "
                                "need Q/DQ for TensorRT to fuse it in int8")
            elif len(branches) >= 2 and not dq_inputs and _feeds_from_int8(n, producer):
                problems.append(f"{label}: residual Add between int8 layers has no Q/DQ on its inputs; "
                                "it runs in float")
            continue
        outs = consumers.get(n.output[0], []) if n.output else []
        int8_out = bool(outs) and all(c.op_type == "QuantizeLinear" for c in outs)
        if dq_inputs and int8_out and n.op_type not in INT8_CAPABLE_OPS:
            problems.append(f"{label}: quantized on both sides but TensorRT has no INT8 implementation of "
                            f"{n.op_type}; exclude it from quantization so it runs in float")
    details = {"quantize_nodes": n_q, "dequantize_nodes": n_dq, "int8_compute_layers": n_int8_compute,
               "float_compute_layers": n_float_compute, "opset": _opset(model)}
    if n_q + n_dq == 0:
        problems.insert(0, "no QuantizeLinear/DequantizeLinear nodes: not a QDQ model, TensorRT would build FP32/FP16")
    return Compatibility(not problems, "tensorrt", artifact or onnx_path.stem, problems, details)


def _opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _weight_axis(node) -> tuple[int, int]:
    w_idx, axis = INT8_COMPUTE_OPS[node.op_type]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans_b else 1
    return w_idx, axis


def _check_weight(node, label, weight, axis, inits, producer, arr, problems) -> bool:
    p = producer.get(weight)
    if p is None or p.op_type != "DequantizeLinear":
        problems.append(f"{label}: weight '{weight}' is not quantized (no DequantizeLinear); the layer runs in float")
        return False
    w = arr(p.input[0])
    if w is None:
        return True  # weights quantized at run time (Q->DQ on a float weight): TensorRT folds it
    scale = arr(p.input[1])
    dq_axis = next((a.i for a in p.attribute if a.name == "axis"), 1)
    dq_axis = dq_axis + w.ndim if dq_axis < 0 else dq_axis
    channels = w.shape[axis] if w.ndim > axis else 1
    if scale is None or scale.size == 1:
        if channels > 1:
            problems.append(f"{label}: weights quantized per-tensor; TensorRT-style QDQ wants per-channel "
                            f"scales on the output-channel axis {axis}")
        return True
    if dq_axis != axis or scale.size != channels:
        problems.append(f"{label}: weight scales on axis {dq_axis} ({scale.size} values); the output-channel "
                        f"axis is {axis} ({channels} channels)")
    return True


def _feeds_from_int8(node, producer) -> bool:
    """True when an input of `node` comes straight from an int8 layer (a Conv fed by DequantizeLinear)."""
    for i in node.input:
        p = producer.get(i)
        if p is not None and p.op_type in INT8_COMPUTE_OPS and p.input:
            pp = producer.get(p.input[0])
            if pp is not None and pp.op_type == "DequantizeLinear":
                return True
    return False
