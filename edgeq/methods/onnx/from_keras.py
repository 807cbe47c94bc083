"""Keras -> ONNX export shared by the stages that make ONNX: tf2onnx with an NCHW input, identity Reshapes
removed, checked with onnx.checker; and int8 weights (DequantizeLinear) for an exported QAT model."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np

from edgeq.core.errors import ModelError, QuantizationError, first_line
from edgeq.core.onnx_ops import INT8_COMPUTE_OPS, weight_axis
from edgeq.core.progress import spinner
from edgeq.core.tfcompat import tf
from edgeq.measure.predictors import KerasPredictor, OnnxPredictor

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
    ref = KerasPredictor(model).predict(x)
    got = OnnxPredictor(onnx_path, threads=None, graph_optimization="all").predict(x)
    return float(np.max(np.abs(ref - got)))


def add_weight_qdq(path) -> dict:
    """Make an exported QAT ONNX model run as integer kernels in ONNX Runtime: fold the batch norms tf2onnx left
    behind, re-quantize the outputs of ops that keep the int8 grid, and store the float weights of the
    Conv/MatMul/Gemm layers as int8 + DequantizeLinear.

    tf2onnx folds tfmot's weight FakeQuant into float constants (only activations keep their Q/DQ pairs), so the
    weights are float on disk and ONNX Runtime runs those convolutions in float. QAT weights already sit on a
    per-channel int8 grid, so re-expressing them as int8 (symmetric, per output channel) is lossless up to float
    rounding; the largest change is returned. A batch norm is folded before that (a per-output-channel scale keeps
    the weights on a per-channel grid), because once a weight is a DequantizeLinear output ORT can fold neither
    the batch norm nor the Q/DQ pair around the Conv: it stays a float Conv + BatchNormalization.
    """
    import onnx

    m = onnx.load(str(path))
    g = m.graph
    folded = fold_batch_norms(g)
    requantized = requantize_grid_ops(g)
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
    return {"int8_weight_tensors": len(dq_nodes), "weight_requantisation_max_abs_change": worst,
            "batch_norms_folded": folded, "requantized_after": requantized}


def _consumers(g) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def fold_batch_norms(g) -> int:
    """Fold every BatchNormalization that is the only consumer of a Conv with initializer weights into that Conv;
    returns how many.

    tf2onnx folds batch norms itself, except where a layout Reshape sat between Conv and BN (1x1 feature maps,
    e.g. ResNet-50's last stage at 32x32 input; `drop_identity_reshapes` removes the Reshape afterwards).
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    cons = _consumers(g)
    outputs = {o.name for o in g.output}
    arr = lambda name: numpy_helper.to_array(inits[name])  # noqa: E731
    drop = []
    for bn in g.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = prod.get(bn.input[0])
        if (conv is None or conv.op_type != "Conv" or len(cons.get(conv.output[0], [])) != 1
                or conv.output[0] in outputs or not all(i in inits for i in [*conv.input[1:], *bn.input[1:5]])
                or len(cons.get(conv.input[1], [])) != 1):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (arr(n).astype(np.float64) for n in bn.input[1:5])
        w = arr(conv.input[1])
        b = arr(conv.input[2]).astype(np.float64) if len(conv.input) > 2 else np.zeros(w.shape[0])
        scale = gamma / np.sqrt(var + eps)
        new_w = (w * scale.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32)
        new_b = ((b - mean) * scale + beta).astype(np.float32)
        _replace_initializer(g, inits, conv.input[1], new_w)
        bias_name = conv.input[2] if len(conv.input) > 2 and len(cons.get(conv.input[2], [])) == 1 \
            else conv.name + "_folded_bias"
        _replace_initializer(g, inits, bias_name, new_b)
        if len(conv.input) > 2:
            conv.input[2] = bias_name
        else:
            conv.input.append(bias_name)
        conv.output[0] = bn.output[0]
        drop.append(bn)
    for bn in drop:
        g.node.remove(bn)
    return len(drop)


def _replace_initializer(g, inits: dict, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    if name in inits:
        g.initializer.remove(inits[name])
    inits[name] = numpy_helper.from_array(value, name)
    g.initializer.append(inits[name])


# single-input ops whose output lies on the int8 grid of their input: a Q/DQ pair after them is exact
GRID_OPS = ("MaxPool", "Pad", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")


def requantize_grid_ops(g, pads_into_convs: bool = True) -> list[str]:
    """Add QuantizeLinear/DequantizeLinear (the grid of the DequantizeLinear above) after chains of grid-keeping
    ops (GRID_OPS) that feed a Conv/MatMul/Gemm; returns the tensors re-quantized.

    tfmot quantizes the input of a MaxPool but not its output (the Keras ResNet-50 stem: ReLU -> FakeQuant ->
    Pad -> MaxPool -> two Convs), so those Convs read a float tensor and ORT runs them in float. MaxPool and
    zero-padding of values on an int8 grid give values on the same grid (0 is the zero-point), so the pair
    changes no value. A zero Pad straight above a Conv is left alone (MobileNetV2's ZeroPadding2D): ORT folds it
    into the Conv. `pads_into_convs=False` (a TensorRT export): the pair goes between that Pad and the Conv too, as
    TensorRT wants every int8 Conv's input to come through DequantizeLinear.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    cons = _consumers(g)
    after: dict[str, list] = {}  # node output -> the Q/DQ nodes to insert after its producer
    for node in g.node:
        if node.op_type not in INT8_COMPUTE_OPS or not node.input:
            continue
        x = node.input[0]
        p = prod.get(x)
        # ORT folds a zero Pad right above a Conv into the Conv (PadFusion), and then runs DQ -> Conv as one
        # integer kernel: a Q/DQ pair must go above such Pads, or the Pad stays a float op between them
        while (pads_into_convs and node.op_type == "Conv" and p is not None and p.op_type == "Pad"
               and _keeps_grid(p, inits) and len(cons.get(p.output[0], [])) == 1):
            x, p = p.input[0], prod.get(p.input[0])
        n, chain = p, 0
        while n is not None and n.op_type in GRID_OPS and _keeps_grid(n, inits):
            n, chain = prod.get(n.input[0]), chain + 1
        if not chain or n is None or n.op_type != "DequantizeLinear" or x in after:
            continue
        if len(n.input) < 2 or n.input[1] not in inits or numpy_helper.to_array(inits[n.input[1]]).size != 1:
            continue  # per-tensor grids only: a per-channel grid does not survive a Reshape or Transpose
        qparams = list(n.input[1:3])
        q = helper.make_node("QuantizeLinear", [x, *qparams], [x + "_requant_q"], name=x + "_requant_Q")
        dq = helper.make_node("DequantizeLinear", [q.output[0], *qparams], [x + "_requant"],
                              name=x + "_requant_DQ")
        for c in cons.get(x, []):
            for i, name in enumerate(c.input):
                if name == x:
                    c.input[i] = dq.output[0]
        after[x] = [q, dq]
    if after:
        nodes = []
        for n in g.node:
            nodes.append(n)
            for o in n.output:
                nodes += after.get(o, [])
        del g.node[:]
        g.node.extend(nodes)
    return sorted(after)


def _keeps_grid(node, inits: dict) -> bool:
    """Whether `node` maps values on an int8 grid to values on the same grid (Pad: constant mode, value 0)."""
    if node.op_type != "Pad":
        return True
    from onnx import numpy_helper

    mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
    if mode != "constant":
        return mode in ("reflect", "edge")  # copies of input values
    if len(node.input) < 3 or not node.input[2]:
        return True
    return node.input[2] in inits and not np.any(numpy_helper.to_array(inits[node.input[2]]))


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
