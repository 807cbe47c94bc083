"""One Predictor over Keras, the LiteRT/TFLite interpreter, ONNX Runtime and OpenVINO.

Evaluation and benchmarking only ever see `Predictor`: float32 NHWC batches in (already normalised by
the model's preprocessing), float32 scores out. int8/uint8 input and output quantisation parameters
and NCHW models are handled here, with the on-device agent's own helpers, so host and device agree.
Which class opens which format is a row of edgeq.core.formats.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# one definition for this machine and the devices: the agent's (it must stay a standalone file)
from edgeq.core.errors import ModelError, RuntimeUnavailable, first_line
from edgeq.core.formats import predictor_factory, predictor_on
from edgeq.core.tfcompat import quiet_stderr, tf
from edgeq.loaders.keras import load_keras_model
from edgeq.ondevice.agent import dequantize as dequantize_output
from edgeq.ondevice.agent import is_nchw, ort_session_options, time_runs
from edgeq.ondevice.agent import (OPENVINO_PRECISIONS, openvino_config, openvino_model_file, openvino_precision_of,
                                  openvino_properties, openvino_runtime_name)
from edgeq.ondevice.agent import quantize as quantize_input


class Predictor:
    """Float32 NHWC batches in, float32 scores out. `set_input` + `invoke` time one image without copies."""

    runtime: str = ""  # human-readable runtime and version
    fmt: str = ""
    input_shape: tuple  # NHWC, batch first (may be None/-1)
    threads: int | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def set_input(self, x1: np.ndarray) -> None:
        self._x1 = x1[:1]

    def invoke(self) -> None:
        self.predict(self._x1)

    def time_runs(self, x1: np.ndarray, runs: int, warmup: int) -> list[float]:
        """Per-inference wall time in ms of `runs` single-image inferences after `warmup` (the agent's loop)."""
        return time_runs(self, x1, runs, warmup)

    def describe(self) -> dict:
        return {"runtime": self.runtime, "threads": self.threads}


# ------------------------------------------------------------------- Keras
class KerasPredictor(Predictor):
    fmt = "keras"

    def __init__(self, model, batch_size: int = 64):
        self.model = model
        self.batch_size = batch_size
        self.input_shape = tuple(model.input_shape)
        self.runtime = f"tensorflow {tf().__version__} (tf-keras)"
        self._fn = tf().function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(self, x):
        return np.asarray(self._fn(np.ascontiguousarray(x, np.float32)), np.float32)


def open_keras(path: Path, threads: int | None = None) -> KerasPredictor:
    """A predictor over a Keras, HDF5 or SavedModel file (the format is told by its name)."""
    return KerasPredictor(load_keras_model(Path(path)))


# ------------------------------------------------------------------- TFLite / LiteRT
def load_tflite_interpreter(path: Path | None = None, content: bytes | None = None, threads: int | None = None,
                            delegates=None):
    try:
        from ai_edge_litert.interpreter import Interpreter
        rt = "ai-edge-litert"
    except ImportError:  # pragma: no cover - fallback where ai-edge-litert does not install
        try:
            from tflite_runtime.interpreter import Interpreter
            rt = "tflite-runtime"
        except ImportError:
            Interpreter = tf().lite.Interpreter
            rt = "tf.lite"
    kw = {"num_threads": threads} if threads else {}
    if delegates:
        kw["experimental_delegates"] = delegates

    try:
        with quiet_stderr():
            interp = Interpreter(model_path=str(path), **kw) if path is not None else Interpreter(model_content=content, **kw)
            interp.allocate_tensors()  # XNNPACK announces itself here
    except (ValueError, RuntimeError) as e:
        raise ModelError(f"{path or 'tflite model'}: not a loadable .tflite model ({first_line(e)})") from None
    return interp, rt


def _pkg_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


class TFLitePredictor(Predictor):
    fmt = "tflite"

    def __init__(self, path: Path, threads: int | None = None, batch_size: int = 32):
        self.path = Path(path)
        self.threads = threads
        self.interp, rt = load_tflite_interpreter(self.path, threads=threads)
        self.runtime = f"{rt} {_pkg_version(rt)}"
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.inp["shape_signature"])
        self.input_dtype = np.dtype(self.inp["dtype"])
        self.output_dtype = np.dtype(self.out["dtype"])
        self.in_q = self.inp["quantization"]
        self.out_q = self.out["quantization"]
        if np.issubdtype(self.input_dtype, np.integer) and not self.in_q[0]:
            raise ModelError(f"{self.path}: quantized model input has scale 0")
        self._batch = 1
        self._dynamic = self.input_shape[0] == -1
        self.batch_size = batch_size if self._dynamic else 1

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self.interp.resize_tensor_input(self.inp["index"], [n, *self.inp["shape"][1:]])
            self.interp.allocate_tensors()
            self._batch = n

    def _run(self, xq: np.ndarray) -> np.ndarray:
        self._resize(len(xq))
        self.interp.set_tensor(self.inp["index"], xq)
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"])

    def predict(self, x):
        x = np.asarray(x, np.float32)
        xq = quantize_input(x, self.input_dtype, *self.in_q)
        outs = []
        step = self.batch_size
        for s in range(0, len(xq), step):
            outs.append(dequantize_output(self._run(xq[s:s + step]), *self.out_q))
        return np.concatenate(outs)

    def set_input(self, x1):
        self._resize(1)
        xq = quantize_input(np.asarray(x1[:1], np.float32), self.input_dtype, *self.in_q)
        self.interp.set_tensor(self.inp["index"], xq)

    def invoke(self):
        self.interp.invoke()

    def describe(self):
        return {"runtime": self.runtime, "threads": self.threads, "input_dtype": str(self.input_dtype),
                "output_dtype": str(self.output_dtype), "input_quantization": list(self.in_q),
                "output_quantization": list(self.out_q)}


