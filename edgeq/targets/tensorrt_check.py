"""Is a QDQ ONNX model ready for TensorRT explicit (INT8) quantization? Every violation names its node.

TensorRT builds an INT8 engine from an ONNX graph whose Quantize/DequantizeLinear nodes say where int8 is
wanted. It takes int8 Q/DQ with zero-point 0 only, weights quantized per output channel, and fuses a Q/DQ
pair into a neighbouring layer only for the layer types in `edgeq.core.onnx_ops`; a residual Add runs in int8 only
when both of its inputs come through DequantizeLinear. Used by `offline_checks` and by the Jetson target.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.core.errors import ModelError
from edgeq.core.onnx_ops import INT8_CAPABLE_OPS, INT8_COMPUTE_OPS, ORT_ONLY_QUANT_OPS, weight_axis
from edgeq.targets.base import Compatibility

_INT8 = 3  # onnx.TensorProto.INT8
_UINT8 = 2
_INT32 = 6


class _Graph:
    """One ONNX graph indexed for the checks: initializers (Constant nodes too), producers, consumers."""

    def __init__(self, model):
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {t.name: t for t in g.initializer}
        for n in g.node:  # Constant nodes hold weights too
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.inits[n.output[0]] = n.attribute[0].t
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def arr(self, name: str):
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def q_output_type(self, q) -> int:
        for a in q.attribute:
            if a.name == "output_dtype" and a.i:
                return a.i
        zp = q.input[2] if len(q.input) > 2 and q.input[2] else None
        if zp is None:
            return _UINT8  # the ONNX default when there is no zero-point
        return self.inits[zp].data_type if zp in self.inits else 0

    def dq_input_type(self, dq) -> int:
        x = dq.input[0]
        if x in self.inits:
            return self.inits[x].data_type
        p = self.producer.get(x)
        return self.q_output_type(p) if p is not None and p.op_type == "QuantizeLinear" else 0

    def is_dq_output(self, t: str) -> bool:
        p = self.producer.get(t)
        return p is not None and p.op_type == "DequantizeLinear"


def check_tensorrt_qdq(onnx_path: Path, artifact: str | None = None) -> Compatibility:
    """Check a QDQ ONNX file against TensorRT's explicit-quantization rules; `problems` lists each violation."""
    import onnx

    onnx_path = Path(onnx_path)
    try:
        model = onnx.load(str(onnx_path))
    except Exception as e:  # protobuf raises DecodeError and others for a file that is not ONNX
        raise ModelError(f"{onnx_path}: not a readable ONNX model ({e.__class__.__name__})") from None
    g = _Graph(model)
    problems: list[str] = []
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0, "int8": 0, "float": 0}
    for n in g.nodes:
        label = f"{n.op_type} '{n.name or n.output[0]}'"
        if n.op_type in ORT_ONLY_QUANT_OPS or n.op_type.startswith("QLinear"):
            problems.append(f"{label}: ONNX Runtime-only quantized operator; TensorRT needs the QDQ format "
                            "(stages.onnx_ptq.quant_format: qdq)")
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[n.op_type] += 1
            _check_qdq(g, n, label, problems)
        elif n.op_type in INT8_COMPUTE_OPS:
            counts["int8" if _check_compute(g, n, label, problems) else "float"] += 1
        elif n.op_type == "Add":
            _check_add(g, n, label, problems)
        else:
            _check_other(g, n, label, problems)
    details = {"quantize_nodes": counts["QuantizeLinear"], "dequantize_nodes": counts["DequantizeLinear"],
               "int8_compute_layers": counts["int8"], "float_compute_layers": counts["float"], "opset": _opset(model)}
    if counts["QuantizeLinear"] + counts["DequantizeLinear"] == 0:
        problems.insert(0, "no QuantizeLinear/DequantizeLinear nodes: not a QDQ model, TensorRT would build FP32/FP16")
    return Compatibility(not problems, "tensorrt", artifact or onnx_path.stem, problems, details)


