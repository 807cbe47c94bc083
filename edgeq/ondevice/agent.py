#!/usr/bin/env python3
"""edgeq on-device agent: time one model on this machine and print one JSON object.

A single file that needs only numpy and an interpreter (ai-edge-litert, tflite-runtime, tf.lite,
onnxruntime or openvino). It is copied to a device and run there; it imports nothing from edgeq.

Usage (stable; scripts and the Docker images rely on it):

    python3 agent.py --info
        identity of this machine and the runtimes it has; no model is loaded
    python3 agent.py --model m.tflite [--runs 100] [--warmup 10] [--threads 4]
                     [--inputs x.npy] [--outputs-out y.npy | --return-outputs]
                     [--delegate libedgetpu.so.1] [--runtime auto|litert|tflite-runtime|tf|onnxruntime]
                     [--graph-optimization disable|basic|extended|all] [--inference-precision f32|bf16|f16]
                     [--kernels default|builtin|reference]
    python3 agent.py --model m.tflite --inputs x.npy --tensors-out t.npz [--kernels ...] [--threads 1]

    --model         .tflite (LiteRT/TFLite interpreter), .onnx (ONNX Runtime, CPU), or an OpenVINO IR
                    (a directory holding model.xml + model.bin, or the .xml itself; OpenVINO, CPU)
    --inputs        float32 NHWC batch, already normalised (a .npy, loaded with allow_pickle=False);
                    quantised here with the model's own input scale/zero-point. Without it, one random
                    float image in [-1, 1] (the usual normalised range) is used, quantised the same way.
    --runs/--warmup single-image inferences timed after untimed warm-up ones (inputs[0] is timed)
    --outputs-out   run every input image once and save the dequantised float32 outputs there
    --return-outputs  the same, but put the outputs in the JSON (small batches only)
    --delegate      a TFLite external delegate library, e.g. libedgetpu.so.1 for the Coral Edge TPU
    --graph-optimization  ONNX Runtime graph-optimisation level (default all), as edgeq's host figures use
    --kernels       TFLite kernels: default (the interpreter's own choice: XNNPACK where it is built in), builtin
                    (LiteRT's optimised kernels, XNNPACK off) or reference (the plain reference kernels)
    --tensors-out   run every input image once op by op, keeping every tensor, and save each op's output
                    tensors (raw, as stored: int8 stays int8) to this .npz (no pickle): key t<tensor index>,
                    shape [N, ...]; the JSON lists the ops in execution order with the kernel that ran each
                    ("XNNPACK" when the default delegate took it, else "builtin" or "reference")
    --inference-precision  OpenVINO INFERENCE_PRECISION_HINT, always set (default: the one the IR names for itself,
                    as edgeq's bf16/f16 variants do, else f32: OpenVINO's own default runs bfloat16 or float16 on
                    CPUs that have them, a different artifact from the FP32 one)

Output: exactly one JSON object on stdout, always with "protocol" (PROTOCOL below) and "ok".
"device" is this machine's identity: its CPU, its CPU lists (cpu_list) and, when a CPU emulator runs the agent
(an arm64 container under QEMU), why ("emulated": its timings are then no speed figures; null on real hardware).
On success: "runtime" (" (XNNPACK)" added when LiteRT's default delegate took ops), "device", "model",
"timing": {"samples_ms": [...], "runs", "warmup", "threads"} and optionally "outputs"/"outputs_file". On failure: "error" (one line) and "error_kind"
(usage | runtime_missing | delegate_unavailable | model | inputs | internal); the traceback goes to
stderr and the exit status is non-zero (2 for usage and runtime_missing, 1 otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

PROTOCOL = 1  # bump when the command line or the JSON changes incompatibly; the host refuses others
AGENT_VERSION = "1.0"


class AgentError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------- machine identity
def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model_and_flags(cpuinfo_text: str | None = None) -> tuple[str, set[str]]:
    """The CPU model and its feature flags from /proc/cpuinfo (or the text given); edgeq.core.sysinfo reads it too."""
    if cpuinfo_text is None:
        cpuinfo_text = _read_cpuinfo()
    model, flags = "", set()
    for line in cpuinfo_text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and val.strip():
            model = val.strip()
        elif key in ("flags", "features"):
            flags.update(val.split())
    if not model:
        try:  # Raspberry Pi and other device-tree boards
            with open("/proc/device-tree/model", "rb") as f:
                model = f.read().rstrip(b"\0").decode(errors="replace")
        except OSError:
            model = platform.processor() or platform.machine()
    return model, flags


X86_VENDORS = ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls")


def emulation(cpuinfo_text: str | None = None, machine: str | None = None, environ=None) -> str | None:
    """Why this process runs on an emulated CPU (QEMU user mode, as an arm64 container on x86-64), or None.

    User-mode QEMU translates instructions but leaves the kernel's /proc/cpuinfo alone: an aarch64 process
    that reads an x86 vendor there is emulated, and its timings say nothing about any real device's speed."""
    if cpuinfo_text is None:
        cpuinfo_text = _read_cpuinfo()
    machine = (machine or platform.machine()).lower()
    environ = os.environ if environ is None else environ
    keys = {ln.partition(":")[0].strip().lower(): ln.partition(":")[2].strip() for ln in cpuinfo_text.splitlines()}
    x86_kernel = keys.get("vendor_id", "") in X86_VENDORS
    arm_kernel = "cpu implementer" in keys
    why = None
    if x86_kernel and machine.startswith(("aarch64", "arm")):
        why = f"an {machine} process on an x86-64 CPU ({keys.get('model name') or keys['vendor_id']})"
    elif arm_kernel and machine in ("x86_64", "amd64", "i686", "i386"):
        why = f"an {machine} process on an ARM CPU"
    if why is None:
        return None
    qemu = f", QEMU_CPU={environ['QEMU_CPU']}" if environ.get("QEMU_CPU") else ""
    return f"{why}: a user-mode CPU emulator (QEMU) runs it{qemu}; timings are not speed figures"


