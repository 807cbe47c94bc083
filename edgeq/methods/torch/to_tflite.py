"""The QAT QDQ ONNX as input to the TFLite full-integer converter, with the scales NNCF learned kept.

onnx2tf cannot carry quantization through: it translates a QuantizeLinear -> DequantizeLinear pair as a float
pass-through (or Round/Clip arithmetic), so the converter would re-calibrate every activation on the
representative images and land inside the learned ranges. Instead:
1. `qdq_to_float_onnx`: each int8 weight is stored as its dequantized float value (on NNCF's grid) and each
   activation Q/DQ pair becomes a Clip to the range it quantizes to, named `<tensor>_qat_range`;
2. `learned_ranges_as_fake_quant`: while onnx2tf translates that ONNX, those Clips become
   `tf.quantization.fake_quant_with_min_max_args` over the same range, which the TFLite converter takes as
   the tensor's quantization (as it does for tfmot QAT models) instead of a calibrated one;
3. `learned_scales_in_tflite`: the scales and zero points are read back from the .tflite and compared with
   the ONNX's, so the artifact says whether they were kept.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from edgeq.core.errors import QuantizationError, RuntimeUnavailable, first_line

RANGE_SUFFIX = "_qat_range"
# relative difference under which a TFLite scale is the ONNX one (float32 range arithmetic in between)
SCALE_RTOL = 1e-5


def qdq_to_float_onnx(src: Path, out: Path, clip_ranges: bool = True) -> int:
    """`src` with every QuantizeLinear/DequantizeLinear removed and each quantized weight stored as its
    dequantized float value: the fine-tuned model on its int8 weight grid, float activations. `clip_ranges`:
    each activation Q/DQ pair becomes a Clip (named `<tensor>_qat_range`) to the range it quantizes to, which
    `learned_ranges_as_fake_quant` turns into the converter's quantization of that tensor. Returns the Q/DQ
    nodes replaced."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    arr = lambda name: numpy_helper.to_array(inits[name])  # noqa: E731
    rename: dict[str, str] = {}
    keep, removed, new_inits = [], 0, {}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:  # a stored int8 weight: its float value
            q = arr(n.input[0]).astype(np.float64)
            scale = arr(n.input[1]).astype(np.float64)
            zp = arr(n.input[2]).astype(np.float64) if len(n.input) > 2 and n.input[2] else np.zeros_like(scale)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if scale.size > 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            new_inits[n.output[0]] = numpy_helper.from_array(((q - zp) * scale).astype(np.float32), n.output[0])
            removed += 1
        elif n.op_type == "QuantizeLinear" and clip_ranges and n.input[1] in inits and arr(n.input[1]).size == 1:
            scale = float(arr(n.input[1]))
            zp_init = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            zp = int(numpy_helper.to_array(zp_init)) if zp_init is not None else 0
            info = np.iinfo(numpy_helper.to_array(zp_init).dtype if zp_init is not None else np.uint8)
            lo, hi = (info.min - zp) * scale, (info.max - zp) * scale
            name = n.output[0] + RANGE_SUFFIX
            bounds = [numpy_helper.from_array(np.array(v, np.float32), f"{name}_{k}") for k, v in (("lo", lo), ("hi", hi))]
            new_inits.update({b.name: b for b in bounds})
            keep.append(helper.make_node("Clip", [rename.get(n.input[0], n.input[0]), *[b.name for b in bounds]],
                                         [name], name=name))
            rename[n.output[0]] = name
            removed += 1
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            rename[n.output[0]] = rename.get(n.input[0], n.input[0])
            removed += 1
        else:
            keep.append(n)
    for n in keep:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    for o in g.output:
        if o.name in rename:
            raise QuantizationError(f"{src}: its output {o.name} is a Q/DQ output; cannot strip it")
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in keep for i in n.input}
    for i in list(g.initializer):
        if i.name not in used:
            g.initializer.remove(i)
    g.initializer.extend(v for k, v in new_inits.items() if k in used)
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return removed


