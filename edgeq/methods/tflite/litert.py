"""LiteRT Quantizer (litert-quantizer) over an FP32 .tflite: fully integer W8A8 and W4A8 models from recipes.

A recipe is a row of `RECIPES`: the weight bits per op type and the algorithm that chooses the ranges (and,
for GPTQ, the rounding). litert-quantizer calibrates on the FP32 .tflite itself (LiteRT interpreter, every
tensor kept), so this needs no Keras model: an ONNX or PyTorch input converted to .tflite works the same.
Every result is checked before it is returned: no float tensor left, every weight buffer holds what its
tensor type says, and LiteRT runs it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from edgeq.core.errors import QuantizationError, RuntimeUnavailable, first_line
from edgeq.core.progress import spinner
from edgeq.core.tfcompat import quiet_stderr
from edgeq.measure.predictors import load_tflite_interpreter
from edgeq.methods.tflite.convert import float_ops, tensor_summary

# the op types LiteRT's int4-weight static kernels take (litert-quantizer policy `static_wi4_ai8`); every
# other op keeps int8 weights
INT4_OPS = ("CONV_2D", "FULLY_CONNECTED")
ALGORITHMS = {"minmax": "min_max_uniform_quantize", "octav": "OCTAV", "gptq": "GPTQ", "mse": "MSE"}
RANGE_DESC = {"minmax": "min-max of calibration values (weights: max|w| per channel)",
              "octav": "OCTAV: per tensor/channel clipping that minimises expected quantisation MSE",
              "auto": "per op, min-max or OCTAV: whichever loses less SQNR at that op (measured against FP32 on "
                      "calibration images); the per-op model kept only if its output error is below both uniform ones"}
# the range methods "auto" chooses among per op (litert-quantizer 0.11's MSE leaves ADD float: not a candidate)
AUTO_METHODS = ("minmax", "octav")


@dataclass(frozen=True)
class Recipe:
    """One litert-quantizer recipe: weight bits, where int4 applies, range method, rounding."""

    name: str
    weight_bits: int  # of INT4_OPS when 4; every other op's weights are int8
    range_method: str  # minmax | octav (ALGORITHMS key) for every op, or auto (chosen per op by measured error)
    rounding: str  # nearest | gptq (GPTQ on FULLY_CONNECTED: the only op litert-quantizer 0.11 applies it to)
    description: str

    @property
    def precision(self) -> str:
        return "int4" if self.weight_bits == 4 else "int8"

    @property
    def method(self) -> str:
        """Artifact.method: `ptq` for min-max round-to-nearest (what the converter does), else the better one."""
        if self.rounding == "gptq":
            return "ptq_gptq"
        return "ptq" if self.range_method == "minmax" else f"ptq_{self.range_method}"

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("w8a8", 8, "minmax", "nearest", "int8 weights per channel, int8 activations, min-max ranges"),
    Recipe("w8a8_octav", 8, "octav", "nearest", "int8 weights per channel, int8 activations, OCTAV ranges"),
    Recipe("w8a8_gptq", 8, "octav", "gptq", "int8 weights per channel, int8 activations, OCTAV ranges, "
                                             "GPTQ rounding of FULLY_CONNECTED weights"),
    Recipe("w4a8", 4, "minmax", "nearest", "int4 weights per channel on CONV_2D/FULLY_CONNECTED, int8 depthwise "
                                           "weights, int8 activations, min-max ranges"),
    Recipe("w4a8_octav", 4, "octav", "nearest", "int4 weights per channel on CONV_2D/FULLY_CONNECTED, int8 "
                                                "depthwise weights, int8 activations, OCTAV ranges"),
    Recipe("w8a8_auto", 8, "auto", "nearest", "int8 weights per channel, int8 activations, range method per op "
                                              "(min-max or OCTAV) by measured error"),
    Recipe("w4a8_auto", 4, "auto", "nearest", "int4 weights per channel on CONV_2D/FULLY_CONNECTED, int8 depthwise "
                                              "weights, int8 activations, range method per op by measured error"),
)}


def recipe_entries(recipe: Recipe, float_ops: tuple[str, ...] = (),
                   op_ranges: dict[str, tuple[str, str]] | None = None,
                   int4_ops: dict[str, str] | None = None) -> list[dict]:
    """The recipe as litert-quantizer's JSON recipe list (later entries override earlier ones per op).

    `float_ops`: regexes of op output tensor names left float (selective quantization). `op_ranges`: op output
    tensor -> (op type, range method) overriding the recipe's method for that op (an `auto` recipe's choice).
    `int4_ops`: op output tensor -> op type (one of INT4_OPS) given int4 weights (a mixed-precision plan)."""
    def op_config(weight_bits: int) -> dict:
        return {"activation_tensor_config": {"num_bits": 8, "symmetric": False, "granularity": "TENSORWISE",
                                             "dtype": "INT"},
                "weight_tensor_config": {"num_bits": weight_bits, "symmetric": True, "granularity": "CHANNELWISE",
                                         "dtype": "INT"},
                "compute_precision": "INTEGER", "explicit_dequantize": False, "skip_checks": False,
                "min_weight_elements": 0}

    algo = ALGORITHMS["minmax" if recipe.range_method == "auto" else recipe.range_method]
    entries = [{"regex": ".*", "operation": "*", "algorithm_key": algo, "op_config": op_config(8)}]
    if recipe.weight_bits == 4:
        entries += [{"regex": ".*", "operation": op, "algorithm_key": algo, "op_config": op_config(4)}
                    for op in INT4_OPS]
    if recipe.rounding == "gptq":
        entries.append({"regex": ".*", "operation": "FULLY_CONNECTED", "algorithm_key": ALGORITHMS["gptq"],
                        "op_config": op_config(recipe.weight_bits)})
    for out, (op_type, method) in sorted((op_ranges or {}).items()):
        bits = recipe.weight_bits if op_type in INT4_OPS else 8
        entries.append({"regex": float_op_regex(out), "operation": op_type, "algorithm_key": ALGORITHMS[method],
                        "op_config": op_config(bits)})
    for out, op_type in sorted((int4_ops or {}).items()):
        if op_type not in INT4_OPS:
            raise QuantizationError(f"op {out} is {op_type}: LiteRT takes int4 weights only on {', '.join(INT4_OPS)}")
        entries.append({"regex": float_op_regex(out), "operation": op_type, "algorithm_key": algo,
                        "op_config": op_config(4)})
    entries += [{"regex": rx, "operation": "*", "algorithm_key": "no_quantize"} for rx in float_ops]
    return entries


def _quantizer():
    try:
        from litert_quantizer import Quantizer
    except ImportError:
        raise RuntimeUnavailable("litert-quantizer is not installed: pip install litert-quantizer "
                                 "(it pins ai-edge-litert like edgeq)") from None
    return Quantizer


def unavailable_reason() -> str | None:
    """Why litert-quantizer cannot be used here (the install command), or None when it can."""
    try:
        _quantizer()
    except RuntimeUnavailable as e:
        return str(e)
    return None


def _samples(fp32_tflite: bytes, calibration: np.ndarray) -> dict:
    signature, input_name = _signature_input(fp32_tflite)
    return {signature: [{input_name: np.ascontiguousarray(x[None], np.float32)} for x in calibration]}


def calibrate_ranges(fp32_tflite: bytes, calibration: np.ndarray, *, name: str) -> dict:
    """litert-quantizer's calibration (min/max of every tensor, the LiteRT interpreter over `calibration`): what
    every recipe here starts from, so several recipes calibrate once."""
    import warnings

    Quantizer = _quantizer()
    try:
        with warnings.catch_warnings(), quiet_stderr(), \
                spinner(f"calibrate {name} (litert-quantizer, {len(calibration)} images)"):
            warnings.simplefilter("ignore")
            q = Quantizer(bytearray(fp32_tflite), recipe_entries(RECIPES["w8a8"]))
            return q.calibrate(_samples(fp32_tflite, calibration), num_threads=1)
    except (ValueError, RuntimeError, KeyError, IndexError, TypeError, AssertionError) as e:
        raise QuantizationError(f"litert-quantizer calibration failed ({first_line(e, 300)})") from None


def quantize_tflite(fp32_tflite: bytes, recipe: Recipe, calibration: np.ndarray, *, name: str,
                    float_ops: tuple[str, ...] = (), ranges: dict | None = None,
                    op_ranges: dict[str, tuple[str, str]] | None = None,
                    int4_ops: dict[str, str] | None = None) -> tuple[bytes, dict]:
    """`fp32_tflite` quantized by `recipe`, calibrated on `calibration` (float NHWC, preprocessed); and notes.

    `ranges`: `calibrate_ranges` of the same model and images, when already made (not changed here). An `auto`
    recipe needs `op_ranges` (from `choose_op_ranges`); without it, it quantizes as min-max everywhere."""
    import copy
    import warnings

    Quantizer = _quantizer()
    entries = recipe_entries(recipe, float_ops, op_ranges, int4_ops)
    t0 = time.perf_counter()
    qsv = copy.deepcopy(ranges if ranges is not None else calibrate_ranges(fp32_tflite, calibration, name=name))
    try:
        with warnings.catch_warnings(), quiet_stderr():
            warnings.simplefilter("ignore")
            if recipe.rounding == "gptq":
                _add_gptq_hessians(fp32_tflite, entries, _samples(fp32_tflite, calibration), qsv)
            t1 = time.perf_counter()
            q = Quantizer(bytearray(fp32_tflite), entries)
            data = bytes(q.quantize(qsv, enable_progress_report=False).quantized_model)
    except (ValueError, RuntimeError, KeyError, IndexError, TypeError, AssertionError) as e:
        raise QuantizationError(f"litert-quantizer failed on recipe {recipe.name} ({first_line(e, 300)})") from None
    t2 = time.perf_counter()
    check_weights_quantized(data, recipe.name)
    summary = check_fully_integer(data, recipe.name, allowed_float=bool(float_ops))
    return data, {"recipe": recipe.to_dict(), "range_method": RANGE_DESC.get(recipe.range_method, recipe.range_method),
                  "rounding": ("GPTQ (Hessian-based, FULLY_CONNECTED weights; other ops round to nearest)"
                               if recipe.rounding == "gptq" else "round to nearest"),
                  "litert_recipe": entries, "calibration_images": int(len(calibration)),
                  "calibration_seconds": round(t1 - t0, 2) if ranges is None or recipe.rounding == "gptq" else 0.0,
                  "calibration_shared": ranges is not None, "quantize_seconds": round(t2 - t1, 2),
                  "litert_quantizer_version": quantizer_version(), **summary}


def _add_gptq_hessians(fp32_tflite: bytes, entries: list[dict], data: dict, qsv: dict) -> None:
    """GPTQ needs the Hessian of each FULLY_CONNECTED input, but litert-quantizer 0.11 computes it only for a
    tensor no earlier op has calibrated (with every op quantized, the op feeding the FC has): calibrate the GPTQ
    entries alone and add their Hessians to the full calibration."""
    Quantizer = _quantizer()
    gptq = [e for e in entries if e["algorithm_key"] == ALGORITHMS["gptq"]]
    for tensor, stats in Quantizer(bytearray(fp32_tflite), gptq).calibrate(data, num_threads=1).items():
        if "hessian" in stats and tensor in qsv and "hessian" not in qsv[tensor]:
            qsv[tensor] = {**qsv[tensor], "hessian": stats["hessian"], "num_samples": stats.get("num_samples")}


def _signature_input(data: bytes) -> tuple[str, str]:
    interp, _ = load_tflite_interpreter(content=data)
    sigs = interp.get_signature_list()
    if len(sigs) != 1:
        raise QuantizationError(f"the FP32 .tflite has {len(sigs)} signatures; litert-quantizer calibration needs "
                                "exactly one (a single-input image classifier)")
    key, sig = next(iter(sigs.items()))
    if len(sig["inputs"]) != 1:
        raise QuantizationError(f"the FP32 .tflite signature {key!r} has inputs {sig['inputs']}; edgeq quantizes "
                                "single-input image classifiers")
    return key, sig["inputs"][0]


# TFLite TensorType -> bits per element of a constant buffer
_TYPE_BITS = {9: 8, 3: 8, 17: 4, 2: 32, 7: 16, 0: 32, 1: 16, 10: 64, 4: 64}


def weight_bytes(data: bytes) -> dict:
    """Bytes of constant buffers by tensor type name (int4 counted packed, as stored)."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    names = {9: "int8", 17: "int4", 2: "int32", 0: "float32", 1: "float16", 7: "int16", 3: "uint8"}
    m = fu.read_model_from_bytearray(bytearray(data))
    out: dict[str, int] = {}
    for t in m.subgraphs[0].tensors:
        buf = m.buffers[t.buffer].data
        if buf is not None and len(buf):
            k = names.get(t.type, f"type{t.type}")
            out[k] = out.get(k, 0) + len(buf)
    return out