def cpu_list(root: str = "/sys/devices/system/cpu") -> dict:
    """The kernel's CPU lists (possible/present/online, e.g. "0-3") as this process sees them."""
    out = {}
    for name in ("possible", "present", "online"):
        try:
            with open(f"{root}/{name}") as f:
                out[name] = f.read().strip()
        except OSError:
            out[name] = None
    return out


def identity() -> dict:
    import numpy as np

    try:  # how busy the device is, recorded beside its figures
        load = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        load = None
    return {"hostname": platform.node(), "machine": platform.machine(), "cpu": cpu_model_and_flags()[0],
            "cores": os.cpu_count(), "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "numpy": np.__version__, "loadavg": load,
            "cpu_list": cpu_list(), "emulated": emulation()}


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        return "?"


# runtime name (as --info reports it and --runtime takes it) -> (module, distribution)
RUNTIMES = {"litert": ("ai_edge_litert", "ai-edge-litert"), "tflite-runtime": ("tflite_runtime", "tflite-runtime"),
            "onnxruntime": ("onnxruntime", "onnxruntime"), "tensorrt": ("tensorrt", "tensorrt"),
            "tf": ("tensorflow", "tensorflow"), "openvino": ("openvino", "openvino")}
TFLITE_INTERPRETERS = ("litert", "tflite-runtime", "tf")  # tried in this order; edgeq.core.formats reads it


def available_runtimes() -> dict:
    """name -> version of every interpreter importable here (imports are cheap ones only)."""
    import importlib.util

    return {name: _version(dist) for name, (module, dist) in RUNTIMES.items()
            if importlib.util.find_spec(module) is not None}


# ----------------------------------------------------------------------------- quantisation and layout
# edgeq.measure.predictors imports these three: one definition for the host and the device
def quantize(x, dtype, scale: float, zero_point: int):
    """float -> the model's integer input type with its scale/zero-point (a float type: a plain cast)."""
    import numpy as np

    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if not scale:
            raise AgentError("model", "quantised model input has scale 0")
        return np.clip(np.rint(x / scale + zero_point), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def dequantize(y, scale: float, zero_point: int):
    import numpy as np

    if np.issubdtype(y.dtype, np.integer) and scale:
        return (y.astype(np.float32) - zero_point) * scale
    return y.astype(np.float32)


def is_nchw(shape) -> bool:
    """An image input is NCHW when axis 1 is a channel count (1 or 3) and the last axis is not (unknown dims: -1)."""
    return len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)