@contextlib.contextmanager
def learned_ranges_as_fake_quant():
    """While active, onnx2tf translates every Clip named `*_qat_range` (see `qdq_to_float_onnx`) as an 8-bit
    FakeQuant over the Clip's range: lo = (qmin - zp) x scale, hi = (qmax - zp) x scale, so the converter
    quantizes that tensor with exactly the ONNX scale and zero point (no nudging: zp is an integer)."""
    try:
        import onnx2tf.ops.Clip as clip_op
        import tensorflow as tf
    except ImportError as e:
        from edgeq.methods.onnx.to_tf import INSTALL

        raise RuntimeUnavailable(f"keeping the QAT ranges needs onnx2tf ({first_line(e)}); {INSTALL}") from None
    translate = clip_op.make_node

    def make_node(*, graph_node, tf_layers_dict, **kwargs):
        translate(graph_node=graph_node, tf_layers_dict=tf_layers_dict, **kwargs)
        if not graph_node.name.endswith(RANGE_SUFFIX):
            return
        lo, hi = (float(np.asarray(v.values).reshape(())) for v in graph_node.inputs[1:3])
        x = tf_layers_dict[graph_node.inputs[0].name]["tf_node"]
        tf_layers_dict[graph_node.outputs[0].name]["tf_node"] = tf.quantization.fake_quant_with_min_max_args(
            x, min=lo, max=hi, num_bits=8, narrow_range=False)

    clip_op.make_node = make_node
    try:
        yield
    finally:
        clip_op.make_node = translate


