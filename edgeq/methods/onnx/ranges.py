"""Per-tensor choice of the activation range method for ONNX Runtime static INT8, by measured error.

ORT applies one calibration method to every tensor. Here each activation tensor gets the range, among ORT's
min-max, percentile and entropy calibrations and an MSE search over clipped min-max ranges, whose int8
quantisation of that tensor's real values (calibration images) has the lowest mean squared error, under the
scheme the model is quantized with (asymmetric uint8 or symmetric int8, ORT's own scale/zero-point rule). The
ranges go to `quantize_static` as a calibration cache, so the Q/DQ graph is ORT's own.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgeq.core.errors import QuantizationError, first_line
from edgeq.methods.onnx.ort_int8 import Int8Scheme, calibration_reader
from edgeq.methods.shared.budget import ort_feed, ort_session, with_outputs

ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
CLIP_RATIOS = np.linspace(0.2, 1.0, 41)  # the MSE search: fractions of the min-max range
MAX_VALUES = 1_000_000  # values per tensor the errors are measured on (a fixed-seed sample beyond that)
# images ORT's histogram calibrators (percentile, entropy) see: their Python histogram pass is most of this
# route's time, and 128 images give every tensor's histogram hundreds of thousands of values
HISTOGRAM_IMAGES = 128


def ort_ranges(prepared: Path, calibration: np.ndarray, method: str, *, input_name: str, nchw: bool,
               batch: int | None, op_types: list[str], symmetric: bool) -> dict[str, tuple[float, float]]:
    """tensor -> (low, high) from ORT's calibrator `method` over `calibration`."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    extra = {"symmetric": symmetric} if method != "minmax" else {}
    if method != "minmax":
        calibration = calibration[:HISTOGRAM_IMAGES]
        if not batch and len(calibration) >= 32:
            # ORT's histogram calibrators stack per-batch outputs: every batch must have the same size
            calibration = calibration[:len(calibration) // 32 * 32]
    with tempfile.TemporaryDirectory(prefix="edgeq.ranges.") as d:
        try:
            cal = create_calibrator(Path(prepared), op_types, augmented_model_path=str(Path(d) / "augmented.onnx"),
                                    calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]),
                                    extra_options=extra)
            cal.collect_data(calibration_reader(calibration, input_name, nchw, batch))
            data = cal.compute_data()
        except (ValueError, RuntimeError, KeyError, IndexError) as e:
            raise QuantizationError(f"onnxruntime {method} calibration failed ({first_line(e, 300)})") from None
    return {k: (float(np.asarray(v.range_value[0]).ravel()[0]), float(np.asarray(v.range_value[1]).ravel()[0]))
            for k, v in data.data.items()}


def qdq_error(v: np.ndarray, low: float, high: float, scheme: Int8Scheme) -> float:
    """Mean squared error of `v` quantized to the scheme's activation type over [low, high] (ORT's rule: the
    range widened to hold 0; symmetric: +-max|.|)."""
    qmin, qmax = (0, 255) if scheme.activation_type == "uint8" else (-128, 127)
    low, high = min(low, 0.0), max(high, 0.0)
    if scheme.activation_symmetric:
        m = max(abs(low), abs(high))
        low, high = -m, m
    if high - low <= 0:
        return float(np.mean(v.astype(np.float64) ** 2))
    scale = (high - low) / (qmax - qmin)
    zp = np.round(qmin - low / scale)
    q = np.clip(np.round(v / scale) + zp, qmin, qmax)
    return float(np.mean(((q - zp) * scale - v) ** 2))


def tensor_values(prepared: Path, names: list[str], x: np.ndarray, *, input_name: str, nchw: bool,
                  batch: int | None) -> dict[str, np.ndarray]:
    """Each named tensor's values over the images `x` (flattened; a fixed sample when large)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="edgeq.values.") as d:
        sess = ort_session(with_outputs(prepared, names, Path(d) / "probe.onnx"), "disable")
        outputs = [o.name for o in sess.get_outputs()]
        want = [n for n in names if n in outputs]
        step = batch or 16
        got: dict[str, list] = {n: [] for n in want}
        for s in range(0, len(x), step):
            xs = x[s:s + step]
            if batch and len(xs) != batch:
                break
            for n, v in zip(want, sess.run(want, ort_feed(xs, input_name, nchw))):
                got[n].append(np.asarray(v, np.float32).ravel())
    out = {}
    for n, parts in got.items():
        v = np.concatenate(parts)
        out[n] = v if len(v) <= MAX_VALUES else rng.choice(v, MAX_VALUES, replace=False)
    return out


def choose_ranges(candidates: dict[str, dict[str, tuple[float, float]]], values: dict[str, np.ndarray],
                  scheme: Int8Scheme) -> tuple[dict[str, tuple[float, float]], dict]:
    """Per tensor the candidate range (by method, plus the MSE-searched clip of min-max) with the lowest
    measured quantisation error; tensors without measured values keep min-max. Returns ranges and a summary."""
    base = candidates["minmax"]
    chosen, methods, gains = {}, Counter(), []
    for name, (lo, hi) in base.items():
        v = values.get(name)
        if v is None or not len(v):
            chosen[name] = (lo, hi)
            methods["minmax (no values)"] += 1
            continue
        options = {m: r[name] for m, r in candidates.items() if name in r}
        errs = {m: qdq_error(v, *r, scheme) for m, r in options.items()}
        clip = {a: qdq_error(v, lo * a, hi * a, scheme) for a in CLIP_RATIOS}
        a = min(clip, key=clip.get)
        options["mse"], errs["mse"] = (lo * a, hi * a), clip[a]
        best = min(errs, key=lambda m: (errs[m], m != "minmax"))
        chosen[name] = options[best]
        methods[best] += 1
        if errs["minmax"] > 0:
            gains.append(10 * np.log10(errs["minmax"] / max(errs[best], 1e-30)))
    summary = {"tensors": len(chosen), "method_counts": dict(sorted(methods.items())),
               "median_error_reduction_db": round(float(np.median(gains)), 2) if gains else 0.0,
               "rule": "per activation tensor: the range whose int8 quantisation of the tensor's calibration "
                       "values has the lowest mean squared error (ORT min-max / percentile / entropy, or min-max "
                       "clipped by an MSE search)"}
    return chosen, summary


def write_cache(ranges: dict[str, tuple[float, float]], path: Path) -> Path:
    """`ranges` as ORT's calibration cache (labelled MinMax: quantize_static then takes them as they are)."""
    from onnxruntime.quantization.calibrate import (CalibrationMethod, TensorData, TensorsData,
                                                    save_tensors_data)

    data = TensorsData(CalibrationMethod.MinMax, {
        k: TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
        for k, (lo, hi) in ranges.items()})
    save_tensors_data(data, path)
    return path
