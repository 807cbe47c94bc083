"""What the Coral Edge TPU can run, as data.

Source: Coral, "TensorFlow models on the Edge TPU", section "Supported operations"
(https://coral.ai/docs/edgetpu/models-intro/#supported-operations), Edge TPU runtime v14 / compiler
16. Keys are TFLite builtin op names (as the interpreter and edgetpu_compiler print them); values are
the documented limitation, or "" when there is none. An op not in this table stays on the CPU.
"""
from __future__ import annotations

SUPPORTED_OPS: dict[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": "no fused activation function; a constant input must be all zeroes and the only other input",
    "CONV_2D": "",
    "DEPTHWISE_CONV_2D": "dilated kernels are not supported",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "default weights format only; output tensor is one-dimensional",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "unidirectional LSTM only",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction in the batch dimension; reduction along x and/or y only",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "no packing in the batch dimension",
    "PAD": "no padding in the batch dimension; padding along x and/or y only",
    "PRELU": "alpha must be constant",
    "QUANTIZE": "",
    "REDUCE_MAX": "cannot operate on the batch dimension",
    "REDUCE_MIN": "cannot operate on the batch dimension",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "certain reshapes of large tensors may not be mapped",
    "RESIZE_BILINEAR": "3-D input/output; may stay on the CPU for some sizes to avoid precision loss",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input/output; may stay on the CPU for some sizes to avoid precision loss",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "1-D input of at most 16,000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "no splitting in the batch dimension",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "all strides 1, ellipsis-axis-mask and new-axis-mask 0",
    "SUB": "",
    "SUM": "cannot operate on the batch dimension",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}

# tensor dtypes the Edge TPU computes in; int32 only for biases and shape/axis constants
QUANTIZED_DTYPES = ("int8", "uint8")
CONSTANT_DTYPES = ("int32",)
MAX_NON_UNIT_DIMS = 3  # "only the 3 innermost dimensions may have a size greater than 1"

INSTALL_COMPILER = ("install it on an x86-64 Linux machine from Coral's apt repository "
                    "(https://coral.ai/docs/edgetpu/compiler/: apt-get install edgetpu-compiler), "
                    "or run edgeq in the pipeline Docker image that ships it")
INSTALL_RUNTIME = ("install the Edge TPU runtime on the device (https://coral.ai/docs/accelerator/get-started/: "
                   "apt-get install libedgetpu1-std) and plug in the accelerator")