# ------------------------------------------------------------------- ONNX Runtime
class OnnxPredictor(Predictor):
    fmt = "onnx"

    def __init__(self, path: Path, threads: int | None = None, graph_optimization: str = "all",
                 batch_size: int = 32):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
        self.path = Path(path)
        self.threads = threads
        self.graph_optimization = graph_optimization
        so = ort_session_options(ort, threads, graph_optimization)
        try:
            self.sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{self.path}: onnxruntime cannot load it ({first_line(e)})") from None
        self.runtime = f"onnxruntime {ort.__version__} (CPU EP, opt={graph_optimization})"
        i = self.sess.get_inputs()[0]
        self.input_name = i.name
        self.output_name = self.sess.get_outputs()[0].name
        shape = [d if isinstance(d, int) else -1 for d in i.shape]
        self.nchw = is_nchw(shape)
        self.input_shape = (shape[0], shape[2], shape[3], shape[1]) if self.nchw else tuple(shape)
        self._dynamic = shape[0] == -1
        self.batch_size = batch_size if self._dynamic else 1

    def _feed(self, x):
        x = np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2) if self.nchw else x, np.float32)
        return {self.input_name: x}

    def predict(self, x):
        outs = []
        for s in range(0, len(x), self.batch_size):
            outs.append(self.sess.run([self.output_name], self._feed(x[s:s + self.batch_size]))[0])
        return np.concatenate(outs).astype(np.float32)

    def set_input(self, x1):
        self._single = self._feed(x1[:1])

    def invoke(self):
        self.sess.run([self.output_name], self._single)

    def describe(self):
        return {"runtime": self.runtime, "threads": self.threads, "graph_optimization": self.graph_optimization,
                "layout": "NCHW" if self.nchw else "NHWC"}


# ------------------------------------------------------------------- OpenVINO
OPENVINO_INSTALL = "pip install 'edgeq[openvino]' (openvino and nncf)"


def import_openvino():
    """The openvino module; RuntimeUnavailable naming the install when it is missing."""
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeUnavailable(f"openvino is not installed: {OPENVINO_INSTALL}") from None
    return ov


class OpenVINOPredictor(Predictor):
    """An OpenVINO IR (directory with model.xml + model.bin), or an ONNX model, on this CPU. The inference precision is always set
    (f32 unless asked otherwise: OpenVINO's default runs bfloat16 on CPUs with AMX/AVX512-BF16), one stream,
    and what OpenVINO really compiled (precision, threads, streams) is read back and recorded."""

    fmt = "openvino"

    def __init__(self, path: Path, threads: int | None = None, inference_precision: str | None = None,
                 batch_size: int = 32):
        if inference_precision is not None and inference_precision not in OPENVINO_PRECISIONS:
            raise ModelError(f"{path}: inference precision {inference_precision!r} is not one OpenVINO's CPU runs; "
                             f"use one of {', '.join(OPENVINO_PRECISIONS)}")
        ov = import_openvino()
        self.path = Path(path)
        self.threads = threads
        xml = openvino_model_file(str(self.path))  # an IR, or an .onnx timed on OpenVINO too (formats.other_runtimes)
        if xml is None:
            raise ModelError(f"{self.path}: not an OpenVINO IR (a directory with one model.xml and its model.bin) nor "
                             "an .onnx model")
        core = ov.Core()
        try:
            model = core.read_model(xml)
            self._dynamic = model.input(0).get_partial_shape()[0].is_dynamic
            asked = inference_precision or openvino_precision_of(model) or "f32"  # the IR's own (a variant), else f32
            self.compiled = core.compile_model(model, "CPU", openvino_config(threads, asked))
        except Exception as e:  # openvino raises its own exception types
            raise ModelError(f"{self.path}: openvino cannot load it ({first_line(e)})") from None
        self.request = self.compiled.create_infer_request()
        self.properties = openvino_properties(self.compiled)
        self.inference_precision = self.properties["inference_precision"]
        self.runtime = openvino_runtime_name(ov, self.properties)
        shape = [d.get_length() if d.is_static else -1 for d in self.compiled.input(0).get_partial_shape()]
        self.nchw = is_nchw(shape)
        self.input_shape = (shape[0], shape[2], shape[3], shape[1]) if self.nchw else tuple(shape)
        self.batch_size = batch_size if self._dynamic else 1

    def _feed(self, x):
        return np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2) if self.nchw else x, np.float32)

    def predict(self, x):
        outs = []
        for s in range(0, len(x), self.batch_size):
            self.request.infer({0: self._feed(x[s:s + self.batch_size])})
            outs.append(self.request.get_output_tensor(0).data.copy())
        return np.concatenate(outs).astype(np.float32)

    def set_input(self, x1):
        self._single = self._feed(x1[:1])

    def invoke(self):
        self.request.infer({0: self._single}, share_inputs=True)

    def describe(self):
        return {"runtime": self.runtime, "layout": "NCHW" if self.nchw else "NHWC", **self.properties,
                "threads": self.threads, "openvino_threads": self.properties["threads"]}


def open_predictor(path: Path, fmt: str, threads: int | None = None, runtime: str | None = None, **kw) -> Predictor:
    """A predictor for an artifact file of the given format (edgeq.core.formats names the class), on its format's own
    runtime or on `runtime`, another that reads that format (formats.Format.other_runtimes)."""
    factory = predictor_factory(fmt) if runtime is None else predictor_on(fmt, runtime)
    if factory is None:
        on = "" if runtime is None else f" on runtime {runtime!r}"
        raise ModelError(f"{path}: no predictor for format {fmt!r}{on} on this machine")
    return factory(Path(path), threads=threads, **kw)
