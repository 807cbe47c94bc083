"""int8_onnx_ptq_adv: the better-PTQ route for ONNX Runtime, each step kept only where it lowers the measured
output error against the FP32 ONNX model on held-back calibration images.

Candidates, all with the host model's int8 scheme and ORT's own Q/DQ graph:
- per-tensor ranges (`onnx_ranges`): each activation tensor's range method chosen by its measured error;
- for a Keras input with equalisable layer pairs: the cross-layer-equalised model (`equalize`), exported and
  quantized with its own per-tensor ranges;
- min-max everywhere (what int8_onnx_ptq does), so the route can never pick something measured worse.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgeq.methods.keras import equalize
from edgeq.methods.keras.bias_correction import lowest_error, output_error
from edgeq.methods.onnx import ranges as onnx_ranges
from edgeq.methods.onnx.from_keras import keras_to_onnx
from edgeq.methods.onnx.ort_int8 import Int8Scheme, prepare, quantize_onnx
from edgeq.methods.shared.budget import predict


def quantize_advanced(tmp: Path, *, prepared: Path, scheme: Int8Scheme, op_types: list[str], calibration: np.ndarray,
                      held: np.ndarray, input_name: str, nchw: bool, batch: int | None, exclude_nodes: list[str],
                      workdir: Path, equalized_prepared=None, value_images: int = 32,
                      minmax_model: Path | None = None) -> dict:
    """Write the candidate with the lowest output MSE against `prepared` (FP32) on `held` to `tmp`; its notes.

    `equalized_prepared`: a callable returning the prepared FP32 ONNX of the equalised Keras model (and the
    equalisation notes), or None when there is none. `minmax_model`: the min-max model of this scheme, op types,
    calibration and exclusions where the caller has made it already (int8_onnx_ptq), so it is not quantized twice."""
    io = {"input_name": input_name, "nchw": nchw, "batch": batch}
    ref = predict(prepared, held, input_name, nchw, batch)

    def quantize(src: Path, name: str, cache: Path | None) -> Path:
        out = workdir / f"{name}.onnx"
        quantize_onnx(src, out, scheme, calibration, calibration_method="minmax", exclude_nodes=exclude_nodes,
                      op_types=op_types, name=f"int8_onnx_ptq_adv ({name})", calibration_cache=cache, **io)
        return out

    def per_tensor(src: Path, name: str) -> tuple[Path, dict]:
        cands = {m: onnx_ranges.ort_ranges(src, calibration, m, op_types=op_types,
                                           symmetric=scheme.activation_symmetric, **io)
                 for m in onnx_ranges.ORT_METHODS}
        values = onnx_ranges.tensor_values(src, list(cands["minmax"]), calibration[:value_images], **io)
        ranges, summary = onnx_ranges.choose_ranges(cands, values, scheme)
        return quantize(src, name, onnx_ranges.write_cache(ranges, workdir / f"{name}.ranges.json")), summary

    models = {"minmax": (minmax_model if minmax_model is not None else quantize(prepared, "minmax", None), {})}
    models["per_tensor_ranges"] = per_tensor(prepared, "per_tensor_ranges")
    equalization = {"equalized_pairs": 0}
    if equalized_prepared is not None:
        eq_src, equalization = equalized_prepared()
        models["equalization+per_tensor_ranges"] = per_tensor(eq_src, "equalized")
    errors = {name: output_error(ref, predict(path, held, input_name, nchw, batch))
              for name, (path, _) in models.items()}
    chosen = lowest_error(errors, prefer=("equalization+per_tensor_ranges", "per_tensor_ranges"))
    path, summary = models[chosen]
    shutil.copyfile(path, tmp)
    return {"route": chosen, "candidates": errors, "ranges": summary, "equalization": equalization,
            "scheme": scheme.to_dict(), "calibration_images": int(len(calibration)),
            "selection": f"lowest output MSE against the FP32 ONNX on {len(held)} held-back calibration images"}


def equalized_onnx(model, calibration: np.ndarray, opset: int, info, hwc, workdir: Path):
    """A callable making the prepared FP32 ONNX of the cross-layer-equalised `model` (None without pairs)."""
    if not equalize.find_pairs(model):
        return None

    def make():
        eq, rep = equalize.equalize(model, [(calibration[i:i + 32], None) for i in range(0, len(calibration), 32)],
                                    label="int8_onnx_ptq_adv: cross-layer equalisation")
        d = workdir / "equalized"
        d.mkdir(exist_ok=True)
        keras_to_onnx(eq, d / "fp32_equalized.onnx", opset, name="fp32_onnx (equalised)")
        return prepare(d / "fp32_equalized.onnx", info, hwc, d, "fp32_onnx (equalised)"), rep.to_dict()
    return make