def int4_codes(data: bytes) -> dict[str, np.ndarray]:
    """Every int4 constant tensor's signed codes (low nibble first, as LiteRT packs them), shaped
    (output channels, rest), by tensor name."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    m = fu.read_model_from_bytearray(bytearray(data))
    out = {}
    for t in m.subgraphs[0].tensors:
        buf = m.buffers[t.buffer].data
        if t.type != 17 or buf is None or not len(buf):
            continue
        b = np.frombuffer(bytes(buf), np.uint8)
        pairs = np.stack([b & 0x0F, b >> 4], 1).ravel().astype(np.int8)
        pairs[pairs > 7] -= 16
        n = int(np.prod(t.shape))
        out[t.name.decode(errors="replace")] = pairs[:n].reshape(int(t.shape[0]), -1)
    return out


def check_weights_quantized(data: bytes, recipe: str) -> None:
    """Every constant buffer holds exactly what its tensor type says: a quantizer that retypes a tensor but
    leaves its float data (litert-quantizer 0.11's GPTQ when it finds no Hessian) is refused, by tensor name."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    m = fu.read_model_from_bytearray(bytearray(data))
    bad = []
    for t in m.subgraphs[0].tensors:
        buf = m.buffers[t.buffer].data
        bits = _TYPE_BITS.get(t.type)
        if buf is None or not len(buf) or bits is None:
            continue
        n = int(np.prod(t.shape)) if t.shape is not None and len(t.shape) else 1
        if len(buf) != -(-n * bits // 8):
            bad.append(f"{t.name.decode(errors='replace')} ({n} values, {len(buf)} bytes for {bits}-bit)")
    if bad:
        raise QuantizationError(f"litert-quantizer recipe {recipe} wrote weights that do not match their tensor type "
                                f"at {bad[:3]}: the model would compute garbage. This is a litert-quantizer fault "
                                "(its GPTQ covers FULLY_CONNECTED only and skips a layer it found no Hessian for); use "
                                "another recipe (e.g. w8a8_octav)")


def check_fully_integer(data: bytes, recipe: str, allowed_float: bool = False) -> dict:
    """LiteRT loads and runs the model once; no float tensor is left (unless float ops were asked for)."""
    try:
        summary = tensor_summary(data)

        interp, _ = load_tflite_interpreter(content=data)
        inp = interp.get_input_details()[0]
        interp.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
        interp.invoke()
    except (ValueError, RuntimeError) as e:
        raise QuantizationError(f"LiteRT cannot run the {recipe} model ({first_line(e, 300)})") from None
    floats = float_ops(data)
    if floats and not allowed_float:
        raise QuantizationError(f"the {recipe} model is not fully integer; float tensors remain at ops: "
                                + ", ".join(floats[:20]))
    return {**summary, "float_ops": floats, "weight_bytes": weight_bytes(data)}


def quantizer_version() -> str | None:
    """The installed litert-quantizer's version (recorded with every artifact it made)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litert-quantizer")
    except PackageNotFoundError:
        return None


# ------------------------------------------------------------------ selective quantization (float fallback)
def float_op_regex(output_tensor: str) -> str:
    """The recipe regex that matches exactly one op: litert-quantizer's op scope is its output names + ';'."""
    import re

    return "^" + re.escape(output_tensor) + ";$"


# ------------------------------------------------------------------ weight layers (mixed precision)
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_TYPE_NAMES = {9: "int8", 17: "int4", 2: "int32", 0: "float32", 1: "float16", 7: "int16", 3: "uint8"}


def weight_layers(data: bytes) -> dict[str, tuple[str, str, int]]:
    """Every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op by its output tensor name (its scope in a recipe):
    (op type, weight tensor type as stored, weight elements) — read from the flatbuffer itself."""
    out = {}
    for m, g, op, name in _weight_ops(data):
        if len(op.inputs) < 2:
            continue
        w = g.tensors[op.inputs[1]]
        src = w
        if m.buffers[w.buffer].data is None or not len(m.buffers[w.buffer].data):
            # a float op behind a DEQUANTIZE of its weights (or fed by one): follow the DEQUANTIZE to the constant
            producer = next((p for p in g.operators if len(p.outputs) and p.outputs[0] == op.inputs[1]), None)
            if producer is not None and len(producer.inputs):
                src = g.tensors[producer.inputs[0]]
        n = int(np.prod(w.shape)) if w.shape is not None and len(w.shape) else 0
        out[g.tensors[op.outputs[0]].name.decode(errors="replace")] = (name, _TYPE_NAMES.get(src.type, f"type{src.type}"),
                                                                      n)
    return out


def layer_inputs(data: bytes) -> dict[str, str]:
    """Every weight op (by output tensor name) -> the name of the activation tensor it reads."""
    return {g.tensors[op.outputs[0]].name.decode(errors="replace"): g.tensors[op.inputs[0]].name.decode(errors="replace")
            for _, g, op, _ in _weight_ops(data)}


def _weight_ops(data: bytes):
    """(model, subgraph, op, op type) of every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op with an output."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    m = fu.read_model_from_bytearray(bytearray(data))
    g = m.subgraphs[0]
    names = _builtin_names()
    for op in g.operators:
        code = m.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if name in WEIGHT_OPS and len(op.outputs):
            yield m, g, op, name


def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def quantize_plan(fp32_tflite: bytes, plan: dict[str, str], op_types: dict[str, str], calibration: np.ndarray, *,
                  range_method: str, ranges: dict, name: str) -> tuple[bytes, dict]:
    """A mixed-precision model: every op int8 (weights and activations) but the plan's `int4` ops (int4 weights)
    and `float` ops (left float); `op_types`: op output tensor -> op type. The file is read back and must hold
    exactly the plan's weight types."""
    recipe = Recipe(f"mixed_{range_method}", 8, range_method, "nearest", "mixed int4/int8/float weights per op")
    int4 = {o: op_types[o] for o, p in plan.items() if p == "int4"}
    floats = tuple(float_op_regex(o) for o, p in sorted(plan.items()) if p == "float")
    data, notes = quantize_tflite(fp32_tflite, recipe, calibration, name=name, float_ops=floats, ranges=ranges,
                                  int4_ops=int4)
    stored = weight_layers(data)
    want = {"int4": "int4", "int8": "int8", "float": "float32"}
    drift = [f"{o} ({p} planned, {stored.get(o, ('', 'missing'))[1]} in the file)" for o, p in plan.items()
             if stored.get(o, ("", None))[1] != want[p]]
    if drift:
        raise QuantizationError(f"litert-quantizer did not write the plan of {name}: {'; '.join(drift[:3])}")
    return data, notes
