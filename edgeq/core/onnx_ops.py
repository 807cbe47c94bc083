"""What int8 means for ONNX operators: which carry a weight (and its output-channel axis), which TensorRT can
run in int8, which quantized operators only ONNX Runtime runs. Read by the quantizers (`edgeq.methods`) and
by the TensorRT readiness check (`edgeq.targets.tensorrt_check`), so neither imports the other.
"""
from __future__ import annotations

# op type -> index of the weight input and the output-channel axis of that weight
INT8_COMPUTE_OPS: dict[str, tuple[int, int]] = {
    "Conv": (1, 0),  # W: [C_out, C_in/g, kH, kW]
    "ConvTranspose": (1, 1),  # W: [C_in, C_out/g, kH, kW]
    "MatMul": (1, 1),  # W: [K, N]
    "Gemm": (1, 0),  # W: [N, K] with transB=1; [K, N] (axis 1) without, see weight_axis
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


def weight_axis(node) -> tuple[int, int]:
    """(weight input index, output-channel axis) of an INT8_COMPUTE_OPS node, Gemm's transB applied."""
    w_idx, axis = INT8_COMPUTE_OPS[node.op_type]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if trans_b else 1
    return w_idx, axis
