"""An FP32 ONNX classifier as a Keras (tf-keras) model in NHWC, so the TFLite stages take ONNX and PyTorch input.

The translation is onnx2tf's (what Ultralytics uses for ONNX -> TFLite -> Edge TPU), chosen by measurement
(docs/onnx_to_tflite.md). Two things around it:
- the ONNX is first constant-folded by ONNX Runtime's basic (EP-independent, standard-op) optimiser: PyTorch
  exports compute `Pad` amounts in constant subgraphs (ConstantOfShape/Slice/Concat...) that onnx2tf
  mistranslates; folded, they are plain initializers;
- onnx2tf checks its translation on sample images it downloads from GitHub; edgeq hands it the run's own
  calibration images instead, so nothing is fetched.
onnx2tf's wheel pins TensorFlow 2.19 / numpy 1.26, so it is installed with --no-deps; its real imports are
in edgeq's dependencies (INSTALL).
"""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import numpy as np

from edgeq.core.errors import ModelError, QuantizationError, RuntimeUnavailable, first_line
from edgeq.core.progress import spinner
from edgeq.core.tfcompat import quiet_stderr
from edgeq.loaders.onnx import OnnxInput
from edgeq.measure.predictors import OnnxPredictor, TFLitePredictor

ONNX2TF_PIN = "1.29.24"
INSTALL = f"pip install --no-deps onnx2tf=={ONNX2TF_PIN} (its wheel pins an older TensorFlow; edgeq carries its real needs)"


def _onnx2tf():
    try:
        import onnx2tf
        import onnx2tf.onnx2tf as impl
    except ImportError as e:
        raise RuntimeUnavailable(f"ONNX -> TFLite needs onnx2tf, which is not importable here ({first_line(e)}); "
                                 f"{INSTALL}") from None
    return onnx2tf, impl


def _with_free_batch(src: Path, info: OnnxInput, input_shape_hwc, out: Path) -> None:
    """`src` with its input's batch axis free and H/W/C set from model.input_shape. onnx2tf mistranslates some
    graphs with a fixed batch of 1 (GlobalAveragePool + Squeeze squeezes the batch axis away); the TFLite
    converter fixes batch 1 again."""
    import onnx

    model = onnx.load(str(src))
    h, w, c = input_shape_hwc
    dims = [c, h, w] if info.layout == "NCHW" else [h, w, c]
    inp = next(i for i in model.graph.input if i.name == info.name)
    shape = inp.type.tensor_type.shape.dim
    shape[0].Clear()
    shape[0].dim_param = "batch"
    for d, v in zip(list(shape)[1:], dims):
        d.Clear()
        d.dim_value = v
    for o in model.graph.output:
        if o.type.tensor_type.shape.dim:
            o.type.tensor_type.shape.dim[0].Clear()
            o.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]  # shapes inferred for batch 1 would contradict the free batch
    onnx.save(model, str(out))


def fold_constants(src: Path, out: Path) -> None:
    """`src` with constant subgraphs folded by ONNX Runtime's basic optimiser (standard ONNX ops only)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out)
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"{src}: onnxruntime cannot load it ({first_line(e)})") from None


@contextlib.contextmanager
def _sample_images(impl, images_nhwc: np.ndarray):
    """onnx2tf's sample-data download replaced by the run's images (restored afterwards)."""
    from onnx2tf.utils import common_functions

    data = np.ascontiguousarray(images_nhwc, np.float32)
    saved = impl.download_test_image_data, common_functions.download_test_image_data
    impl.download_test_image_data = common_functions.download_test_image_data = lambda: data
    try:
        yield
    finally:
        impl.download_test_image_data, common_functions.download_test_image_data = saved


def onnx_to_keras(onnx_path: Path, info: OnnxInput, images_nhwc: np.ndarray, workdir: Path, where: Path | None = None):
    """(tf-keras model with an NHWC input, notes). `images_nhwc`: preprocessed images onnx2tf checks on; their
    H, W, C are the model's input shape."""
    onnx2tf, impl = _onnx2tf()

    where = where or onnx_path
    workdir.mkdir(parents=True, exist_ok=True)
    free, folded = workdir / "free_batch.onnx", workdir / "folded.onnx"
    _with_free_batch(onnx_path, info, images_nhwc.shape[1:], free)
    fold_constants(free, folded)
    nhwc = [info.name] if info.layout == "NHWC" else None  # onnx2tf otherwise takes every 4-D input as NCHW
    t = time.perf_counter()
    log = io.StringIO()
    try:
        with spinner(f"translate {Path(where).name} ONNX -> TensorFlow (onnx2tf)"), quiet_stderr(), \
                _sample_images(impl, images_nhwc[:20]), contextlib.redirect_stdout(log):
            model = onnx2tf.convert(input_onnx_file_path=str(folded), output_folder_path=str(workdir / "tf"),
                                    not_use_onnxsim=True, keep_nwc_or_nhwc_or_ndhwc_input_names=nhwc, disable_model_save=True, non_verbose=True,
                                    copy_onnx_input_output_names_to_tflite=True)
    except SystemExit:  # onnx2tf exits on an op it cannot translate, after printing why
        raise QuantizationError(f"{where}: onnx2tf cannot translate this ONNX model to TensorFlow: "
                                f"{_last_error(log.getvalue())}") from None
    except Exception as e:
        raise QuantizationError(f"{where}: onnx2tf failed translating it to TensorFlow ({first_line(e, 300)})") from None
    if model is None:
        raise QuantizationError(f"{where}: onnx2tf returned no model: {_last_error(log.getvalue())}")
    shape = [int(d) if d is not None else None for d in model.inputs[0].shape]
    if len(shape) != 4 or shape[-1] != (info.dims[1] if info.layout == "NCHW" else info.dims[3]):
        raise QuantizationError(f"{where}: onnx2tf made an input of shape {shape}, not NHWC; edgeq needs a "
                                "channels-last image input for TFLite")
    return model, {"translator": f"onnx2tf {_version()}", "constant_folding": "onnxruntime basic",
                   "onnx_input_layout": info.layout, "tf_input_shape": shape,
                   "translate_seconds": round(time.perf_counter() - t, 1)}


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    return ((errs or lines or ["no output"])[-1])[:300]


def _version() -> str:
    from importlib.metadata import version

    return version("onnx2tf")


def fidelity(onnx_path: Path, tflite_path: Path, images_nhwc: np.ndarray) -> dict:
    """How closely the FP32 TFLite reproduces the FP32 ONNX: max |Δlogit|, relative to the largest |logit|,
    and top-1 agreement, over `images_nhwc` (preprocessed)."""
    ref = OnnxPredictor(onnx_path, graph_optimization="basic").predict(images_nhwc)
    got = TFLitePredictor(tflite_path).predict(images_nhwc)
    diff = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max()) or 1.0
    return {"images": int(len(images_nhwc)), "max_abs_logit_diff": diff, "relative": diff / scale,
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}


def param_floor_bytes(onnx_path: Path) -> dict:
    """An INT8 model's size floor from the ONNX weights: Conv/Gemm/MatMul weights x 1 byte + an int32 bias per
    output channel (batch norm folds into those), as tflite_ptq.param_floor_bytes does for Keras."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    weights = biases = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            weights += int(w.size)
            transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            biases += int(w.shape[0] if node.op_type == "Conv" or transposed else w.shape[-1])
    return {"weights": weights, "biases": biases, "floor_bytes": weights + 4 * biases}
