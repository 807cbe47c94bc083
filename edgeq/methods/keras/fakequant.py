"""Simulated low-bit weights: symmetric per-channel fake quantisation of a Keras model's kernels.

Used for the comparison cells no runtime here can execute for real (INT4 and below). Only kernels of
Conv2D, DepthwiseConv2D and Dense are quantised; activations stay float. Per-output-channel scales
make the result independent of batch-norm folding: folding multiplies each output channel by one
factor, which scales that channel's grid by the same factor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeq.core.tfcompat import keras

MSE_ALPHAS = np.linspace(0.30, 1.0, 36)  # clipping ratios searched for the MSE-optimal scale


@dataclass
class WeightLayer:
    """One quantisable kernel: its layer, the kernel variable and the axes reduced per channel."""

    layer: object
    kernel: object  # tf.Variable
    reduce_axes: tuple[int, ...]


def kernel_of(layer) -> WeightLayer | None:
    """The quantisable kernel of one layer, or None: edgeq's one definition of a weight layer.

    Conv2D, DepthwiseConv2D and Dense, with the axes reduced per output channel."""
    k = keras()
    if isinstance(layer, k.layers.DepthwiseConv2D):  # before Conv2D: it subclasses it
        return WeightLayer(layer, layer.depthwise_kernel, (0, 1))
    if isinstance(layer, k.layers.Conv2D) and not isinstance(layer, k.layers.SeparableConv2D):
        return WeightLayer(layer, layer.kernel, (0, 1, 2))
    if isinstance(layer, k.layers.Dense):
        return WeightLayer(layer, layer.kernel, (0,))
    return None


def weight_layers(model) -> list[WeightLayer]:
    """Quantisable kernels of `model`, in layer order."""
    return [wl for wl in map(kernel_of, model.layers) if wl is not None]


def qmax(bits: int) -> int:
    """Largest code of a symmetric narrow-range grid: 127 at 8 bits, 7 at 4 bits."""
    return 2 ** (bits - 1) - 1


def max_scales(w: np.ndarray, bits: int, axes: tuple[int, ...]) -> np.ndarray:
    """Per-channel scale max|w| / qmax (the round-to-nearest grid TFLite uses), broadcastable to w."""
    m = np.max(np.abs(w), axis=axes, keepdims=True)
    return np.where(m > 0, m / qmax(bits), 1.0).astype(np.float32)


def fake_quant(w: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    q = qmax(bits)
    return (np.clip(np.rint(w / scale), -q, q) * scale).astype(np.float32)


def mse_scales(w: np.ndarray, bits: int, axes: tuple[int, ...]) -> np.ndarray:
    """Per-channel scale (a clipped max) that minimises the squared rounding + clipping error."""
    base = max_scales(w, bits, axes)
    best = base.copy()
    best_err = np.sum((w - fake_quant(w, base, bits)) ** 2, axis=axes, keepdims=True)
    for a in MSE_ALPHAS[:-1]:
        s = base * a
        err = np.sum((w - fake_quant(w, s, bits)) ** 2, axis=axes, keepdims=True)
        better = err < best_err
        best = np.where(better, s, best)
        best_err = np.where(better, err, best_err)
    return best.astype(np.float32)


def clone_model(model):
    """An independent copy of a tf-keras model with the same weights."""
    m = keras().models.clone_model(model)
    m.set_weights(model.get_weights())
    return m


def quantize_weights_rtn(model, bits: int):
    """Naive PTQ: a copy of `model` with every kernel rounded to nearest on a per-channel max grid."""
    m = clone_model(model)
    for wl in weight_layers(m):
        w = wl.kernel.numpy()
        wl.kernel.assign(fake_quant(w, max_scales(w, bits, wl.reduce_axes), bits))
    return m


def kernel_parameter_count(model) -> int:
    return sum(int(np.prod(wl.kernel.shape)) for wl in weight_layers(model))


def packed_size_bytes(int8_size_bytes: int, model, bits: int) -> int:
    """Estimated file size at `bits`-bit kernels: the INT8 file with each kernel byte repacked."""
    return int(round(int8_size_bytes - kernel_parameter_count(model) * (8 - bits) / 8))
