"""Shared by the latency benchmarks: random-weight Keras applications at realistic input sizes, their FP32/INT8
TFLite and ONNX artifacts made with edgeq's own conversion code (cached per model in a work directory), MAC
counts from the Keras layers, and interleaved timing with intervals.

Nothing here downloads anything: models are built with weights=None and calibrated on seeded noise, which is
enough for latency (int8 kernels do not run faster or slower on other values).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

APPLICATIONS = {"resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2"}


def build(name: str, size: int = 224, seed: int = 0):
    """A tf_keras.applications model with random weights (weights=None: no download), 1000 classes."""
    from edgeq.core.tfcompat import keras, set_seed

    set_seed(seed)
    return getattr(keras().applications, APPLICATIONS[name])(weights=None, input_shape=(size, size, 3),
                                                              classes=1000)


def calibration_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Seeded smooth noise in [-1, 1] (the applications' preprocessing range), NHWC float32."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (n, size // 8, size // 8, 3)).astype(np.float32)
    return np.clip(coarse.repeat(8, 1).repeat(8, 2) + rng.normal(0, 0.1, (n, size, size, 3)), -1, 1).astype(np.float32)


def count_macs(model) -> dict[str, int]:
    """Multiply-accumulates of one image, by layer kind (Conv2D, DepthwiseConv2D, Dense), from the Keras layers."""
    macs: dict[str, int] = {}
    from edgeq.methods.tflite.convert import leaf_layers

    for layer in leaf_layers(model):
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        out = [int(d) for d in layer.output.shape[1:]]
        if kind == "Dense":
            n = int(layer.kernel.shape[0]) * out[-1]
        elif kind == "DepthwiseConv2D":
            kh, kw, _cin, _mult = (int(d) for d in layer.depthwise_kernel.shape)
            n = out[0] * out[1] * out[2] * kh * kw
        else:
            kh, kw, cin, cout = (int(d) for d in layer.kernel.shape)
            n = out[0] * out[1] * cout * kh * kw * cin // max(1, getattr(layer, "groups", 1))
        macs[kind] = macs.get(kind, 0) + n
    macs["total"] = sum(macs.values())
    return macs


def work_dir(default_name: str = "edgeq_bench") -> Path:
    d = Path(os.environ.get("EDGEQ_BENCH_DIR", Path(tempfile.gettempdir()) / default_name))
    d.mkdir(parents=True, exist_ok=True)
    return d


def artifacts(name: str, size: int, calibration: int, directory: Path, log: Callable[[str], None] = print,
              model=None) -> dict[str, Path]:
    """FP32 + INT8 TFLite and FP32 + INT8 ONNX of a random-weight application, made by edgeq's conversion code
    (tflite_ptq.convert_fp32/convert_int8, onnx_export.keras_to_onnx, ort_int8.prepare/quantize_onnx with the
    host scheme), cached in `directory/<name>_<size>/`; returns {artifact name: path}."""
    d = directory / f"{name}_{size}"
    d.mkdir(parents=True, exist_ok=True)
    paths = {"fp32_tflite": d / "fp32.tflite", "int8_tflite": d / "int8.tflite",
             "fp32_onnx": d / "fp32.onnx", "int8_onnx": d / "int8.onnx"}
    if all(p.is_file() for p in paths.values()):
        return paths
    from edgeq.methods.tflite import convert as tflite_ptq
    from edgeq.methods.onnx.from_keras import INPUT_NAME, keras_to_onnx
    from edgeq.loaders.onnx import OnnxInput
    from edgeq.methods.onnx.ort_int8 import host_int8_scheme, host_op_types, prepare, quantize_onnx
    from edgeq.core.sysinfo import cpu_info

    model = model or build(name, size)
    cal = calibration_images(calibration, size)

    def timed(what: str, fn):
        t = time.perf_counter()
        fn()
        log(f"  made {what} in {time.perf_counter() - t:.1f} s")

    if not paths["fp32_tflite"].is_file():
        timed(f"{name} fp32.tflite", lambda: paths["fp32_tflite"].write_bytes(tflite_ptq.convert_fp32(model)))
    if not paths["int8_tflite"].is_file():
        rep = lambda: ([cal[i:i + 1]] for i in range(len(cal)))  # noqa: E731 - the converter's generator
        timed(f"{name} int8.tflite", lambda: paths["int8_tflite"].write_bytes(
            tflite_ptq.convert_int8(model, rep, calibration_images=len(cal))))
    if not paths["fp32_onnx"].is_file():
        timed(f"{name} fp32.onnx", lambda: keras_to_onnx(model, paths["fp32_onnx"]))
    if not paths["int8_onnx"].is_file():
        scheme = host_int8_scheme(cpu_info())
        with tempfile.TemporaryDirectory() as work:
            info = OnnxInput(INPUT_NAME, [None, 3, size, size], "NCHW", None)
            timed(f"{name} int8.onnx ({scheme.activation_type}/{scheme.weight_type} {scheme.quant_format})",
                  lambda: quantize_onnx(prepare(paths["fp32_onnx"], info, (size, size, 3), Path(work), name),
                                        paths["int8_onnx"], scheme, cal, input_name=INPUT_NAME, nchw=True,
                                        batch=None, calibration_method="minmax", exclude_nodes=[],
                                        op_types=host_op_types(scheme.quant_format)))
    return paths


# ----------------------------------------------------------------------------------------- timing
def interleaved(invokers: dict[str, Callable[[], None]], rounds: int, runs: int, warmup: int,
                log: Callable[[str], None] = lambda m: None) -> dict[str, list[float]]:
    """Median ms of each round per name; rounds rotate the order (A B C, B C A, ...), each with its own warm-up."""
    from edgeq.targets.interleave import round_orders

    meds: dict[str, list[float]] = {n: [] for n in invokers}
    for r, order in enumerate(round_orders(list(invokers), rounds)):
        for name in order:
            call = invokers[name]
            for _ in range(warmup):
                call()
            samples = []
            for _ in range(runs):
                t = time.perf_counter()
                call()
                samples.append((time.perf_counter() - t) * 1e3)
            meds[name].append(float(np.median(samples)))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {meds[n][-1]:.3g}" for n in order) + " ms")
    return meds


def predictor_invoker(pred, x1: np.ndarray) -> Callable[[], None]:
    pred.set_input(x1)
    return pred.invoke


def median_ci(values: list[float]) -> tuple[float, float, float]:
    from edgeq.core.stats import median_interval

    m, lo, hi, _ = median_interval(values)
    return m, lo, hi


def ratio_ci(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median and 95 % interval of per-round ratios num/den (same round: same load)."""
    return median_ci([a / b for a, b in zip(num, den)])


def fmt_ci(v: tuple[float, float, float], spec: str = ".3g") -> str:
    return f"{v[0]:{spec}} [{v[1]:{spec}}, {v[2]:{spec}}]"
