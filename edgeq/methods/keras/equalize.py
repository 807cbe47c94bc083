"""Cross-layer range equalisation of a Keras model (Nagel et al. 2019, "Data-Free Quantization", sec. 4.1).

For two weight layers joined by a positively homogeneous path (a batch norm, ReLU without a cap, zero
padding, global average pooling), scaling channel c of the first layer's output by 1/s_c and the second
layer's matching input weights by s_c leaves the float model's function unchanged. Int8 activations share
one scale per tensor, so a tensor whose channels span very different ranges (an outlier channel, a network
rescaled by training or by an export) spends its 256 levels on the widest channel and rounds the others
away. Per-channel weights make the first layer's side free; the second layer's side is free when it is
depthwise (its weights are per channel too), else the two ranges are balanced (s_c = sqrt(a_c / w_c), DFQ's
rule with the measured activation range a_c in place of the first layer's weight range).

ReLU6 is not homogeneous (the cap at 6 does not scale), so MobileNetV2-style pairs are left alone, as is any
tensor with a second consumer (a residual branch would see the scaled values).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeq.core.progress import spinner
from edgeq.core.tfcompat import keras, tf
from edgeq.methods.keras.fakequant import clone_model, kernel_of

MIN_SCALE = 1e-4  # dead channels (range ~0) keep their scale instead of being blown up


@dataclass(frozen=True)
class Pair:
    """Two weight layers whose joining tensor can be rescaled per channel; `tensor_layer` outputs that tensor."""

    first: object
    second: object
    norm: object | None  # a BatchNormalization after `first` (scaled instead of first's kernel)
    tensor_layer: object  # the layer whose output is the int8 tensor that is equalised (measured here)


@dataclass
class EqualizationReport:
    pairs: list[dict] = field(default_factory=list)  # first, second, channels, range ratio before/after

    def to_dict(self) -> dict:
        return {"equalized_pairs": len(self.pairs), "pairs": self.pairs}


def _single_consumer(layer, members: set):
    """The one layer of the model that reads `layer`'s output, or None. Layers outside the model (probes that
    measured it, e.g. bias correction's input means) attach outbound nodes too and do not count."""
    nodes = [n for n in getattr(layer, "_outbound_nodes", []) if id(n.outbound_layer) in members]
    return nodes[0].outbound_layer if len(nodes) == 1 else None


def _is_relu(layer, k) -> bool:
    if isinstance(layer, k.layers.ReLU):
        return layer.max_value is None and float(layer.threshold) == 0.0
    if isinstance(layer, k.layers.Activation):
        return getattr(layer.activation, "__name__", "") in ("relu", "linear")
    return False


def _homogeneous_activation(layer) -> bool:
    name = getattr(getattr(layer, "activation", None), "__name__", "linear")
    return name in ("linear", "relu")


def find_pairs(model) -> list[Pair]:
    """Every (weight layer, weight layer) pair joined by a path that commutes with per-channel scaling."""
    k = keras()
    members = {id(layer) for layer in model.layers}
    pairs = []
    for first in model.layers:
        wl = kernel_of(first)
        if wl is None or not _homogeneous_activation(first) or getattr(first, "data_format", None) == "channels_first":
            continue  # channels_first: the channel axis is not the last one the scaling below assumes
        if isinstance(first, k.layers.DepthwiseConv2D) and first.depth_multiplier != 1:
            continue
        norm, tensor_layer, nxt, pooled = None, first, _single_consumer(first, members), False
        last = len(first.output.shape) - 1  # a batch norm over any other axis does not scale the channels
        if isinstance(nxt, k.layers.BatchNormalization) and getattr(first.activation, "__name__", "") == "linear" \
                and nxt.axis in ([-1], [last], -1, last) and nxt.scale and nxt.center:
            norm, tensor_layer, nxt = nxt, nxt, _single_consumer(nxt, members)
        if nxt is not None and _is_relu(nxt, k):
            tensor_layer, nxt = nxt, _single_consumer(nxt, members)
        while isinstance(nxt, (k.layers.ZeroPadding2D, k.layers.Dropout, k.layers.GlobalAveragePooling2D)):
            pooled = pooled or isinstance(nxt, k.layers.GlobalAveragePooling2D)
            nxt = _single_consumer(nxt, members)
        second = kernel_of(nxt) if nxt is not None else None
        if second is None or (pooled and not isinstance(nxt, k.layers.Dense)) \
                or (isinstance(nxt, k.layers.Dense) and not pooled and len(first.output.shape) != 2):
            continue
        if isinstance(nxt, k.layers.DepthwiseConv2D) and nxt.depth_multiplier != 1 \
                or getattr(nxt, "data_format", None) == "channels_first" or getattr(nxt, "groups", 1) != 1:
            continue
        pairs.append(Pair(first, nxt, norm, tensor_layer))
    return pairs