def _onnx_scales(qdq_onnx: Path) -> tuple[dict, dict]:
    """({activation tensor: (scale, int8 zero point)}, {weight: per-channel scales}) of a QDQ ONNX."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(qdq_onnx)).graph
    arr = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    acts, weights = {}, {}
    for n in g.node:
        if n.op_type == "QuantizeLinear" and arr.get(n.input[1]) is not None and arr[n.input[1]].size == 1:
            zp = arr.get(n.input[2]) if len(n.input) > 2 else None
            z = 0 if zp is None else int(zp) - (128 if zp.dtype == np.uint8 else 0)  # uint8 -> int8 grid
            acts[n.output[0]] = (float(arr[n.input[1]]), z)
        elif n.op_type == "DequantizeLinear" and n.input[0] in arr and arr[n.input[0]].dtype == np.int8:
            weights[n.input[0]] = arr[n.input[1]].astype(np.float64).reshape(-1)
    return acts, weights


def learned_scales_in_tflite(qdq_onnx: Path, tflite: bytes) -> dict:
    """Which of the QDQ ONNX's activation scales/zero points and per-channel weight scales the INT8 TFLite
    holds (read from its tensors' quantization parameters; a weight is matched to the TFLite tensor of as many
    channels whose scales are nearest)."""
    from tensorflow.lite.tools import flatbuffer_utils

    acts, weights = _onnx_scales(qdq_onnx)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    per_tensor, per_channel = [], []
    for t in model.subgraphs[0].tensors:
        q = t.quantization
        if q is None or q.scale is None or t.type != 9:  # 9: INT8 in the TFLite schema
            continue
        (per_tensor if len(q.scale) == 1 else per_channel).append((np.asarray(q.scale, np.float64), q.zeroPoint))
    missing = [name for name, (s, z) in acts.items()
               if not any(abs(ts[0] / s - 1) <= SCALE_RTOL and int(tz[0]) == z for ts, tz in per_tensor)]
    channels = kept = 0
    regridded = []
    for name, s in weights.items():
        rel = [np.abs(ts / s - 1) for ts, _ in per_channel if len(ts) == len(s)]
        best = min(rel, key=lambda r: float(r.max()), default=np.ones_like(s))
        channels += len(s)
        k = int((best <= SCALE_RTOL).sum())
        kept += k
        if k < len(s):
            regridded.append(f"{name}: {len(s) - k} of {len(s)}")
    return {"activation_scales": len(acts), "activation_scales_kept": len(acts) - len(missing),
            "activation_scales_missing": missing, "weight_channels": channels, "weight_channels_kept": kept,
            "weight_channels_regridded": regridded}


def _scales(tensor) -> np.ndarray:
    q = tensor.quantization
    return np.asarray(q.scale if q is not None and q.scale is not None else [], np.float64).reshape(-1)


def _onnx_weight_codes(qdq_onnx: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(int8 codes, per-channel scales on axis 0) of each per-channel quantized weight of a QDQ ONNX."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(qdq_onnx)).graph
    arr = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    out = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in arr and arr[n.input[0]].dtype == np.int8:
            scales = arr[n.input[1]].astype(np.float64).reshape(-1)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if scales.size > 1 and axis == 0:
                out.append((arr[n.input[0]], scales))
    return out


def _in_tflite_layout(codes: np.ndarray, scales: np.ndarray, t_codes: np.ndarray, t_scales: np.ndarray,
                      axis: int) -> np.ndarray | None:
    """The ONNX weight codes (OIHW conv, C1HW depthwise, OI Gemm) in the layout of the TFLite weight `t_codes`
    (OHWI conv, 1HWC depthwise, OI fully connected; channels on `axis`), or None when no layout holds what the
    converter made of them: every TFLite value within half a TFLite step of the ONNX value."""
    shape = [1] * t_codes.ndim
    shape[axis] = -1
    for perm in {4: [(0, 2, 3, 1), (1, 2, 3, 0)], 2: [(0, 1), (1, 0)]}.get(codes.ndim, []):
        c = codes.transpose(perm)
        if c.shape != t_codes.shape or c.shape[axis] != len(scales):
            continue
        step = t_scales.reshape(shape)
        if np.all(np.abs(t_codes * step - c * scales.reshape(shape)) <= step * (0.5 + 1e-4)):
            return c
    return None


def keep_learned_weight_scales(qdq_onnx: Path, tflite: bytes) -> tuple[bytes, int, int]:
    """`tflite` with the weight channels the converter re-gridded put back on NNCF's grid; returns (model, how
    many channels, how many codes moved from -128 to -127). The converter scales a channel by its largest
    |weight| / 127: a channel whose largest QAT code stopped short of 127 gets a finer scale s' < s, one whose
    codes reach -128 a coarser one s' = 128 s / 127 (TFLite's int8 weights are [-127, 127]), re-rounding every
    code of the channel. Such a channel gets NNCF's scale and codes back (read from the ONNX), a -128 becoming
    -127, whenever that moves its weights less (sum of squared differences from NNCF's values) than the
    converter's re-rounding did (measured, one FashionNet channel: 0.34 % of that convolution's outputs 1 LSB
    off the exact QDQ arithmetic before, 0.29 % after); the channel's int32 bias is re-expressed on the input
    scale x s."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    g = model.subgraphs[0]
    ops = [op for op in g.operators if len(op.inputs) >= 3 and op.inputs[1] >= 0
           and len(_scales(g.tensors[op.inputs[1]])) > 1]
    fixed = clamped = 0
    for codes, s in _onnx_weight_codes(qdq_onnx):
        def equal(op):
            ts = _scales(g.tensors[op.inputs[1]])
            return int((np.abs(ts / s - 1) <= SCALE_RTOL).sum()) if len(ts) == len(s) else -1

        op = max(ops, key=equal, default=None)
        if op is None or equal(op) <= 0:
            continue
        w, b = g.tensors[op.inputs[1]], g.tensors[op.inputs[2]] if op.inputs[2] >= 0 else None
        old = _scales(w)
        differ = np.abs(old / s - 1) > SCALE_RTOL
        buf = model.buffers[w.buffer]
        if not differ.any() or buf.data is None:  # None: stored outside the flatbuffer (over 2 GB), as converted
            continue
        axis = w.quantization.quantizedDimension
        t_codes = np.frombuffer(bytes(buf.data), np.int8).reshape(w.shape).astype(np.float64)
        q = _in_tflite_layout(codes.astype(np.float64), s, t_codes, old, axis)
        if q is None:
            continue
        q_kept = np.clip(q, -127, 127)
        other = tuple(i for i in range(q.ndim) if i != axis)
        shape = [1] * q.ndim
        shape[axis] = -1
        ns, no = s.reshape(shape), old.reshape(shape)
        err_kept = (((q_kept - q) * ns) ** 2).sum(other)
        err_converted = ((t_codes * no - q * ns) ** 2).sum(other)
        fix = differ & (err_kept < err_converted)
        if not fix.any():
            continue
        mask = fix.reshape(shape)
        clamped += int(((q != q_kept) & mask).sum())
        buf.data = np.where(mask, q_kept, t_codes).astype(np.int8).view(np.uint8).ravel()
        w.quantization.scale = np.where(fix, s, old).astype(np.float32).tolist()
        ratio = np.where(fix, old / s, 1.0)
        if b is not None and len(_scales(b)) == len(s):
            bbuf = model.buffers[b.buffer]
            bias = np.frombuffer(bytes(bbuf.data), np.int32).astype(np.float64)
            bbuf.data = np.rint(bias * ratio).astype(np.int32).view(np.uint8).ravel()
            b.quantization.scale = (_scales(b) / ratio).astype(np.float32).tolist()
        fixed += int(fix.sum())
    if not fixed:
        return tflite, 0, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), fixed, clamped


