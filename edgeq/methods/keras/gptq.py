"""GPTQ weight rounding (Frantar et al. 2023) of a Keras model's Conv2D and Dense kernels, on a runtime's grid.

Each layer's kernel, as a matrix W (output channels x inputs), is rounded one input column at a time to the
per-output-channel symmetric grid scale = max|w| / qmax (the grid the TFLite converter uses at 8 bits and
litert-quantizer's min-max recipe at 4 bits), and the rounding error of each column is spread over the columns
not yet rounded through the inverse Hessian H = X^T X of the layer's inputs X (calibration images; im2col patches
for a convolution). The element of largest magnitude in each channel is kept at +-qmax, so the runtime, which
recomputes the scale from max|w|, lands on exactly this grid and keeps every rounded value: the real int8/int4
artifact holds GPTQ's codes, not a re-rounding of them. Batch-norm folding scales whole output channels, which
scales a channel's grid with it, so folding keeps the codes too.

Depthwise and grouped convolutions are left as they are (per-channel 3x3 kernels have nine weights each, and
LiteRT keeps depthwise weights int8 in W4A8).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeq.core.errors import QuantizationError
from edgeq.core.progress import track
from edgeq.core.tfcompat import keras, tf
from edgeq.methods.keras.fakequant import clone_model, fake_quant, max_scales, qmax

DAMP = 0.01  # fraction of the mean Hessian diagonal added to it (GPTQ's default)
BLOCK = 128  # columns rounded before the lazy update of the rest (GPTQ's default)


@dataclass
class GptqReport:
    bits: int
    layers: list[dict] = field(default_factory=list)  # name, columns, output error reduction vs nearest rounding

    def to_dict(self) -> dict:
        gains = [x["error_vs_nearest"] for x in self.layers if x["error_vs_nearest"] is not None]
        return {"bits": self.bits, "gptq_layers": len(self.layers),
                "median_error_vs_nearest": round(float(np.median(gains)), 4) if gains else None,
                "layers": self.layers}


def _gptq_layers(model) -> list:
    k = keras()
    out = []
    for layer in model.layers:
        if isinstance(layer, k.layers.DepthwiseConv2D):
            continue
        if isinstance(layer, k.layers.Conv2D) and not isinstance(layer, k.layers.SeparableConv2D) \
                and getattr(layer, "groups", 1) == 1 and len(layer.input.shape) == 4 \
                and layer.data_format == "channels_last":  # im2col below assumes NHWC
            out.append(layer)
        elif isinstance(layer, k.layers.Dense) and len(layer.input.shape) == 2:
            out.append(layer)
    return out


def hessians(model, layers: list, batches) -> dict[str, np.ndarray]:
    """2/n X^T X of each layer's input over the calibration batches (im2col patches for a convolution)."""
    t = tf()
    probe = keras().Model(model.inputs, [layer.input for layer in layers])
    fn = t.function(lambda x: probe(x, training=False), reduce_retracing=True)
    acc = {layer.name: None for layer in layers}
    n = {layer.name: 0 for layer in layers}
    for x, _ in track(batches, None, "GPTQ: layer input statistics on calibration images", "batches"):
        got = fn(t.constant(x))
        got = got if isinstance(got, (list, tuple)) else [got]
        for layer, inp in zip(layers, got):
            if len(inp.shape) == 4:
                kh, kw = layer.kernel_size
                sh, sw = layer.strides
                dh, dw = layer.dilation_rate
                inp = t.image.extract_patches(inp, [1, kh, kw, 1], [1, sh, sw, 1], [1, dh, dw, 1],
                                              layer.padding.upper())
            xs = inp.numpy().reshape(-1, inp.shape[-1])
            h = (xs.T @ xs).astype(np.float64)  # float32 products, float64 sum over batches
            acc[layer.name] = h if acc[layer.name] is None else acc[layer.name] + h
            n[layer.name] += len(xs)
    return {k: 2 * v / max(n[k], 1) for k, v in acc.items()}


