"""Per-op measurement of LiteRT models against their FP32 .tflite: every op's input and output tensors on real
images, the SQNR each op loses, and the two choices made from it — the ops a float fallback leaves float
(`tflite_backend`) and the range method per op of an `auto` recipe (`choose_op_ranges`).
"""
from __future__ import annotations

import numpy as np

from edgeq.core.tfcompat import quiet_stderr
from edgeq.measure.predictors import TFLitePredictor, dequantize_output, quantize_input
from edgeq.methods.keras.bias_correction import lowest_error, tflite_output_errors
from edgeq.methods.shared.budget import Backend, NodeEffect, sqnr
from edgeq.methods.tflite.litert import (AUTO_METHODS, RANGE_DESC, Recipe, float_op_regex, quantize_tflite, recipe_entries)


def _tensors(path_or_bytes, x: np.ndarray) -> tuple[list[tuple[str, str, str]], dict[str, np.ndarray]]:
    """(op name, first activation input, output) of every op but (de)quantize, and every tensor's dequantized
    value over the images `x` (one invoke per image, all tensors kept)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {"model_content": path_or_bytes} if isinstance(path_or_bytes, (bytes, bytearray)) else \
        {"model_path": str(path_or_bytes)}
    with warnings.catch_warnings(), quiet_stderr():
        warnings.simplefilter("ignore")
        it = Interpreter(**kw, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
    details = {t["index"]: t for t in it.get_tensor_details()}
    inp = it.get_input_details()[0]
    op_list = it._get_ops_details()
    # activations: tensors an op writes, or the graph input; everything else is a constant (weights, biases)
    activations = {o for op in op_list for o in op["outputs"]} | {d["index"] for d in it.get_input_details()}
    ops = []
    for op in op_list:
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE") or not len(op["outputs"]):
            continue
        acts = [i for i in op["inputs"] if i in activations and i in details]
        if acts:
            ops.append((op["op_name"], details[acts[0]]["name"], details[op["outputs"][0]]["name"]))
    names = {n for _, i, o in ops for n in (i, o)}
    index = {d["name"]: k for k, d in details.items() if d["name"] in names}
    values: dict[str, list] = {n: [] for n in index}
    for img in x:
        it.set_tensor(inp["index"], quantize_input(img[None].astype(np.float32), np.dtype(inp["dtype"]),
                                                   *inp["quantization"]))
        it.invoke()
        for n, k in index.items():
            values[n].append(dequantize_output(it.get_tensor(k), *details[k]["quantization"]))
    return ops, {n: np.concatenate([v.ravel() for v in vs]) for n, vs in values.items() if vs}


def tflite_sensitivity(fp32_tflite: bytes, int8_path, x: np.ndarray) -> list:
    """Every op of the INT8 model with the SQNR it loses (its input's SQNR minus its output's against the FP32
    model), most sensitive first; NodeEffect.node is the op's output tensor (its scope in a recipe)."""
    _, ref = _tensors(fp32_tflite, x)
    losses = sqnr_losses(ref, *_tensors(int8_path, x))
    return sorted((NodeEffect(o, op, loss) for o, (op, loss) in losses.items()), key=lambda e: -e.sqnr_loss_db)


def tflite_backend(fp32_tflite: bytes, recipe: Recipe, calibration: np.ndarray, ranges: dict, x: np.ndarray):
    """The fallback search's view of litert-quantizer: ops left float by a selective recipe (`no_quantize`)."""
    def quantize(exclude: list[str], path) -> None:
        data, _ = quantize_tflite(fp32_tflite, recipe, calibration, name="int8_tflite_fallback",
                                  float_ops=tuple(float_op_regex(n) for n in exclude), ranges=ranges)
        path.write_bytes(data)

    def run(path) -> np.ndarray:
        return TFLitePredictor(path).predict(x).reshape(len(x), -1)

    def rank(int8_path) -> list:
        return tflite_sensitivity(fp32_tflite, int8_path, x[:16])

    return Backend(".tflite", quantize, run, rank, _predict_tflite(fp32_tflite, x).reshape(len(x), -1))