def _check_qdq(g: _Graph, n, label: str, problems: list[str]) -> None:
    """int8, zero-point 0, positive scales, and every QuantizeLinear followed by DequantizeLinear only."""
    import onnx

    is_q = n.op_type == "QuantizeLinear"
    t = g.q_output_type(n) if is_q else g.dq_input_type(n)
    if t != _INT8:
        what = onnx.TensorProto.DataType.Name(t) if t else "unknown"
        hint = " (a quantized bias: keep biases float)" if t == _INT32 else ""
        problems.append(f"{label}: {what} quantization{hint}; TensorRT takes int8 Q/DQ only")
    zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
    if zp is not None and zp in g.inits and np.any(g.arr(zp) != 0):
        problems.append(f"{label}: zero-point is not 0 (asymmetric); TensorRT needs symmetric int8")
    scale = g.arr(n.input[1])
    if scale is not None and np.any(scale <= 0):
        problems.append(f"{label}: scale <= 0")
    if is_q:
        outs = g.consumers.get(n.output[0], [])
        if not outs or any(c.op_type != "DequantizeLinear" for c in outs):
            problems.append(f"{label}: not followed by DequantizeLinear only; TensorRT needs Q/DQ pairs")


def _check_compute(g: _Graph, n, label: str, problems: list[str]) -> bool:
    """A Conv/MatMul/Gemm layer: True when it runs in int8 (quantized input and weight)."""
    w_idx, axis = weight_axis(n)
    weight = n.input[w_idx] if len(n.input) > w_idx else ""
    if n.op_type == "MatMul" and weight not in g.inits and not (
            g.is_dq_output(weight) and g.producer[weight].input[0] in g.inits):
        w_idx = None  # activation x activation MatMul: no weight to check
    act_ok = g.is_dq_output(n.input[0])
    if not act_ok:
        problems.append(f"{label}: input '{n.input[0]}' is not quantized; the layer runs in float")
    if w_idx is not None:
        ok = _check_weight(g, label, weight, axis, problems)
        act_ok = act_ok and ok
    return act_ok


def _check_add(g: _Graph, n, label: str, problems: list[str]) -> None:
    dq_inputs = [i for i in n.input if i and g.is_dq_output(i)]
    branches = [i for i in n.input if i and i not in g.inits]
    if len(branches) >= 2 and dq_inputs and len(dq_inputs) < len(branches):
        missing = [i for i in branches if not g.is_dq_output(i)]
        problems.append(f"{label}: residual input(s) {missing} not quantized; both branches of an Add "
                        "need Q/DQ for TensorRT to fuse it in int8")
    elif len(branches) >= 2 and not dq_inputs and _feeds_from_int8(n, g.producer):
        problems.append(f"{label}: residual Add between int8 layers has no Q/DQ on its inputs; it runs in float")


def _check_other(g: _Graph, n, label: str, problems: list[str]) -> None:
    """Any other op quantized on both sides must be one TensorRT has an INT8 implementation of."""
    dq_inputs = [i for i in n.input if i and g.is_dq_output(i)]
    outs = g.consumers.get(n.output[0], []) if n.output else []
    int8_out = bool(outs) and all(c.op_type == "QuantizeLinear" for c in outs)
    if dq_inputs and int8_out and n.op_type not in INT8_CAPABLE_OPS:
        problems.append(f"{label}: quantized on both sides but TensorRT has no INT8 implementation of "
                        f"{n.op_type}; exclude it from quantization so it runs in float")


def _opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _check_weight(g: _Graph, label: str, weight: str, axis: int, problems: list[str]) -> bool:
    p = g.producer.get(weight)
    if p is None or p.op_type != "DequantizeLinear":
        problems.append(f"{label}: weight '{weight}' is not quantized (no DequantizeLinear); the layer runs in float")
        return False
    w = g.arr(p.input[0])
    if w is None:
        return True  # weights quantized at run time (Q->DQ on a float weight): TensorRT folds it
    scale = g.arr(p.input[1])
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
