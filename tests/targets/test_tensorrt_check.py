"""The TensorRT QDQ readiness check on small ONNX graphs built node by node: one that passes, and one
violation of each rule, each reported with the node's name."""
from __future__ import annotations

import numpy as np
import pytest

from edgeq.core.errors import ModelError
from edgeq.targets.tensorrt_check import check_tensorrt_qdq

C_IN, C_OUT = 3, 4


def residual_block(*, act_dtype="int8", act_zp=0, weight_per_channel=True, weight_axis=0, int32_bias=False,
                   quantize_shortcut=True, conv_op="Conv", softmax_in_qdq=False, quantize_conv_input=True):
    """input -> Q/DQ -> Conv(W: DQ int8) -> Relu -> Q/DQ -> Add(. , Q/DQ(input) shortcut) -> output.

    Each keyword breaks one TensorRT rule; the defaults give a graph that passes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    np_act = {"int8": np.int8, "uint8": np.uint8}[act_dtype]
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s_act"),
        numpy_helper.from_array(np.array(act_zp, np_act), "zp_act"),
        numpy_helper.from_array(np.ones((C_OUT, C_IN, 1, 1), np.int8), "w_q"),
        numpy_helper.from_array(np.full(C_OUT if weight_per_channel else (), 0.01, np.float32), "s_w"),
        numpy_helper.from_array(np.zeros(C_OUT if weight_per_channel else (), np.int8), "zp_w"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s_act", "zp_act"], ["x_q"], name="input_q"),
        helper.make_node("DequantizeLinear", ["x_q", "s_act", "zp_act"], ["x_dq"], name="input_dq"),
        helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w"], name="w_dq",
                         **({"axis": weight_axis} if weight_per_channel else {})),
    ]
    conv_inputs = ["x_dq" if quantize_conv_input else "input", "w"]
    if int32_bias:
        inits += [numpy_helper.from_array(np.zeros(C_OUT, np.int32), "b_q"),
                  numpy_helper.from_array(np.full(C_OUT, 2e-4, np.float32), "s_b"),
                  numpy_helper.from_array(np.zeros(C_OUT, np.int32), "zp_b")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "s_b", "zp_b"], ["b"], name="bias_dq", axis=0))
    else:
        inits.append(numpy_helper.from_array(np.zeros(C_OUT, np.float32), "b"))
    conv_inputs.append("b")
    nodes += [
        helper.make_node(conv_op, conv_inputs, ["conv"], name="conv"),  # only the op type matters to the check
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("QuantizeLinear", ["relu", "s_act", "zp_act"], ["r_q"], name="relu_q"),
        helper.make_node("DequantizeLinear", ["r_q", "s_act", "zp_act"], ["r_dq"], name="relu_dq"),
    ]
    # the shortcut branch: an int8 1x1 Conv whose output is quantized (or not) before the Add
    inits.append(numpy_helper.from_array(np.ones((C_OUT, C_IN, 1, 1), np.int8), "w_sc_q"))
    nodes += [helper.make_node("DequantizeLinear", ["w_sc_q", "s_w", "zp_w"], ["w_sc"], name="w_sc_dq",
                               **({"axis": 0} if weight_per_channel else {})),
              helper.make_node("Conv", ["x_dq", "w_sc"], ["sc"], name="shortcut_conv")]
    if quantize_shortcut:
        nodes += [helper.make_node("QuantizeLinear", ["sc", "s_act", "zp_act"], ["sc_q"], name="sc_q"),
                  helper.make_node("DequantizeLinear", ["sc_q", "s_act", "zp_act"], ["sc_dq"], name="sc_dq")]
    shortcut = "sc_dq" if quantize_shortcut else "sc"
    nodes.append(helper.make_node("Add", ["r_dq", shortcut], ["add"], name="residual_add"))
    last = "add"
    if softmax_in_qdq:
        nodes += [helper.make_node("QuantizeLinear", ["add", "s_act", "zp_act"], ["a_q"], name="add_q"),
                  helper.make_node("DequantizeLinear", ["a_q", "s_act", "zp_act"], ["a_dq"], name="add_dq"),
                  helper.make_node("Softmax", ["a_dq"], ["sm"], name="softmax", axis=1),
                  helper.make_node("QuantizeLinear", ["sm", "s_act", "zp_act"], ["sm_q"], name="sm_q"),
                  helper.make_node("DequantizeLinear", ["sm_q", "s_act", "zp_act"], ["sm_dq"], name="sm_dq")]
        last = "sm_dq"
    graph = helper.make_graph(nodes, "block",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, C_IN, 8, 8])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def check(tmp_path, **broken):
    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(residual_block(**broken), str(path))
    return check_tensorrt_qdq(path)


def test_symmetric_int8_per_channel_residual_block_passes(tmp_path):
    c = check(tmp_path)
    assert c.ok, c.problems
    assert c.target == "tensorrt" and c.details["int8_compute_layers"] == 2 and c.details["float_compute_layers"] == 0


@pytest.mark.parametrize("broken, node, words", [
    ({"act_dtype": "uint8", "act_zp": 128}, "input_q", "UINT8"),
    ({"act_zp": 3}, "input_q", "zero-point is not 0"),
    ({"weight_per_channel": False}, "'conv'", "per-tensor"),
    ({"weight_axis": 1}, "'conv'", "output-channel axis is 0"),
    ({"int32_bias": True}, "bias_dq", "INT32"),
    ({"quantize_shortcut": False}, "residual_add", "both branches"),
    ({"conv_op": "QLinearConv"}, "'conv'", "ONNX Runtime-only"),
    ({"softmax_in_qdq": True}, "softmax", "no INT8 implementation of Softmax"),
    ({"quantize_conv_input": False}, "'conv'", "runs in float"),
])
def test_each_tensorrt_rule_violation_is_reported_by_node_name(tmp_path, broken, node, words):
    c = check(tmp_path, **broken)
    assert not c.ok
    assert any(node in p and words in p for p in c.problems), c.problems


def test_float_model_is_not_a_qdq_model(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "f",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(g), str(tmp_path / "f.onnx"))
    c = check_tensorrt_qdq(tmp_path / "f.onnx")
    assert not c.ok and "not a QDQ model" in c.problems[0]


def test_file_that_is_not_onnx_is_a_model_error(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_bytes(b"\xff\x00 definitely not protobuf \xff" * 10)
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        check_tensorrt_qdq(p)