def random_inputs(shape, rng):
    import numpy as np

    return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


# ----------------------------------------------------------------------------- runners
KERNELS = ("default", "builtin", "reference")


def op_resolver_kw(module_name: str, kernels: str) -> dict:
    """Interpreter keyword for the TFLite kernels asked for (default: none, the interpreter's own choice)."""
    if kernels == "default":
        return {}
    import importlib

    resolver = getattr(importlib.import_module(module_name), "OpResolverType", None)
    if resolver is None:
        raise AgentError("runtime_missing", f"{module_name} cannot choose its kernels (no OpResolverType); "
                         "install a newer ai-edge-litert")
    return {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES if kernels == "builtin"
            else resolver.BUILTIN_REF}


class TFLiteRunner:
    def __init__(self, path: str, threads: int | None, delegate: str | None, prefer: str, kernels: str = "default",
                 keep_all_tensors: bool = False):
        import numpy as np

        Interpreter, load_delegate, self.runtime = self._import(prefer)
        kw = {"num_threads": threads} if threads else {}
        kw.update(op_resolver_kw(Interpreter.__module__, kernels))
        self.kernels = kernels
        if kernels != "default":
            self.runtime += f" ({kernels} kernels)"
        if keep_all_tensors:
            kw["experimental_preserve_all_tensors"] = True
        self.delegate = None
        if delegate:
            try:
                kw["experimental_delegates"] = [load_delegate(delegate)]
            except (ValueError, OSError, RuntimeError) as e:
                raise AgentError("delegate_unavailable",
                                 f"delegate {delegate} could not be loaded on {platform.node()} "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
            self.delegate = delegate
            self.runtime += f" + delegate {os.path.basename(delegate)}"
        try:
            self.interp = Interpreter(model_path=path, **kw)
            self.interp.allocate_tensors()
        except TypeError as e:  # an interpreter too old for preserve_all_tensors / op_resolver_type
            raise AgentError("runtime_missing", f"{self.runtime} cannot keep tensors or choose kernels ({e}); "
                             "install a newer ai-edge-litert") from None
        except (ValueError, RuntimeError) as e:
            raise AgentError("model", f"{path}: not loadable by {self.runtime} "
                                      f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if not delegate and self.default_delegate_applied():
            self.runtime += " (XNNPACK)"  # its default delegate took ops: a different kernel set from the builtin one
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.in_dtype = np.dtype(self.inp["dtype"])
        self.input_shape = [int(d) for d in self.inp["shape"]]

    def default_delegate_applied(self) -> bool:
        """Whether the interpreter's default delegate (XNNPACK) replaced ops of the graph: a DELEGATE node then
        shows among its nodes. Under QEMU without a usable /sys CPU list it silently is not (different outputs)."""
        try:
            return any(op.get("op_name") == "DELEGATE" for op in self.interp._get_ops_details())
        except Exception:  # noqa: BLE001 - a private API: an interpreter without it just says nothing
            return False

    @staticmethod
    def _import(prefer: str):
        tried = []
        for name in (TFLITE_INTERPRETERS if prefer == "auto" else [prefer]):
            try:
                if name == "litert":
                    from ai_edge_litert.interpreter import Interpreter, load_delegate
                    return Interpreter, load_delegate, f"ai-edge-litert {_version('ai-edge-litert')}"
                if name == "tflite-runtime":
                    from tflite_runtime.interpreter import Interpreter, load_delegate
                    return Interpreter, load_delegate, f"tflite-runtime {_version('tflite-runtime')}"
                if name == "tf":
                    import tensorflow as tf
                    return tf.lite.Interpreter, tf.lite.experimental.load_delegate, f"tf.lite {tf.__version__}"
            except ImportError:
                tried.append(name)
        raise AgentError("runtime_missing", "no TFLite interpreter on this machine (tried "
                         + ", ".join(tried) + "); install one with: pip install ai-edge-litert "
                         "(or tflite-runtime)")

    def set_input(self, x1):
        self.interp.set_tensor(self.inp["index"], quantize(x1, self.in_dtype, *self.inp["quantization"]))

    def invoke(self):
        self.interp.invoke()

    def output(self):
        return dequantize(self.interp.get_tensor(self.out["index"]), *self.out["quantization"])

    def op_tensors(self, x) -> tuple[list[dict], dict]:
        """Every op's output tensors for each image of x, raw as stored, and the ops in execution order with the
        kernel that ran each. Built with preserve_all_tensors, LiteRT hands XNNPACK one op per delegate node (so
        each tensor is still written) and runs the ops it does not take with its own kernels."""
        import numpy as np

        nodes = self.interp._get_ops_details()
        by_delegate = {int(t) for n in nodes if n["op_name"] == "DELEGATE" for t in n["outputs"]}
        details = {t["index"]: t for t in self.interp.get_tensor_details()}
        own = "reference" if self.kernels == "reference" else "builtin"
        ops = [{"index": int(n["index"]), "op": n["op_name"], "outputs": [int(t) for t in n["outputs"] if t >= 0],
                "kernel": "XNNPACK" if any(int(t) in by_delegate for t in n["outputs"]) else own}
               for n in nodes if n["op_name"] != "DELEGATE"]
        inp = int(self.inp["index"])
        keep = [inp, *(t for o in ops for t in o["outputs"])]
        values: dict = {t: [] for t in keep}
        for i in range(len(x)):
            self.set_input(x[i:i + 1])
            self.invoke()
            for t in keep:
                values[t].append(self.interp.get_tensor(t).copy())
        tensors = [{"index": t, "name": details[t]["name"], "dtype": str(np.dtype(details[t]["dtype"])),
                    "shape": [int(d) for d in details[t]["shape"]],
                    "scale": float(details[t]["quantization"][0]), "zero_point": int(details[t]["quantization"][1])}
                   for t in keep]
        arrays = {f"t{t}": np.stack(v) for t, v in values.items()}
        return [{"index": -1, "op": "INPUT", "outputs": [inp], "kernel": "-"}, *ops], {"tensors": tensors,
                                                                                       "arrays": arrays}

    def describe(self) -> dict:
        import numpy as np

        return {"input_shape": self.input_shape, "input_dtype": str(self.in_dtype),
                "input_quantization": list(self.inp["quantization"]),
                "output_dtype": str(np.dtype(self.out["dtype"]))}


def ort_session_options(ort, threads: int | None = None, graph_optimization: str = "all"):
    """ONNX Runtime session options: threads (one inter-op thread) and graph optimisation level by name.
    Also used by edgeq.measure.predictors and edgeq.stages.onnx_ptq, so host and device sessions match."""
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: graph-cleanup warnings are not the user's concern
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    return so


class OnnxRunner:
    def __init__(self, path: str, threads: int | None, graph_optimization: str = "all"):
        import numpy as np

        try:
            import onnxruntime as ort
        except ImportError:
            raise AgentError("runtime_missing", "onnxruntime is not installed on this machine; "
                             "install it with: pip install onnxruntime") from None
        so = ort_session_options(ort, threads, graph_optimization)
        try:
            self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise AgentError("model", f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.runtime = f"onnxruntime {ort.__version__} (CPU EP, opt={graph_optimization})"
        i = self.sess.get_inputs()[0]
        self.name, self.out_name = i.name, self.sess.get_outputs()[0].name
        shape = [d if isinstance(d, int) else -1 for d in i.shape]
        self.nchw = is_nchw(shape)
        shape = [d if d > 0 else 1 for d in shape]  # random inputs of a dynamic batch: one image
        self.input_shape = [shape[0], shape[2], shape[3], shape[1]] if self.nchw else shape
        self.in_dtype = np.dtype(np.float32)
        self.feed = None
        self.result = None

    def set_input(self, x1):
        import numpy as np

        x = x1.transpose(0, 3, 1, 2) if self.nchw else x1
        self.feed = {self.name: np.ascontiguousarray(x, np.float32)}

    def invoke(self):
        self.result = self.sess.run([self.out_name], self.feed)[0]

    def output(self):
        return self.result.astype("float32")

    def describe(self) -> dict:
        return {"input_shape": self.input_shape, "layout": "NCHW" if self.nchw else "NHWC"}


OPENVINO_PRECISIONS = ("f32", "bf16", "f16")


def openvino_config(threads: int | None, precision: str = "f32") -> dict:
    """OpenVINO CPU compile config: the inference precision always named (OpenVINO's default is bf16/f16 where the
    CPU has it), one stream (one image at a time, as the other runtimes are timed), threads when given.
    Also used by edgeq.measure.predictors, so host and device compile alike."""
    if precision not in OPENVINO_PRECISIONS:
        raise AgentError("usage", f"inference precision {precision!r}: use one of {', '.join(OPENVINO_PRECISIONS)}")
    cfg = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": 1}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


PRECISION_KEY = ["runtime_options", "INFERENCE_PRECISION_HINT"]  # where an IR names its own precision (rt_info)


def openvino_precision_of(model) -> str | None:
    """The inference precision an OpenVINO model names for itself in its rt_info (edgeq's bf16/f16 variants); None."""
    return str(model.get_rt_info(PRECISION_KEY).astype(str)) if model.has_rt_info(PRECISION_KEY) else None


def openvino_xml(path: str) -> str | None:
    """The model.xml of an OpenVINO IR given as its directory or as the .xml; None if `path` is neither."""
    if os.path.isdir(path):
        xmls = sorted(f for f in os.listdir(path) if f.endswith(".xml"))
        return os.path.join(path, xmls[0]) if len(xmls) == 1 else None
    return path if path.endswith(".xml") else None


def openvino_model_file(path: str) -> str | None:
    """What OpenVINO reads for `path`: an IR's model.xml, or an .onnx as it is (OpenVINO reads ONNX directly); None if
    neither. Also used by edgeq.measure.predictors."""
    return openvino_xml(path) or (path if path.endswith(".onnx") and os.path.isfile(path) else None)


class OpenVINORunner:
    def __init__(self, path: str, threads: int | None, precision: str | None = None):
        import numpy as np

        try:
            import openvino as ov
        except ImportError:
            raise AgentError("runtime_missing", "openvino is not installed on this machine; "
                             "install it with: pip install openvino") from None
        xml = openvino_model_file(path)
        if xml is None:
            raise AgentError("model", f"{path}: not an OpenVINO IR (a directory with one model.xml and its .bin) "
                                      "nor an .onnx model")
        core = ov.Core()
        try:
            model = core.read_model(xml)
            precision = precision or openvino_precision_of(model) or "f32"
            self.compiled = core.compile_model(model, "CPU", openvino_config(threads, precision))
        except Exception as e:  # noqa: BLE001 - openvino raises its own exception types
            raise AgentError("model", f"{path}: openvino cannot load it ({str(e).strip().splitlines()[0][:200]})") \
                from None
        self.request = self.compiled.create_infer_request()
        self.properties = openvino_properties(self.compiled)
        self.runtime = openvino_runtime_name(ov, self.properties)
        shape = [d.get_length() if d.is_static else -1 for d in self.compiled.input(0).get_partial_shape()]
        self.nchw = is_nchw(shape)
        shape = [d if d > 0 else 1 for d in shape]
        self.input_shape = [shape[0], shape[2], shape[3], shape[1]] if self.nchw else shape
        self.in_dtype = np.dtype(np.float32)
        self.x = None

    def set_input(self, x1):
        import numpy as np

        x = x1.transpose(0, 3, 1, 2) if self.nchw else x1
        self.x = np.ascontiguousarray(x, np.float32)

    def invoke(self):
        self.request.infer({0: self.x}, share_inputs=True)

    def output(self):
        return self.request.get_output_tensor(0).data.astype("float32")

    def describe(self) -> dict:
        return {"input_shape": self.input_shape, "layout": "NCHW" if self.nchw else "NHWC", **self.properties}


def openvino_properties(compiled) -> dict:
    """What the compiled model really runs with, read back from OpenVINO (not what was asked)."""
    def prop(name):
        try:
            v = compiled.get_property(name)
            return v.to_string() if hasattr(v, "to_string") else str(v)  # an ov.Type prints as <Type: 'float32'>
        except Exception:  # noqa: BLE001 - a property an older OpenVINO lacks is just unknown
            return None

    return {"device": "CPU", "inference_precision": prop("INFERENCE_PRECISION_HINT"),
            "threads": prop("INFERENCE_NUM_THREADS"), "streams": prop("NUM_STREAMS")}


def openvino_runtime_name(ov, props: dict) -> str:
    return (f"openvino {ov.get_version().split('-')[0]} (CPU, precision={props['inference_precision']}, "
            f"streams={props['streams']})")


def open_runner(args):
    if args.kernels != "default" and (openvino_xml(args.model) is not None or not args.model.endswith(".tflite")):
        raise AgentError("usage", "--kernels applies to .tflite models only")
    if openvino_xml(args.model) is not None or args.runtime == "openvino":
        if not os.path.exists(args.model):
            raise AgentError("model", f"{args.model}: no such file on {platform.node()}")
        if args.delegate:
            raise AgentError("usage", "--delegate applies to .tflite models only")
        return OpenVINORunner(args.model, args.threads, args.inference_precision)
    if not os.path.isfile(args.model):
        raise AgentError("model", f"{args.model}: no such file on {platform.node()}")
    if args.model.endswith(".onnx") or args.runtime == "onnxruntime":
        if args.delegate:
            raise AgentError("usage", "--delegate applies to .tflite models only")
        return OnnxRunner(args.model, args.threads, args.graph_optimization)
    if args.model.endswith((".engine", ".plan")):
        raise AgentError("runtime_missing", "TensorRT engines are timed with trtexec on the device, "
                         "not by this agent")
    if args.tensors_out and args.delegate:
        raise AgentError("usage", "--tensors-out runs LiteRT's own kernels or XNNPACK; not with --delegate")
    return TFLiteRunner(args.model, args.threads, args.delegate, args.runtime, args.kernels,
                        keep_all_tensors=bool(args.tensors_out))


# ----------------------------------------------------------------------------- main
def load_inputs(path: str | None, runner):
    import numpy as np

    if path is None:
        return random_inputs([1, *runner.input_shape[1:]], np.random.default_rng(0))
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise AgentError("inputs", f"{path}: not a plain numeric .npy ({e})") from None
    except OSError as e:
        raise AgentError("inputs", f"{path}: cannot read ({e})") from None
    if x.ndim != 4 or list(x.shape[1:]) != list(runner.input_shape[1:]):
        raise AgentError("inputs", f"{path}: inputs have shape {list(x.shape)} but the model takes "
                         f"[N, {', '.join(map(str, runner.input_shape[1:]))}]")
    return x.astype(np.float32)


def time_runs(runner, x1, runs: int, warmup: int) -> list[float]:
    """Per-inference wall time in ms of `runs` invocations after `warmup`; the input is set once.
    `runner` has set_input(x1) and invoke(): an agent runner, or an edgeq.measure.predictors.Predictor on the host."""
    runner.set_input(x1)
    for _ in range(warmup):
        runner.invoke()
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        runner.invoke()
        samples.append((time.perf_counter() - t) * 1e3)
    return samples


def run_outputs(runner, x):
    import numpy as np

    outs = []
    for i in range(len(x)):
        runner.set_input(x[i:i + 1])
        runner.invoke()
        outs.append(runner.output())
    return np.concatenate(outs).astype(np.float32)


def _bytes(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    return os.path.getsize(path)


def save_npz(path: str, arrays: dict) -> None:
    """Numeric arrays into an .npz (no pickle), written to path.part and renamed: a reader never sees half a file."""
    import numpy as np

    with open(path + ".part", "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(path + ".part", path)


def output_vs_plain_run(runner, path: str, threads, prefer: str, x, arrays: dict) -> float:
    """Max |difference| (raw units: LSB for integers) between the model output with every tensor kept and that of a
    plain run with the same kernels: keeping tensors changes how LiteRT delegates, and this says whether it mattered."""
    import numpy as np

    plain = TFLiteRunner(path, threads, None, prefer, runner.kernels)
    kept = arrays[f"t{int(runner.out['index'])}"]
    diff = 0.0
    for i in range(len(x)):
        plain.set_input(x[i:i + 1])
        plain.invoke()
        y = plain.interp.get_tensor(plain.out["index"]).astype(np.float64)
        diff = max(diff, float(np.max(np.abs(y - kept[i].astype(np.float64)))))
    return diff


def keep_tensors(args) -> dict:
    runner = open_runner(args)
    if not isinstance(runner, TFLiteRunner):
        raise AgentError("usage", "--tensors-out applies to .tflite models only")
    x = load_inputs(args.inputs, runner)
    ops, t = runner.op_tensors(x)
    save_npz(args.tensors_out, t["arrays"])
    diff = output_vs_plain_run(runner, args.model, args.threads, args.runtime, x, t["arrays"])
    return {"protocol": PROTOCOL, "ok": True, "agent_version": AGENT_VERSION, "runtime": runner.runtime,
            "device": identity(), "model": {"path": args.model, "bytes": _bytes(args.model), **runner.describe()},
            "kernels": args.kernels, "ops": ops, "tensors": t["tensors"], "tensors_file": args.tensors_out,
            "output_vs_plain_run": diff,  # max |difference| of the model output (raw units: LSB for integers)
            "inputs": {"source": args.inputs or "random uniform [-1, 1]", "n": int(len(x))}}


def benchmark(args) -> dict:
    import numpy as np

    runner = open_runner(args)
    x = load_inputs(args.inputs, runner)
    samples = time_runs(runner, x[:1], args.runs, args.warmup)
    res = {"protocol": PROTOCOL, "ok": True, "agent_version": AGENT_VERSION, "runtime": runner.runtime,
           "device": identity(), "model": {"path": args.model, "bytes": _bytes(args.model),
                                           **runner.describe()},
           "timing": {"samples_ms": [round(s, 5) for s in samples], "runs": args.runs, "warmup": args.warmup,
                      "threads": args.threads},
           "inputs": {"source": args.inputs or "random uniform [-1, 1]", "n": int(len(x))}}
    if args.outputs_out or args.return_outputs:
        y = run_outputs(runner, x)
        if args.outputs_out:
            with open(args.outputs_out, "wb") as f:
                np.save(f, y, allow_pickle=False)
            res["outputs_file"] = args.outputs_out
        else:
            res["outputs"] = y.tolist()
    return res


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # a usage error is JSON too, not argparse's own exit
        raise AgentError("usage", message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="agent.py", description="edgeq on-device agent (prints one JSON object)")
    p.add_argument("--info", action="store_true", help="print this machine's identity and runtimes")
    p.add_argument("--model")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int)
    p.add_argument("--inputs")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--outputs-out")
    out.add_argument("--return-outputs", action="store_true")
    p.add_argument("--delegate")
    p.add_argument("--graph-optimization", default="all", choices=["disable", "basic", "extended", "all"])
    p.add_argument("--runtime", default="auto", choices=["auto", *TFLITE_INTERPRETERS, "onnxruntime", "openvino"])
    p.add_argument("--inference-precision", default=None, choices=list(OPENVINO_PRECISIONS))
    p.add_argument("--kernels", default="default", choices=list(KERNELS))
    p.add_argument("--tensors-out")
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.info:
            res = {"protocol": PROTOCOL, "ok": True, "agent_version": AGENT_VERSION, "device": identity(),
                   "runtimes": available_runtimes()}
        else:
            if not args.model:
                raise AgentError("usage", "--model is required (or --info)")
            if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
                raise AgentError("usage", "--runs must be >= 1, --warmup >= 0, --threads >= 1")
            res = keep_tensors(args) if args.tensors_out else benchmark(args)
        print(json.dumps(res), flush=True)
        return 0
    except AgentError as e:
        if e.kind not in ("usage",):
            traceback.print_exc(file=sys.stderr)
        print(json.dumps({"protocol": PROTOCOL, "ok": False, "error": str(e), "error_kind": e.kind}), flush=True)
        return 2 if e.kind in ("usage", "runtime_missing") else 1
    except Exception as e:  # noqa: BLE001 - report anything else as one JSON line, traceback on stderr
        traceback.print_exc(file=sys.stderr)
        print(json.dumps({"protocol": PROTOCOL, "ok": False, "error_kind": "internal",
                          "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
