"""ONNX Runtime static INT8 quantization: the int8 scheme (chosen for this CPU, or TensorRT's), calibration,
`quantize_static`, and what ORT's CPU optimiser then makes of the model.

Two schemes come out of one calibration split:
- host: for ONNX Runtime on this CPU, chosen from its int8 features (`host_int8_scheme`), because ORT's fused
  int8 kernels behave differently per instruction set;
- TensorRT: symmetric int8 QDQ with per-channel weights and float biases, the form TensorRT's explicit
  quantization takes. No host-only choice reaches it.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeq.core.config import OnnxPtqSpec
from edgeq.core.errors import ConfigError, QuantizationError, RuntimeUnavailable, first_line
from edgeq.core.onnx_ops import INT8_CAPABLE_OPS
from edgeq.core.progress import spinner
from edgeq.loaders.onnx import OnnxInput, fix_spatial_dims
from edgeq.ondevice.agent import ort_session_options

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# op types never quantized: int8 class scores tie the top-1 of near classes, and neither ORT nor TensorRT
# gains anything from an int8 softmax at the end of a classifier
KEEP_FLOAT_OPS = ("Softmax",)
FLOAT_CONV_OPS = ("Conv", "FusedConv", "NchwcConv", "ConvTranspose")
INT_CONV_OPS = ("QLinearConv", "ConvInteger")


@dataclass(frozen=True)
class Int8Scheme:
    """How ORT quantizes one model: data types, symmetry, range and the reason for each choice."""

    activation_type: str  # int8 | uint8
    weight_type: str
    activation_symmetric: bool  # zero-point 0 for activations (weights are always symmetric)
    reduce_range: bool  # 7-bit weights
    per_channel: bool
    quant_format: str  # qdq | qoperator
    quantize_bias: bool
    why: str

    def to_dict(self) -> dict:
        return asdict(self)


# TensorRT explicit quantization: int8 Q/DQ, zero-point 0, per-channel weights, float biases (TensorRT has no
# int32 DequantizeLinear); fixed, whatever the host or the config's host options say.
TENSORRT_SCHEME = Int8Scheme("int8", "int8", True, False, True, "qdq", False,
                             "TensorRT explicit quantization: symmetric int8 Q/DQ (zero-point 0), per-channel "
                             "weights on the output-channel axis, float biases")


def host_int8_scheme(cpu: dict) -> Int8Scheme:
    """Safe defaults for ONNX Runtime's CPU int8 kernels on a CPU described by `edgeq.core.sysinfo.cpu_info()`."""
    x86 = cpu.get("machine", "").lower() in ("x86_64", "amd64", "i386", "i686", "x86")
    base = ("uint8 activations with a zero-point (ReLU/ReLU6 fold into the quantization range, and ORT's CPU "
            "graph optimiser then turns every Conv and Add, residual branch points included, into QLinear "
            "kernels; int8 activations leave those Convs and Adds in float), symmetric int8 weights per channel")
    if x86 and not cpu.get("int8_dot_product"):
        return Int8Scheme("uint8", "int8", False, True, True, "qdq", True,
                          f"{base}; x86 without VNNI: ORT's u8s8 kernels use VPMADDUBSW, whose int16 pair sums "
                          "saturate with full-range weights, so weights use 7 bits (reduce_range)")
    if x86:
        return Int8Scheme("uint8", "int8", False, False, True, "qdq", True,
                          f"{base}; x86 with VNNI (VPDPBUSD, u8 x s8 into int32, no saturation): full 8-bit range")
    return Int8Scheme("uint8", "int8", False, False, True, "qdq", True,
                      f"{base}; {cpu.get('machine') or 'this CPU'}: int8 dot products accumulate in int32, "
                      "full 8-bit range")


def resolve_host_scheme(opts: OnnxPtqSpec, cpu: dict) -> tuple[Int8Scheme, dict]:
    """The host scheme with the config's explicit choices applied over the CPU defaults; and who chose what."""
    auto = host_int8_scheme(cpu)
    chosen = {}
    fields = {"activation_type": opts.activation_type, "weight_type": opts.weight_type,
              "activation_symmetric": opts.symmetric, "reduce_range": opts.reduce_range}
    values = {}
    for k, v in fields.items():
        values[k] = getattr(auto, k) if v == "auto" else v
        chosen[k] = "cpu" if v == "auto" else "config"
    why = auto.why if all(c == "cpu" for c in chosen.values()) else (
        f"config sets {', '.join(k for k, c in chosen.items() if c == 'config')}; CPU default was: {auto.why}")
    scheme = Int8Scheme(values["activation_type"], values["weight_type"], bool(values["activation_symmetric"]),
                        bool(values["reduce_range"]), opts.per_channel, opts.quant_format, True, why)
    return scheme, chosen


# ------------------------------------------------------------------------------------- quantize
def calibration_reader(images: np.ndarray, input_name: str, nchw: bool, batch: int | None):
    from onnxruntime.quantization import CalibrationDataReader

    step = batch or 32

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(range(0, len(images), step))

        def get_next(self):
            s = next(self._it, None)
            if s is None:
                return None
            x = images[s:s + step]
            if batch and len(x) != batch:
                return None  # a fixed-batch model cannot take the short last batch
            return {input_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nchw else x, np.float32)}

    return Reader()


