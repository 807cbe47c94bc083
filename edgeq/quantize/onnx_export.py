"""Keras -> ONNX export shared by the stages that make ONNX: tf2onnx with an NCHW input, identity Reshapes
removed, checked with onnx.checker; and int8 weights (DequantizeLinear) for an exported QAT model."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import ModelError, QuantizationError, first_line
from ..onnx_ops import INT8_COMPUTE_OPS, weight_axis

INPUT_NAME = "input"


def missing_exporter() -> str | None:
    """Why no Keras model can be exported to ONNX here (tf2onnx not installed), or None."""
    if importlib.util.find_spec("tf2onnx") is None:
        return "tf2onnx is not installed (pip install tf2onnx)"
    return None


def keras_to_onnx(model, out_path: Path, opset: int = 17, *, name: str = "fp32_onnx") -> dict:
    """Export a Keras model (FP32 or tfmot QAT) to ONNX with an NCHW input named "input"; returns notes.

    NCHW input lets tf2onnx's transpose optimiser remove every layout Transpose (ONNX Conv is NCHW), so no
    Transpose sits between Q/DQ nodes and the convolutions.
    """
    import onnx
    import tf2onnx

    from ..progress import spinner
    from ..tfcompat import tf

    shape = tuple(model.input_shape)
    if len(shape) != 4:
        raise ModelError(f"model input shape {shape}: edgeq exports 4-D image inputs (N, H, W, C) only")
    spec = (tf().TensorSpec((None, *shape[1:]), tf().float32, name=INPUT_NAME),)
    try:
        with spinner(f"export {name} (tf2onnx, opset {opset})"):
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset,
                                                  inputs_as_nchw=[INPUT_NAME])
    except Exception as e:  # tf2onnx raises many types for an unsupported op
        msg = first_line(e, 300)
        raise QuantizationError(f"tf2onnx could not export the model to ONNX opset {opset} ({msg})") from None
    removed = drop_identity_reshapes(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        msg = first_line(e, 300)
        hint = ("; tf2onnx converts FakeQuant ops only when their min/max ranges are set: train or calibrate the "
                "QAT model first") if "FakeQuant" in msg else ""
        raise QuantizationError(f"exported ONNX model fails onnx.checker ({msg}){hint}") from None
    onnx.save(proto, str(out_path))
    ops = Counter(n.op_type for n in proto.graph.node)
    return {"exporter": f"tf2onnx {tf2onnx.__version__}", "opset": opset, "input_layout": "NCHW",
            "onnx_checker": "passed (full_check)", "transposes": ops.get("Transpose", 0),
            "identity_reshapes_removed": removed, "op_counts": dict(sorted(ops.items()))}


def drop_identity_reshapes(model) -> int:
    """Remove Reshapes whose output shape equals their input shape; returns how many.

    tf2onnx turns NHWC<->NCHW Transposes of 1x1 feature maps (ResNet-50's last stage at 32x32 input) into such
    Reshapes. They sit between Conv and BatchNormalization, so ORT cannot fold the BN and the Conv stays float.
    """
    from onnx import shape_inference

    g = model.graph
    inferred = shape_inference.infer_shapes(model).graph
    dims = {}
    for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        dims[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    graph_outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    keep = []
    for n in g.node:
        a, b = dims.get(n.input[0]) if n.input else None, dims.get(n.output[0])
        if (n.op_type == "Reshape" and a and b and len(a) == len(b) and a[1:] == b[1:] and None not in a[1:]
                and n.output[0] not in graph_outputs):
            rename[n.output[0]] = rename.get(n.input[0], n.input[0])
            continue
        keep.append(n)
    for n in keep:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    del g.node[:]
    g.node.extend(keep)
    return len(rename)


def max_abs_diff_vs_keras(model, onnx_path: Path, x: np.ndarray) -> float:
    """Largest |Keras - ONNX Runtime| output difference on the float NHWC batch `x` (real images)."""
    from ..runtime import KerasPredictor, OnnxPredictor

    ref = KerasPredictor(model).predict(x)
    got = OnnxPredictor(onnx_path, threads=None, graph_optimization="all").predict(x)
    return float(np.max(np.abs(ref - got)))


def add_weight_qdq(path) -> dict:
    """Store the float weights of the Conv/MatMul/Gemm layers of an exported QAT ONNX model as int8 +
    DequantizeLinear.

    tf2onnx folds tfmot's weight FakeQuant into float constants (only activations keep their Q/DQ
    pairs), so the weights are float on disk and ONNX Runtime runs those convolutions in float. QAT
    weights already sit on a per-channel int8 grid, so re-expressing them as int8 (symmetric,
    per output channel) is lossless up to float rounding; the largest change is returned.
    """
    import onnx

    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    uses: dict[str, int] = {}
    for node in g.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    dq_nodes, worst = [], 0.0
    for node in g.node:
        if node.op_type not in INT8_COMPUTE_OPS or len(node.input) < 2:
            continue
        w_idx, axis = weight_axis(node)
        name = node.input[w_idx]
        if name not in inits or uses.get(name) != 1:
            continue
        dq, change = _int8_weight(g, inits[name], axis)
        if dq is None:
            continue
        worst = max(worst, change)
        dq_nodes.append(dq)
        node.input[w_idx] = dq.output[0]
    nodes = dq_nodes + list(g.node)  # the new nodes read only initializers: first is a valid order
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return {"int8_weight_tensors": len(dq_nodes), "weight_requantisation_max_abs_change": worst}


def _int8_weight(g, init, axis: int):
    """Replace float initializer `init` by int8 + scale + zero-point initializers; (DequantizeLinear node,
    largest change), or (None, 0) for a weight that is not a float matrix or kernel."""
    from onnx import helper, numpy_helper

    name = init.name
    w = numpy_helper.to_array(init)
    if w.dtype != np.float32 or w.ndim < 2:
        return None, 0.0
    red = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.max(np.abs(w), axis=red, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    change = float(np.max(np.abs(q * scale - w)))
    g.initializer.remove(init)
    g.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                          numpy_helper.from_array(scale.reshape(-1), name + "_scale"),
                          numpy_helper.from_array(np.zeros(scale.size, np.int8), name + "_zero_point")])
    dq = helper.make_node("DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero_point"],
                          [name + "_dq"], name=name + "_DequantizeLinear", axis=axis)
    return dq, change