def round_columns(w: np.ndarray, h: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ codes (int) and per-row scales of `w` (rows = output channels, columns = inputs) given Hessian `h`."""
    q_max = qmax(bits)
    w = w.astype(np.float64).copy()
    peak = np.abs(w).max(axis=1)
    scale = np.where(peak > 0, peak / q_max, 1.0)
    peak_col = np.abs(w).argmax(axis=1)
    peak_code = np.sign(w[np.arange(len(w)), peak_col]) * q_max
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices_from(h)] += DAMP * np.mean(np.diag(h))
    hinv = _upper_cholesky_of_inverse(h)
    cols = w.shape[1]
    codes = np.zeros_like(w)
    for a in range(0, cols, BLOCK):
        b = min(a + BLOCK, cols)
        w1, err1, hi = w[:, a:b].copy(), np.zeros((len(w), b - a)), hinv[a:b, a:b]
        for i in range(b - a):
            col = w1[:, i]
            q = np.clip(np.rint(col / scale), -q_max, q_max)
            peak_rows = peak_col == a + i
            q[peak_rows] = peak_code[peak_rows]  # the channel's max stays on the grid's end: same scale at export
            codes[:, a + i] = q
            e = (col - q * scale) / hi[i, i]
            w1[:, i:] -= np.outer(e, hi[i, i:])
            err1[:, i] = e
        w[:, b:] -= err1 @ hinv[a:b, b:]
    return codes.astype(np.int32), scale


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """U with H^-1 = U^T U, as GPTQ uses it (Cholesky of H, its inverse from the factor, Cholesky again)."""
    from scipy.linalg import cholesky, lapack

    for extra in (0.0, 1.0):  # a Hessian that is still not positive definite gets one more mean diagonal
        try:
            hd = h + extra * np.mean(np.diag(h)) * np.eye(len(h))
            low = cholesky(hd, lower=True)
            inv, info = lapack.dpotri(low, lower=1)
            if info != 0:
                raise np.linalg.LinAlgError(f"dpotri info {info}")
            inv = np.tril(inv) + np.tril(inv, -1).T
            return cholesky(inv, lower=False)
        except np.linalg.LinAlgError:
            continue

    raise QuantizationError("GPTQ: a layer's input Hessian is not positive definite even with extra damping "
                            "(its calibration inputs are degenerate); use more or more varied calibration images")


def _as_matrix(kernel: np.ndarray) -> np.ndarray:
    return kernel.reshape(-1, kernel.shape[-1]).T  # (kh*kw*cin, cout) -> (cout, kh*kw*cin); Dense: (out, in)


def gptq_model(model, bits: int, batches, label: str = "GPTQ") -> tuple[object, GptqReport]:
    """A copy of `model` whose Conv2D/Dense kernels hold GPTQ-rounded values on the `bits`-bit per-channel grid."""
    m = clone_model(model)
    layers = _gptq_layers(m)
    rep = GptqReport(bits)
    if not layers:
        return m, rep
    hs = hessians(m, layers, batches)
    for layer in track(layers, None, f"{label}: rounding {len(layers)} layers (INT{bits})", "layers"):
        kernel = layer.kernel.numpy()
        w = _as_matrix(kernel)
        h = hs[layer.name]
        codes, scale = round_columns(w, h, bits)
        wq = codes * scale[:, None]
        near = fake_quant(w, scale[:, None], bits)  # round-to-nearest on the same grid

        def out_err(v):  # E||(W - V) x||^2 under the input statistics: tr((W-V) H (W-V)^T)
            d = w - v
            return float(np.sum((d @ h) * d))

        base = out_err(near)
        layer.kernel.assign(wq.T.reshape(kernel.shape).astype(np.float32))
        rep.layers.append({"layer": layer.name, "columns": int(w.shape[1]),
                           "error_vs_nearest": round(out_err(wq) / base, 4) if base > 0 else None})
    return m, rep


def kernel_codes(model, bits: int) -> dict[str, np.ndarray]:
    """Per GPTQ layer the integer codes its kernel holds on the per-channel max grid (to check an export kept them)."""
    out = {}
    for layer in _gptq_layers(model):
        w = _as_matrix(layer.kernel.numpy())
        out[layer.name] = np.rint(w / max_scales(w, bits, (1,))).astype(np.int32)
    return out


def codes_kept(model, bits: int, exported: dict[str, np.ndarray]) -> dict:
    """How many of the GPTQ layers' codes an exported model holds unchanged; `exported`: tensor name -> codes
    (output channels, rest), e.g. `litert_quant.int4_codes`. A layer is matched by its name in the tensor name."""
    total = same = 0
    missing = []
    for name, codes in kernel_codes(model, bits).items():
        hit = next((c for t, c in exported.items() if f"/{name}/" in t and c.shape == codes.shape), None)
        if hit is None:
            missing.append(name)
            continue
        total += codes.size
        same += int((hit == codes).sum())
    return {"codes": total, "unchanged": same, "fraction": round(same / total, 6) if total else None,
            "layers_not_found": missing}