def choose_op_ranges(fp32_tflite: bytes, recipe: Recipe, calibration: np.ndarray, ranges: dict, x: np.ndarray,
                     held: np.ndarray, *, name: str) -> tuple[bytes, dict]:
    """An `auto` recipe: per op the range method (AUTO_METHODS) that loses the least SQNR at that op on `x`, then
    whichever of the per-op model and the uniform ones has the lowest output MSE against FP32 on `held`."""
    from dataclasses import replace

    _, ref = _tensors(fp32_tflite, x)
    uniform, losses = {}, {}
    for method in AUTO_METHODS:
        r = replace(recipe, name=f"{recipe.name}:{method}", range_method=method)
        uniform[method] = quantize_tflite(fp32_tflite, r, calibration, name=name, ranges=ranges)
        for out, (op_type, loss) in sqnr_losses(ref, *_tensors(uniform[method][0], x)).items():
            losses.setdefault(out, {})[method] = (op_type, loss)
    # ties keep min-max (the first method): a method must measurably help an op to be chosen there
    choice = {out: (next(iter(v.values()))[0], min(v, key=lambda m: (v[m][1], AUTO_METHODS.index(m))))
              for out, v in losses.items()}
    op_ranges = {out: c for out, c in choice.items() if c[1] != "minmax"}
    candidates = {**{f"uniform {m}": u for m, u in uniform.items()},
                  "per op": quantize_tflite(fp32_tflite, recipe, calibration, name=name, ranges=ranges,
                                            op_ranges=op_ranges)}
    errors = tflite_output_errors(_predict_tflite(fp32_tflite, held), {k: d for k, (d, _) in candidates.items()}, held)
    chosen = lowest_error(errors, prefer=("per op",))
    data, notes = candidates[chosen]
    from collections import Counter

    notes.update(recipe=recipe.to_dict(), range_method=RANGE_DESC["auto"], route=chosen, candidates=errors,
                 op_range_methods=dict(Counter(m for _, m in choice.values())),
                 ops_not_minmax=sorted(op_ranges), litert_recipe=recipe_entries(recipe, (), op_ranges)
                 if chosen == "per op" else notes["litert_recipe"],
                 selection=f"lowest output MSE against FP32 on {len(held)} held-back calibration images")
    return data, notes


def sqnr_losses(ref: dict[str, np.ndarray], ops: list, got: dict[str, np.ndarray]) -> dict[str, tuple[str, float]]:
    """op output -> (op type, SQNR its input had minus SQNR its output has, in dB) against the FP32 tensors."""
    out = {}
    for op_name, i, o in ops:
        if o in ref and o in got and i in got and i in ref and ref[o].shape == got[o].shape \
                and ref[i].shape == got[i].shape:
            out[o] = (op_name, round(float(sqnr(ref[i], got[i]) - sqnr(ref[o], got[o])), 3))
    return out


def _predict_tflite(blob: bytes, x: np.ndarray) -> np.ndarray:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.tflite"
        p.write_bytes(blob)
        return TFLitePredictor(p).predict(x)


def layer_errors(fp32_tflite: bytes, models: dict[str, bytes], x: np.ndarray) -> dict[str, dict[str, tuple]]:
    """Per weight op (by output tensor) and per precision of `models` (precision -> a uniform model at it): (op type,
    noise-to-signal ratio the op adds, SQNR it loses in dB), against the FP32 tensors on the images `x`."""
    from edgeq.methods.shared.budget import sqnr
    from edgeq.methods.shared.mixed_precision import nsr_added
    from edgeq.methods.tflite.litert import WEIGHT_OPS

    _, ref = _tensors(fp32_tflite, x)
    out: dict[str, dict[str, tuple]] = {}
    for precision, data in models.items():
        ops, got = _tensors(data, x)
        for op_name, i, o in ops:
            if op_name not in WEIGHT_OPS or not all(t in ref and t in got and ref[t].shape == got[t].shape
                                                    for t in (i, o)):
                continue
            si, so = sqnr(ref[i], got[i]), sqnr(ref[o], got[o])
            out.setdefault(o, {})[precision] = (op_name, nsr_added(si, so), round(float(si - so), 3))
    return out
