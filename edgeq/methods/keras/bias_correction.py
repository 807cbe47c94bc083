"""Careful PTQ of weights: MSE-optimal per-channel clipping and empirical bias correction.

Bias correction (Nagel et al. 2019, "Data-Free Quantization", empirical variant) removes the mean
output shift each quantised kernel causes: for a layer y = W x + b the shift is (W_q - W) E[x], and
E[x] per input channel is measured on calibration images. The shift is subtracted from the layer's
bias, or, for a bias-free conv followed by batch norm, added to the norm's moving mean (which the
TFLite converter folds into the int32 bias).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeq.core.progress import track
from edgeq.core.tfcompat import keras, tf
from edgeq.measure.predictors import TFLitePredictor
from edgeq.methods.keras.fakequant import (WeightLayer, clone_model, fake_quant, max_scales, mse_scales, weight_layers)


@dataclass
class AdvancedReport:
    bits: int
    clipping: bool
    corrected: list[str] = field(default_factory=list)
    uncorrected: list[str] = field(default_factory=list)  # no bias and no batch norm to absorb the shift

    def to_dict(self) -> dict:
        return {"bits": self.bits, "mse_clipping": self.clipping, "bias_corrected_layers": len(self.corrected),
                "not_corrected": self.uncorrected}


def input_channel_means(model, batches, label: str = "advanced PTQ") -> dict[str, np.ndarray]:
    """Per-input-channel mean of every quantisable layer's input over the calibration batches."""
    layers = weight_layers(model)
    probe_inputs = [wl.layer.input for wl in layers]
    reduced = [tf().reduce_mean(t, axis=list(range(len(t.shape) - 1))) for t in probe_inputs]
    probe = keras().Model(model.inputs, reduced)
    fn = tf().function(lambda x: probe(x, training=False), reduce_retracing=True)
    sums = [np.zeros(int(t.shape[-1]), np.float64) for t in probe_inputs]
    n = 0
    for x, _ in track(batches, None, f"{label}: input means on calibration images", "batches"):
        outs = fn(tf().constant(x))
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, o in enumerate(outs):
            sums[i] += o.numpy().astype(np.float64) * len(x)
        n += len(x)
    return {wl.layer.name: (s / max(n, 1)).astype(np.float32) for wl, s in zip(layers, sums)}


def output_shift(wl: WeightLayer, d_w: np.ndarray, mean_in: np.ndarray) -> np.ndarray:
    """Mean change of each output channel caused by the kernel change d_w on inputs of mean mean_in."""
    if wl.reduce_axes == (0, 1):  # depthwise: (kh, kw, channels, multiplier)
        return (d_w.sum(axis=(0, 1)) * mean_in[:, None]).reshape(-1)
    if wl.reduce_axes == (0, 1, 2):  # conv: (kh, kw, cin, cout)
        return np.tensordot(d_w.sum(axis=(0, 1)), mean_in, axes=([0], [0]))
    return mean_in @ d_w  # dense: (in, out)


def _following_batch_norm(layer):
    nodes = getattr(layer, "_outbound_nodes", [])
    if len(nodes) != 1:
        return None
    nxt = nodes[0].outbound_layer
    return nxt if isinstance(nxt, keras().layers.BatchNormalization) else None


def _absorb_shift(layer, shift: np.ndarray) -> bool:
    """Cancel a mean output shift in the layer's bias or its batch norm; False when neither exists."""
    if getattr(layer, "use_bias", False) and layer.bias is not None:
        layer.bias.assign(layer.bias.numpy() - shift)
        return True
    bn = _following_batch_norm(layer)
    linear = getattr(layer, "activation", None) is None or layer.activation.__name__ == "linear"
    if bn is not None and linear and bn.axis in ([-1], [3], -1, 3):
        bn.moving_mean.assign(bn.moving_mean.numpy() + shift)
        return True
    return False


def quantize_weights_advanced(model, bits: int, calibration_batches, clipping: bool = True,
                              label: str | None = None):
    """A copy of `model` with per-channel `bits`-bit kernels, MSE-clipped (optional) and bias-corrected.

    With clipping=False the grid is max|w|/qmax per channel, exactly the one the TFLite converter
    uses, so a real INT8 export keeps these values bit for bit. `label` names the progress display.
    """
    label = label or f"advanced PTQ INT{bits}"
    means = input_channel_means(model, calibration_batches, label)
    m = clone_model(model)
    rep = AdvancedReport(bits, clipping)
    what = ("MSE clipping + " if clipping else "") + "bias correction"
    for wl in track(weight_layers(m), None, f"{label}: {what} of weight layers", "layers"):
        w = wl.kernel.numpy()
        s = mse_scales(w, bits, wl.reduce_axes) if clipping else max_scales(w, bits, wl.reduce_axes)
        wq = fake_quant(w, s, bits)
        wl.kernel.assign(wq)
        shift = output_shift(wl, wq - w, means[wl.layer.name])
        (rep.corrected if _absorb_shift(wl.layer, shift) else rep.uncorrected).append(wl.layer.name)
    return m, rep


def output_error(ref: np.ndarray, got: np.ndarray) -> dict:
    """How far a quantized model's outputs `got` are from the float model's `ref` on the same images (rows): the
    mean squared error every better-PTQ route is chosen by, and the top-1 agreement beside it."""
    ref, got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    return {"output_mse": float(np.mean((got - ref) ** 2)),
            "top1_agreement": round(float((got.argmax(1) == ref.argmax(1)).mean()), 4), "n": len(ref)}


def lowest_error(errors: dict[str, dict], prefer: tuple[str, ...] = ()) -> str:
    """The candidate (of `output_error`s by name) with the lowest output MSE; on a tie the higher top-1 agreement,
    then the earliest in `prefer` (the candidate a route keeps when it measures no worse)."""
    rank = {k: i for i, k in enumerate(prefer)}
    return min(errors, key=lambda k: (errors[k]["output_mse"], -errors[k]["top1_agreement"], rank.get(k, len(rank))))


def tflite_output_errors(ref: np.ndarray, int8_models: dict[str, bytes], x: np.ndarray) -> dict[str, dict]:
    """`output_error` of each .tflite (name -> bytes) on the preprocessed images `x` against the outputs `ref`."""
    import tempfile
    from pathlib import Path

    out = {}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "candidate.tflite"
        for name, blob in int8_models.items():
            p.write_bytes(blob)
            out[name] = output_error(ref, TFLitePredictor(p).predict(x))
    return out
