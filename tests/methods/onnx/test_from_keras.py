"""The QAT ONNX export runs as integer kernels in ONNX Runtime: batch norms tf2onnx left are folded, tensors that
leave MaxPool/Pad on their input's int8 grid are re-quantized, weights become int8 — without changing outputs."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeq.methods.onnx.from_keras import add_weight_qdq  # noqa: E402
from edgeq.methods.onnx.ort_int8 import ort_kernel_summary  # noqa: E402


def _const(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def _qat_like_graph(path, rng, int8_weights=False, maxpool=True):
    """What tf2onnx makes of a tfmot stem: Q/DQ -> Pad -> MaxPool -> Conv (float weights on a per-channel int8
    grid) -> BatchNormalization -> Q/DQ (no Q/DQ after MaxPool, BN not folded). int8_weights: the weights as
    int8 + DequantizeLinear, as the export stored them before the batch-norm fold."""
    c_in, c_out = 4, 8
    step = rng.uniform(0.005, 0.02, c_out).astype(np.float32)
    q = rng.integers(-127, 128, (c_out, c_in, 3, 3))
    q[:, 0, 0, 0] = 127  # every channel spans its grid, as tfmot's symmetric per-channel quantizer makes it
    w = (q * step[:, None, None, None]).astype(np.float32)
    inits = [_const("s_in", np.float32(0.04)), _const("z_in", np.int8(-20)), _const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
             _const("w", w), _const("b", rng.normal(0, 0.1, c_out).astype(np.float32)),
             _const("gamma", rng.uniform(0.5, 2, c_out).astype(np.float32)),
             _const("beta", rng.normal(0, 0.2, c_out).astype(np.float32)),
             _const("mean", rng.normal(0, 0.2, c_out).astype(np.float32)),
             _const("var", rng.uniform(0.5, 2, c_out).astype(np.float32)),
             _const("s_out", np.float32(0.05)), _const("z_out", np.int8(0))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xd"]),
             helper.make_node("Pad", ["xd", "pads"], ["xp"]),
             helper.make_node("MaxPool", ["xp"], ["xm"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Conv", ["xm" if maxpool else "xp", "wd" if int8_weights else "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
             helper.make_node("QuantizeLinear", ["bn", "s_out", "z_out"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s_out", "z_out"], ["y"])]
    if not maxpool:
        del nodes[3]
    if int8_weights:
        inits += [_const("wq", q.astype(np.int8)), _const("ws", step), _const("wz", np.zeros(c_out, np.int8))]
        nodes.insert(0, helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0))
    g = helper.make_graph(nodes, "qat_stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c_out, *([8, 8] if maxpool else [18, 18])])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _run(path, x, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_qat_onnx_export_runs_every_conv_as_an_integer_kernel_with_unchanged_outputs(tmp_path):
    raw, old, fixed = tmp_path / "raw.onnx", tmp_path / "old.onnx", tmp_path / "fixed.onnx"
    for path, int8_weights in ((raw, False), (old, True), (fixed, False)):
        _qat_like_graph(path, np.random.default_rng(0), int8_weights)
    before = ort_kernel_summary(old, "all")  # int8 weights alone: ORT folds neither the BN nor the Q/DQ pairs
    assert before["float_convs"] == 1 and before["batch_norms"] == 1

    notes = add_weight_qdq(fixed)

    assert notes["batch_norms_folded"] == 1 and notes["requantized_after"] == ["xm"]
    after = ort_kernel_summary(fixed, "all")
    assert (after["integer_convs"], after["float_convs"], after["batch_norms"]) == (1, 0, 0)
    x = np.random.default_rng(1).uniform(-1, 4, (1, 4, 16, 16)).astype(np.float32)
    exact = _run(raw, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    # Q/DQ as written: the same values up to float rounding (at most one output step where a value sits on a
    # rounding edge); ORT's integer kernels: within one output step (requantisation rounding)
    assert np.mean(_run(fixed, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL) == exact) > 0.99
    assert np.max(np.abs(_run(fixed, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL) - exact)) <= 0.05 + 1e-6


def test_pad_with_a_nonzero_value_is_not_requantized(tmp_path):
    path = tmp_path / "m.onnx"
    _qat_like_graph(path, np.random.default_rng(1))
    m = onnx.load(str(path))
    m.graph.initializer.append(_const("pad_value", np.float32(0.5)))
    next(n for n in m.graph.node if n.op_type == "Pad").input.append("pad_value")
    onnx.save(m, str(path))
    assert add_weight_qdq(path)["requantized_after"] == []  # 0.5 need not lie on the grid: leave it float


def test_zero_pad_right_above_a_conv_is_left_for_ort_to_fold(tmp_path):
    """MobileNetV2's ZeroPadding2D -> Conv: ORT folds the Pad into the Conv; a Q/DQ pair between them would keep it
    as a float op."""
    path = tmp_path / "m.onnx"
    _qat_like_graph(path, np.random.default_rng(2), maxpool=False)
    assert add_weight_qdq(path)["requantized_after"] == []
    k = ort_kernel_summary(path, "all")
    assert (k["integer_convs"], k["float_convs"]) == (1, 0)