def channel_ranges(model, tensor_layers: list, batches) -> list[np.ndarray]:
    """max |x| per channel of each layer's output over the calibration batches."""
    outs = [tf().reduce_max(tf().abs(t.output), axis=list(range(len(t.output.shape) - 1))) for t in tensor_layers]
    probe = keras().Model(model.inputs, outs)
    fn = tf().function(lambda x: probe(x, training=False), reduce_retracing=True)
    ranges = [np.zeros(int(t.output.shape[-1]), np.float64) for t in tensor_layers]
    for x, _ in batches:
        got = fn(tf().constant(x))
        got = got if isinstance(got, (list, tuple)) else [got]
        for r, g in zip(ranges, got):
            np.maximum(r, g.numpy(), out=r)
    return ranges


def input_channel_range(layer) -> np.ndarray:
    """max |w| over everything but the input-channel axis of the layer's kernel."""
    w = kernel_of(layer).kernel.numpy()
    if w.ndim == 2:  # Dense (in, out)
        return np.abs(w).max(axis=1)
    return np.abs(w).max(axis=(0, 1, 3))  # conv (kh, kw, cin, cout) / depthwise (kh, kw, cin, 1)


def _scale_output_channels(pair: Pair, s: np.ndarray) -> None:
    """Divide channel c of the joining tensor by s_c (in the batch norm when there is one)."""
    if pair.norm is not None:
        pair.norm.gamma.assign(pair.norm.gamma.numpy() / s)
        pair.norm.beta.assign(pair.norm.beta.numpy() / s)
        return
    wl = kernel_of(pair.first)
    w = wl.kernel.numpy()
    wl.kernel.assign(w / (s.reshape(1, 1, -1, 1) if wl.reduce_axes == (0, 1) else s))
    if getattr(pair.first, "use_bias", False) and pair.first.bias is not None:
        pair.first.bias.assign(pair.first.bias.numpy() / s)


def _scale_input_channels(layer, s: np.ndarray) -> None:
    wl = kernel_of(layer)
    w = wl.kernel.numpy()
    wl.kernel.assign(w * (s[:, None] if w.ndim == 2 else s.reshape(1, 1, -1, 1)))


def scale_pair(pair: Pair, s: np.ndarray) -> None:
    """Channel c of the joining tensor divided by s_c, the second layer's input channel c multiplied by it: the
    float function is unchanged."""
    _scale_output_channels(pair, s)
    _scale_input_channels(pair.second, s)


def equalize(model, batches, label: str = "cross-layer equalisation") -> tuple[object, EqualizationReport]:
    """A copy of `model` with every equalisable pair rescaled from activation ranges measured on `batches`."""
    m = clone_model(model)
    rep = EqualizationReport()
    pairs = find_pairs(m)
    if not pairs:
        return m, rep
    with spinner(f"{label}: activation ranges of {len(pairs)} layer pairs"):
        ranges = channel_ranges(m, [p.tensor_layer for p in pairs], batches)
    for p, a in zip(pairs, ranges):
        live = a > a.max() * 1e-6
        if isinstance(p.second, keras().layers.DepthwiseConv2D):
            s = a / a.max()  # second side per channel too: make every channel span the tensor's range
        else:
            w = input_channel_range(p.second)
            s = np.sqrt(a / np.maximum(w, 1e-12))
            s = s / s[live].max() if live.any() else s
        s = np.where(live, np.maximum(s, MIN_SCALE), 1.0).astype(np.float32)
        scale_pair(p, s)
        after = a / s
        rep.pairs.append({"first": p.first.name, "second": p.second.name, "channels": int(len(s)),
                          "range_ratio_before": _ratio(a), "range_ratio_after": _ratio(after)})
    return m, rep


def _ratio(a: np.ndarray) -> float:
    """Widest channel range over the median one (1 = equal)."""
    med = float(np.median(a[a > 0])) if (a > 0).any() else 0.0
    return round(float(a.max()) / med, 2) if med > 0 else 0.0