def quantize_onnx(prepared: Path, out: Path, scheme: Int8Scheme, calibration: np.ndarray, *, input_name: str,
                  nchw: bool, batch: int | None, calibration_method: str, exclude_nodes: list[str],
                  op_types: list[str], name: str = "int8_onnx", calibration_cache: Path | None = None) -> dict:
    """ORT static quantization of `prepared` (already through quant_pre_process) into `out`; returns notes.

    `calibration_cache`: a JSON file of tensor ranges (ORT's calibration_cache_path); written by the first call,
    read by later ones, so re-quantizing with other excluded nodes does not calibrate again."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    check_node_names(prepared, exclude_nodes)
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int16": QuantType.QInt16}  # int16: stages.precision
    extra = {"ActivationSymmetric": scheme.activation_symmetric, "WeightSymmetric": True,
             "QuantizeBias": scheme.quantize_bias,
             # Dense layers export as MatMul: per-channel on the output axis like Conv's
             "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}
    try:
        with spinner(f"quantize {name} (ORT quantize_static, {calibration_method} calibration on "
                     f"{len(calibration)} images)"):
            quantize_static(str(prepared), str(out), calibration_reader(calibration, input_name, nchw, batch),
                            quant_format=QuantFormat.QDQ if scheme.quant_format == "qdq" else QuantFormat.QOperator,
                            op_types_to_quantize=op_types, per_channel=scheme.per_channel,
                            reduce_range=scheme.reduce_range, activation_type=qtype[scheme.activation_type],
                            weight_type=qtype[scheme.weight_type], nodes_to_exclude=list(exclude_nodes),
                            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calibration_method]),
                            extra_options=extra,
                            **({"calibration_cache_path": str(calibration_cache)} if calibration_cache else {}))
    except (ValueError, RuntimeError, KeyError, IndexError) as e:
        msg = first_line(e, 300)
        raise QuantizationError(f"onnxruntime static quantization failed ({msg})") from None
    return {"scheme": scheme.to_dict(), "calibration_method": calibration_method,
            "calibration_images": int(len(calibration)), "nodes_excluded": list(exclude_nodes),
            "op_types_quantized": sorted(op_types)}


def check_node_names(model_path: Path, names: list[str]) -> None:
    """ORT ignores unknown names in nodes_to_exclude; a typo must not silently quantize the node."""
    if not names:
        return
    import onnx

    have = [n.name for n in onnx.load(str(model_path)).graph.node]
    unknown = [n for n in names if n not in set(have)]
    if unknown:
        convs = [n for n in have if "conv" in n.lower()][:3] or have[:3]
        raise ConfigError(f"stages.onnx_ptq.exclude_nodes: no node named {unknown} in the model (names as in the "
                          f"FP32 ONNX after ORT pre-processing, e.g. {convs})")


def host_op_types(quant_format: str) -> list[str]:
    """Every op type ORT quantizes in this format, but the final Softmax."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ops = set(QLinearOpsRegistry) | (set(QDQRegistry) if quant_format == "qdq" else set())
    return sorted(ops - set(KEEP_FLOAT_OPS))


def tensorrt_op_types() -> list[str]:
    """The op types TensorRT can run in int8 that ORT's QDQ quantizer handles."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) & INT8_CAPABLE_OPS - {"QuantizeLinear"})


def ort_kernel_summary(path: Path, graph_optimization: str) -> dict:
    """What ORT's CPU graph optimiser makes of a model at the given level: integer vs float convolutions."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort_session_options(ort, graph_optimization=graph_optimization)  # logs errors only: the saving warning is expected
        so.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return {"graph_optimization": graph_optimization,
            "integer_convs": sum(ops.get(o, 0) for o in INT_CONV_OPS),
            "float_convs": sum(ops.get(o, 0) for o in FLOAT_CONV_OPS),
            "transposes": ops.get("Transpose", 0),
            "float_adds": ops.get("Add", 0), "integer_adds": ops.get("QLinearAdd", 0),
            "integer_matmuls": sum(ops.get(o, 0) for o in ("QLinearMatMul", "MatMulInteger", "QGemm")),
            "float_matmuls": sum(ops.get(o, 0) for o in ("MatMul", "Gemm", "FusedMatMul")),
            "batch_norms": ops.get("BatchNormalization", 0)}


def prepare(fp32_path: Path, info: OnnxInput, input_shape_hwc: tuple[int, int, int], workdir: Path,
            name: str) -> Path:
    """fp32 -> (fixed H/W) -> quant_pre_process (shape inference, ORT basic optimisation: Conv+BN fold)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = fp32_path
    if None in info.dims[1:]:
        src = Path(workdir) / "fixed.onnx"
        fix_spatial_dims(fp32_path, info, input_shape_hwc, src)
    dst = Path(workdir) / "prepared.onnx"
    try:
        with spinner(f"prepare {name} for quantization (ORT quant_pre_process)"):
            quant_pre_process(str(src), str(dst))
    except ImportError as e:
        raise RuntimeUnavailable(f"onnxruntime's quant_pre_process needs {e.name}: pip install {e.name}") from None
    return dst
