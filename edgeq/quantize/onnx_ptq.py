"""The `onnx_ptq` stage: FP32 ONNX (tf2onnx export, or the run's ONNX input) -> ONNX Runtime static INT8.

Two INT8 models come out of one calibration split:
- `int8_onnx_ptq`: for ONNX Runtime on this host, with the int8 scheme chosen from the CPU's int8 features
  (`host_int8_scheme`), because ORT's fused int8 kernels behave differently per instruction set;
- `int8_onnx_trt`: symmetric int8 QDQ with per-channel weights and float biases, the form TensorRT's explicit
  quantization takes (checked by `edgeq.targets.tensorrt_check`). No host-only choice reaches it.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..artifacts import Artifact
from ..config import OnnxPtqSpec
from ..errors import DataError, ModelError, QuantizationError

INPUT_NAME = "input"
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
    """Safe defaults for ONNX Runtime's CPU int8 kernels on a CPU described by `edgeq.sysinfo.cpu_info()`."""
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


# ------------------------------------------------------------------------------------------ export
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
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else e.__class__.__name__
        raise QuantizationError(f"tf2onnx could not export the model to ONNX opset {opset} ({msg})") from None
    removed = drop_identity_reshapes(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        msg = str(e).splitlines()[0][:300]
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
    got = OnnxPredictor(onnx_path, threads=None, optimization="all").predict(x)
    return float(np.max(np.abs(ref - got)))


# ------------------------------------------------------------------------------------ ONNX input
@dataclass
class OnnxInput:
    name: str
    dims: list  # int or None (dynamic)
    layout: str  # NCHW | NHWC
    batch: int | None  # fixed batch size, None when dynamic


def read_onnx_input(path: Path, input_shape_hwc: tuple[int, int, int], where: Path | None = None) -> OnnxInput:
    """Validate an FP32 ONNX image classifier and find its input's layout against model.input_shape.

    `where` is the file named in error messages (the user's, when `path` is the run's copy of it)."""
    import onnx

    path, shown_path = Path(path), Path(where or path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelError(f"{shown_path}: not an ONNX model ({e.__class__.__name__}); give a .onnx file exported "
                         "with torch.onnx.export, tf2onnx or similar") from None
    if not model.graph.node:
        raise ModelError(f"{shown_path}: not an ONNX model (no graph nodes); give a .onnx file exported with "
                         "torch.onnx.export, tf2onnx or similar")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ModelError(f"{shown_path}: invalid ONNX model ({str(e).splitlines()[0][:200]})") from None
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{shown_path}: model has {len(inputs)} inputs; edgeq handles single-input image classifiers")
    i = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
    h, w, c = input_shape_hwc
    shown = [d if d is not None else "?" for d in dims]
    if len(dims) != 4:
        raise ModelError(f"{shown_path}: input '{i.name}' has shape {shown}; edgeq needs a 4-D image input")
    if dims[1] == c and dims[3] != c:
        layout, spatial = "NCHW", dims[2:]
    elif dims[3] == c and dims[1] != c:
        layout, spatial = "NHWC", dims[1:3]
    elif None in (dims[1], dims[3]):
        fixed = f"1,{c},{h},{w}"
        raise ModelError(
            f"{shown_path}: input '{i.name}' has dynamic dims {shown}, so its layout (NCHW or NHWC) cannot be "
            f"matched to model.input_shape {[h, w, c]}; fix the shape in the file, e.g. `python -m "
            f"onnxruntime.tools.make_dynamic_shape_fixed --input_name {i.name} --input_shape {fixed} "
            f"{shown_path.name} fixed.onnx` (or {h},{w},{c} last for NHWC), and point model.path at fixed.onnx")
    else:
        raise ModelError(f"{shown_path}: input '{i.name}' has shape {shown}, which has no {c}-channel axis matching "
                         f"model.input_shape {[h, w, c]} (H, W, C); fix model.input_shape")
    if any(s is not None and s != e for s, e in zip(spatial, (h, w))):
        raise DataError(f"{shown_path}: input '{i.name}' takes {spatial[0]}x{spatial[1]} images ({layout} {shown}) but "
                        f"calibration and evaluation images are resized to {h}x{w} (model.input_shape "
                        f"{[h, w, c]}); set model.input_shape to the model's size")
    return OnnxInput(i.name, dims, layout, dims[0])


def check_onnx_outputs(path: Path, num_classes: int) -> None:
    """One output whose last axis is num_classes (from the file's shapes, else shape inference)."""
    import onnx

    model = onnx.load(str(path))
    outputs = list(model.graph.output)
    if len(outputs) != 1:
        raise ModelError(f"{path}: model has {len(outputs)} outputs; edgeq handles single-output classifiers "
                         "(one output of num_classes scores)")

    def last_dim(vi):
        dims = vi.type.tensor_type.shape.dim
        return dims[-1].dim_value if len(dims) and dims[-1].HasField("dim_value") else None

    got = last_dim(outputs[0])
    if got is None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            got = last_dim(inferred.graph.output[0])
        except Exception:  # shape inference is best effort; evaluation still checks the real output
            got = None
    if got is not None and got != num_classes:
        raise ModelError(f"{path}: model outputs {got} classes (output '{outputs[0].name}') but config "
                         f"model.num_classes is {num_classes}; fix model.num_classes or the model")


def fix_spatial_dims(path: Path, info: OnnxInput, input_shape_hwc: tuple[int, int, int], out: Path) -> None:
    """Copy of the model with dynamic H/W of its input set from model.input_shape (batch left as is)."""
    import onnx

    model = onnx.load(str(path))
    h, w, c = input_shape_hwc
    want = [None, c, h, w] if info.layout == "NCHW" else [None, h, w, c]
    inp = next(i for i in model.graph.input if i.name == info.name)
    for d, v in zip(list(inp.type.tensor_type.shape.dim)[1:], want[1:]):
        if not d.HasField("dim_value"):
            d.dim_value = v
    del model.graph.value_info[:]
    onnx.save(model, str(out))


# ------------------------------------------------------------------------------------- quantize
def _calibration_reader(images: np.ndarray, input_name: str, nchw: bool, batch: int | None):
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
                  op_types: list[str], name: str = "int8_onnx") -> dict:
    """ORT static quantization of `prepared` (already through quant_pre_process) into `out`; returns notes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..progress import spinner

    check_node_names(prepared, exclude_nodes)
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    extra = {"ActivationSymmetric": scheme.activation_symmetric, "WeightSymmetric": True,
             "QuantizeBias": scheme.quantize_bias,
             # Dense layers export as MatMul: per-channel on the output axis like Conv's
             "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}}
    try:
        with spinner(f"quantize {name} (ORT quantize_static, {calibration_method} calibration on "
                     f"{len(calibration)} images)"):
            quantize_static(str(prepared), str(out), _calibration_reader(calibration, input_name, nchw, batch),
                            quant_format=QuantFormat.QDQ if scheme.quant_format == "qdq" else QuantFormat.QOperator,
                            op_types_to_quantize=op_types, per_channel=scheme.per_channel,
                            reduce_range=scheme.reduce_range, activation_type=qtype[scheme.activation_type],
                            weight_type=qtype[scheme.weight_type], nodes_to_exclude=list(exclude_nodes),
                            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calibration_method]),
                            extra_options=extra)
    except (ValueError, RuntimeError, KeyError, IndexError) as e:
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else e.__class__.__name__
        raise QuantizationError(f"onnxruntime static quantization failed ({msg})") from None
    return {"scheme": scheme.to_dict(), "calibration_method": calibration_method,
            "calibration_images": int(len(calibration)), "nodes_excluded": list(exclude_nodes),
            "op_types_quantized": sorted(op_types)}


def check_node_names(model_path: Path, names: list[str]) -> None:
    """ORT ignores unknown names in nodes_to_exclude; a typo must not silently quantize the node."""
    if not names:
        return
    import onnx

    from ..errors import ConfigError

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

    from ..targets.tensorrt_check import INT8_CAPABLE_OPS

    return sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) & INT8_CAPABLE_OPS - {"QuantizeLinear"})


def ort_kernel_summary(path: Path, optimization: str) -> dict:
    """What ORT's CPU graph optimiser makes of a model at the given level: integer vs float convolutions."""
    import onnx
    import onnxruntime as ort

    from ..agent import ort_session_options

    with tempfile.TemporaryDirectory() as d:
        so = ort_session_options(ort, optimization=optimization)  # logs errors only: the saving warning is expected
        so.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    return {"graph_optimization": optimization,
            "integer_convs": sum(ops.get(o, 0) for o in INT_CONV_OPS),
            "float_convs": sum(ops.get(o, 0) for o in FLOAT_CONV_OPS),
            "transposes": ops.get("Transpose", 0),
            "float_adds": ops.get("Add", 0), "integer_adds": ops.get("QLinearAdd", 0)}


# ----------------------------------------------------------------------------------------- stage
def run_stage(ctx, opts: OnnxPtqSpec) -> list[Artifact]:
    from ..progress import spinner
    from ..sysinfo import cpu_info
    from ..targets.tensorrt_check import check_tensorrt_qdq

    n = opts.calibration_images
    if n > len(ctx.splits.calibration):
        raise DataError(f"stages.onnx_ptq.calibration_images is {n} but the calibration split has only "
                        f"{len(ctx.splits.calibration)} images (data.calibration_size)")
    hwc = tuple(ctx.cfg.model.input_shape)
    out: list[Artifact] = []
    section: dict = {}
    if ctx.is_onnx_input:
        fp32 = ctx.fp32
        info = read_onnx_input(fp32.abspath(ctx.run_dir), hwc, where=ctx.cfg.model.path)
        section["input"] = {"source": str(ctx.cfg.model.path), "input": info.name, "dims": info.dims,
                            "layout": info.layout}
    else:
        model = ctx.keras_model()
        check_x = ctx.pre(ctx.splits.calibration.images[:64])

        def make_fp32(tmp: Path) -> dict:
            notes = keras_to_onnx(model, tmp, opts.opset, name="fp32_onnx")
            notes["max_abs_diff_vs_keras"] = max_abs_diff_vs_keras(model, tmp, check_x)
            notes["checked_on"] = f"{len(check_x)} calibration images"
            return notes

        fp32 = ctx.produce("fp32_onnx", "fp32.onnx", {"opset": opts.opset}, make_fp32, fmt="onnx",
                           precision="fp32", method="none", stage="onnx_export", params={"opset": opts.opset},
                           parent=ctx.fp32.name)
        out.append(fp32)
        info = OnnxInput(INPUT_NAME, [None, hwc[2], hwc[0], hwc[1]], "NCHW", None)
        section["export"] = {k: fp32.notes.get(k) for k in ("exporter", "opset", "input_layout", "onnx_checker",
                                                            "max_abs_diff_vs_keras", "transposes",
                                                            "identity_reshapes_removed")}
    fp32_path = fp32.abspath(ctx.run_dir)
    cal = ctx.splits.calibration
    calibration = ctx.pre(cal.images[:n])
    cal_key = {"calibration": cal.fingerprint(), "n": n, "input": asdict(info)}
    cpu = cpu_info()
    cpu_notes = {k: cpu[k] for k in ("model", "machine", "simd", "int8_dot_product")}
    host, chosen = resolve_host_scheme(opts, cpu)
    work = tempfile.TemporaryDirectory(dir=ctx.artifact_dir(), prefix=".onnx_ptq.")
    prepared_path: list[Path] = []

    def prepared() -> Path:
        """fp32 -> (fixed H/W) -> quant_pre_process (shape inference, ORT basic optimisation: Conv+BN fold)."""
        if not prepared_path:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            src = fp32_path
            if None in info.dims[1:]:
                src = Path(work.name) / "fixed.onnx"
                fix_spatial_dims(fp32_path, info, hwc, src)
            dst = Path(work.name) / "prepared.onnx"
            try:
                with spinner(f"prepare {fp32.name} for quantization (ORT quant_pre_process)"):
                    quant_pre_process(str(src), str(dst))
            except ImportError as e:
                from ..errors import RuntimeUnavailable
                raise RuntimeUnavailable(f"onnxruntime's quant_pre_process needs {e.name}: "
                                         f"pip install {e.name}") from None
            prepared_path.append(dst)
        return prepared_path[0]

    def quantize_to(name: str, scheme: Int8Scheme, op_types: list[str], runs_in_ort: bool, extra_notes: dict):
        def make(tmp: Path) -> dict:
            notes = quantize_onnx(prepared(), tmp, scheme, calibration, input_name=info.name,
                                  nchw=info.layout == "NCHW", batch=info.batch,
                                  calibration_method=opts.calibration_method, exclude_nodes=opts.exclude_nodes,
                                  op_types=op_types, name=name)
            notes.update(input_layout=info.layout, cpu=cpu_notes, **extra_notes)
            if runs_in_ort:  # what ORT's CPU optimiser makes of it: the evidence that every Conv runs as an int8 kernel
                notes["ort_kernels"] = ort_kernel_summary(tmp, opts.graph_optimization)
            return notes
        return make

    try:
        host_params = {**opts.model_dump(include={"quant_format", "per_channel", "calibration_method",
                                                  "exclude_nodes", "calibration_images"}),
                       "scheme": host.to_dict(), "chosen_by": chosen}
        make = quantize_to("int8_onnx_ptq", host, host_op_types(host.quant_format), True, {})
        out.append(ctx.produce("int8_onnx_ptq", "int8_ptq.onnx", {**cal_key, "level": opts.graph_optimization}, make,
                               fmt="onnx", precision="int8", method="ptq", stage="onnx_ptq", params=host_params,
                               parent=fp32.name))
        if opts.tensorrt_artifact:
            trt_params = {**opts.model_dump(include={"calibration_method", "exclude_nodes", "calibration_images"}),
                          "scheme": TENSORRT_SCHEME.to_dict()}
            trt_notes = {
                # evaluate what TensorRT computes (int8 Q/DQ, int32 accumulation), not what ORT's fused CPU kernels
                # make of a symmetric int8 graph: at the basic level ORT runs the Q/DQ nodes as written
                "ort_graph_optimization": "basic",
                "ort_graph_optimization_why": "TensorRT artifact: ORT runs its Q/DQ nodes as written (basic level), "
                                              "the int8 arithmetic TensorRT performs",
                "host_benchmark_skip": "built for TensorRT (Jetson target); ONNX Runtime on this CPU is not where it "
                                       "runs, see int8_onnx_ptq for the host"}
            make = quantize_to("int8_onnx_trt", TENSORRT_SCHEME, tensorrt_op_types(), False, trt_notes)
            out.append(ctx.produce("int8_onnx_trt", "int8_trt.onnx", cal_key, make, fmt="onnx", precision="int8",
                                   method="ptq", stage="onnx_ptq", params=trt_params, parent=fp32.name))
    finally:
        work.cleanup()
    for art in out:
        if art.precision == "int8" and art.format == "onnx":
            c = check_tensorrt_qdq(art.abspath(ctx.run_dir), art.name)
            ctx.results["compatibility"].setdefault(art.name, {})["tensorrt"] = c.to_dict()
    ctx.save_results()
    section.update({"host_scheme": {**host.to_dict(), "chosen_by": chosen},
                    "tensorrt_scheme": TENSORRT_SCHEME.to_dict() if opts.tensorrt_artifact else None,
                    "cpu": cpu_notes})
    section["markdown"] = _markdown(ctx, out, section)
    ctx.set_section("onnx_ptq", section)
    return out


def _markdown(ctx, arts: list[Artifact], section: dict) -> str:
    h = section["host_scheme"]
    lines = ["## ONNX Runtime PTQ", ""]
    if "export" in section:
        e = section["export"]
        lines.append(f"- export: {e['exporter']}, opset {e['opset']}, {e['input_layout']} input, onnx.checker "
                     f"{e['onnx_checker']}, max |Keras - ORT| {e['max_abs_diff_vs_keras']:.2e}, "
                     f"{e['transposes']} Transpose left, {e['identity_reshapes_removed']} identity Reshape removed")
    else:
        i = section["input"]
        lines.append(f"- input model: {i['source']} (input '{i['input']}', {i['layout']}), quantized as given")
    lines.append(f"- int8_onnx_ptq scheme: {h['activation_type']} activations "
                 f"({'symmetric' if h['activation_symmetric'] else 'with zero-point'}), {h['weight_type']} weights "
                 f"{'per-channel' if h['per_channel'] else 'per-tensor'}, reduce_range={h['reduce_range']}, "
                 f"{h['quant_format'].upper()}. Why: {h['why']}")
    for a in arts:
        k = a.notes.get("ort_kernels")
        if k:
            lines.append(f"- {a.name} in ORT (optimisation {k['graph_optimization']}): {k['integer_convs']} integer / "
                         f"{k['float_convs']} float Conv, {k['integer_adds']} integer / {k['float_adds']} float Add, "
                         f"{k['transposes']} Transpose")
        if a.notes.get("ort_graph_optimization"):
            lines.append(f"- {a.name}: evaluated at ORT optimisation '{a.notes['ort_graph_optimization']}': "
                         f"{a.notes.get('ort_graph_optimization_why', '')}")
        if a.notes.get("host_benchmark_skip"):
            lines.append(f"- {a.name}: host latency not measured: {a.notes['host_benchmark_skip']}")
    lines += ["", "| artifact | TensorRT QDQ check | violations |", "|---|---|---|"]
    for a in arts:
        c = ctx.results["compatibility"].get(a.name, {}).get("tensorrt")
        if c:
            more = len(c["problems"]) - 3
            first = "; ".join(c["problems"][:3]) + (f" … (+{more})" if more > 0 else "")
            lines.append(f"| {a.name} | {'pass' if c['ok'] else 'fail'} | {len(c['problems'])}"
                         f"{': ' + first if first else ''} |")
    return "\n".join(lines)