# the two translations of the QAT ONNX to an INT8 TFLite; the order is the last tie-break (learned scales first)
LEARNED = "learned_scales"
CALIBRATED = "calibrated_in_ranges"
TRANSLATIONS = {
    LEARNED: "NNCF's learned activation scales kept (FakeQuant over each learned range), re-gridded weight channels "
             "put back on NNCF's grid",
    CALIBRATED: "the converter calibrates each activation on the representative images, inside the learned ranges "
                "(each Q/DQ pair a Clip to its range)"}
# a translation other than learned scales is shipped only when it agrees with FP32 significantly more often on the
# held-out images: learned scales is the faithful translation of the QAT ONNX (measured: it agrees with the ONNX QAT
# on 98.7-99.4 % of 1,000 test images, every disagreement a tie of its int8 logits; the calibrated one on
# 97.9-98.6 %), and on 300 images the two differ by a handful (1-6, McNemar p 0.07-1): a bare majority is noise
CHOICE_ALPHA = 0.05
CHOICE_RULE = ("learned scales (the faithful translation of the QAT ONNX) unless the other agrees with the FP32 "
               f"model's top-1 on significantly more held-out images (exact McNemar p < {CHOICE_ALPHA:g}); among "
               "such, more agreement, then lower KL(FP32 || candidate) of the output probabilities")


def _probabilities(y: np.ndarray) -> np.ndarray:
    """Rows of class probabilities: `y` itself when it already is (non-negative rows summing to 1), else softmax."""
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if (y >= 0).all() and np.allclose(y.sum(1), 1.0, atol=1e-3):
        return y / y.sum(1, keepdims=True)
    e = np.exp(y - y.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def choose_translation(fp32_out: np.ndarray, candidates: dict[str, np.ndarray],
                       alpha: float = CHOICE_ALPHA) -> tuple[str, dict]:
    """The first candidate (learned scales) unless another one's outputs on held-out images agree with the FP32
    model's top-1 significantly more often (paired exact McNemar p < `alpha`); among several such, the most
    agreeing, then the lower KL(FP32 || candidate), then the order of `candidates`. Also per candidate its figures:
    agreement k of n with a Wilson interval, mean KL, logit MSE, and the paired test against the first."""
    from edgeq.core.stats import paired_test, wilson_interval

    ref = np.asarray(fp32_out, np.float64).reshape(len(fp32_out), -1)
    p = _probabilities(ref)
    top = ref.argmax(1)
    n = len(ref)
    figures, same = {}, {}
    for name, out in candidates.items():
        y = np.asarray(out, np.float64).reshape(n, -1)
        same[name] = y.argmax(1) == top
        k = int(same[name].sum())
        lo, hi = wilson_interval(k, n)
        kl = float(np.mean(np.sum(p * (np.log(np.clip(p, 1e-12, None)) -
                                       np.log(np.clip(_probabilities(y), 1e-12, None))), 1)))
        figures[name] = {"agreement": round(k / n, 5) if n else None, "agree": k, "n": n,
                         "agreement_ci95": [round(lo, 5), round(hi, 5)], "kl": round(kl, 6),
                         "mse": round(float(np.mean((y - ref) ** 2)), 6)}
    first = next(iter(candidates))
    better = []
    for name in list(candidates)[1:]:
        t = paired_test(same[first], same[name])
        if t.c > t.b and t.p < alpha:
            better.append(name)
        figures[name][f"vs_{first}"] = {"difference": round(-t.drop, 5), "ci95": [round(-t.ci95[1], 5),
                                        round(-t.ci95[0], 5)], "p": round(t.p, 4), "only_this": t.c,
                                        f"only_{first}": t.b}
    order = list(candidates)
    chosen = min(better, key=lambda c: (-figures[c]["agree"], figures[c]["kl"], order.index(c)), default=first)
    return chosen, figures
