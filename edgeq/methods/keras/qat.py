"""The tfmot quantisation-aware model: what tfmot's default 8-bit scheme can quantise (its registry, named
layer by layer), the wrapped model, and its activation ranges set from calibration images."""
from __future__ import annotations

import contextlib
import math

import numpy as np

from edgeq.core.errors import QuantizationError, first_line
from edgeq.core.progress import track
from edgeq.core.tfcompat import keras
from edgeq.methods.keras.fakequant import kernel_of

UNSUPPORTED_HINT = ("give each a QuantizeConfig via tfmot quantize_annotate_layer, replace it with a "
                    "supported layer (Rescaling/Normalization: drop it and set preprocess.mean/std), or list "
                    "it in stages.qat.passthrough_layers to leave it unquantised during fine-tuning")


# ------------------------------------------------------------------ what tfmot can quantise
def _registry():
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import \
        default_8bit_quantize_registry as reg

    return reg.Default8BitQuantizeRegistry()


def _inbound_layers(layer) -> list:
    return [n.inbound_layers for n in getattr(layer, "_inbound_nodes", [])]


def _bn_is_folded(layer) -> bool:
    """tfmot handles batch norm only right after a linear Conv2D/DepthwiseConv2D/Dense (its transforms)."""
    ins = _inbound_layers(layer)
    if len(ins) != 1 or isinstance(ins[0], (list, tuple)):
        return False
    prev = ins[0]
    act = getattr(prev, "activation", None)
    return kernel_of(prev) is not None and (act is None or act.__name__ == "linear")


def unsupported_layers(model, passthrough: list[str] = ()) -> list[str]:
    """'name (Class)' of every layer tfmot's default 8-bit scheme cannot quantise (passthrough excluded)."""
    k = keras()
    if not isinstance(model, k.Sequential) and not getattr(model, "_is_graph_network", False):
        return [f"{model.name} ({type(model).__name__}: a subclassed model; rebuild it as a Functional model)"]
    reg = _registry()
    bad = []
    for layer in model.layers:
        cls = type(layer).__name__
        if isinstance(layer, k.layers.InputLayer) or layer.name in passthrough or cls in passthrough:
            continue
        if isinstance(layer, k.Model):
            bad.append(f"{layer.name} ({cls}: a nested model; flatten it into the outer model)")
        elif isinstance(layer, k.layers.BatchNormalization):
            if not _bn_is_folded(layer):
                bad.append(f"{layer.name} (BatchNormalization not directly after a linear Conv2D/Dense)")
        elif not reg.supports(layer):
            bad.append(f"{layer.name} ({cls})")
    return bad


def check_supported(model, passthrough: list[str] = ()) -> None:
    """QuantizationError naming each layer tfmot cannot quantise (and how to deal with it), if any."""
    bad = unsupported_layers(model, passthrough)
    if bad:
        raise QuantizationError(f"QAT: tfmot cannot quantise {len(bad)} layer(s): {', '.join(bad)}; "
                                + UNSUPPORTED_HINT)


def wrap_for_qat(model, passthrough: list[str] = ()):
    """tfmot-wrapped copy of `model`; QuantizationError naming each layer tfmot cannot quantise."""
    import tensorflow_model_optimization as tfmot

    check_supported(model, passthrough)
    q = tfmot.quantization.keras
    try:
        if not passthrough:
            return q.quantize_model(model)
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs \
            import NoOpQuantizeConfig

        def annotate(layer):
            if layer.name in passthrough or type(layer).__name__ in passthrough:
                return q.quantize_annotate_layer(layer, quantize_config=NoOpQuantizeConfig())
            if isinstance(layer, keras().layers.InputLayer):
                return layer
            return q.quantize_annotate_layer(layer)

        annotated = keras().models.clone_model(model, clone_function=annotate)
        scope = {type(layer).__name__: type(layer) for layer in model.layers}
        scope["NoOpQuantizeConfig"] = NoOpQuantizeConfig
        with q.quantize_scope(scope):
            return q.quantize_apply(annotated)
    except (RuntimeError, ValueError, TypeError) as e:
        first = first_line(e, 300)
        raise QuantizationError(f"QAT: tfmot could not wrap the model ({first}); " + UNSUPPORTED_HINT) from None


@contextlib.contextmanager
def _ranges_from_last_batch():
    """Make tfmot's moving-average range quantisers take the current batch's range outright.

    tfmot starts every activation range at [-6, 6] and moves it with decay 0.999, so a fine-tune of a
    few hundred steps would export ranges that are mostly the initial guess.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original = quant_ops.MovingAvgQuantize

    def last_batch(*args, **kw):
        kw["ema_decay"] = 0.0
        return original(*args, **kw)

    quant_ops.MovingAvgQuantize = last_batch
    try:
        yield
    finally:
        quant_ops.MovingAvgQuantize = original


def _batch_norms(qmodel) -> list:
    bn = keras().layers.BatchNormalization
    return [getattr(layer, "layer", layer) for layer in qmodel.layers
            if isinstance(getattr(layer, "layer", layer), bn)]


def calibrate_ranges(qmodel, x: np.ndarray, batch_size: int = 64) -> None:
    """Set every quantiser range of a tfmot model to the min/max seen over `x` (as PTQ calibration does).

    Batch norms run in inference mode meanwhile, so the ranges are those of the deployed network; all
    weights other than the ranges are left as they were.
    """
    is_range = [v.name.endswith(("_min:0", "_max:0")) for v in qmodel.weights]
    is_min = [v.name.endswith("_min:0") for v in qmodel.weights]
    before = qmodel.get_weights()
    bns = _batch_norms(qmodel)
    trainable = [bn.trainable for bn in bns]
    seen = None
    try:
        for bn in bns:
            bn.trainable = False  # a frozen Keras batch norm normalises with its moving statistics
        with _ranges_from_last_batch():
            starts = range(0, len(x), batch_size)
            for s in track(starts, len(starts), f"QAT: calibrate ranges of {qmodel.name} on {len(x)} images",
                           "batches"):
                qmodel(x[s:s + batch_size], training=True)
                now = qmodel.get_weights()
                seen = now if seen is None else [np.minimum(a, b) if m else np.maximum(a, b)
                                                 for a, b, m in zip(seen, now, is_min)]
    finally:
        for bn, t in zip(bns, trainable):
            bn.trainable = t
    qmodel.set_weights([a if r else b for a, b, r in zip(seen, before, is_range)])


def fit_softmax_input_range(qmodel, model, x: np.ndarray, output_levels: int = 256) -> tuple | None:
    """Narrow the range of the logits quantiser of a final Dense+softmax to what an int8 softmax output
    can show; returns (old_min, new_min), or None when the model does not end that way.

    Min/max calibration takes the lowest logit of any class on any image (-68 on the default ResNet-50,
    against a top of +106), so one int8 step of the logits is 0.68 and ~10 % of test images have their
    two best classes less than one step apart: the quantised logits flip them. A logit more than
    ln(256) below the image's best one has softmax probability < 1/256, under one step of the int8
    softmax output (scale 1/256) whatever its value, so the range need not reach below
    (lowest best logit over `x`) - ln(256); the argmax never depends on such a logit. The max is left
    alone. On the default ResNet-50 the step becomes 0.42 and agreement with FP32 rises from 97.0 %
    to 98.1 % of the test images.
    """
    k = keras()
    last = model.layers[-1]
    wrapped = qmodel.layers[-1]
    act = getattr(last, "activation", None)
    if not isinstance(last, k.layers.Dense) or getattr(act, "__name__", "") != "softmax":
        return None
    mins = [v for v in wrapped.weights if v.name.endswith("pre_activation_min:0")]
    if len(mins) != 1:
        return None
    feats = k.Model(model.inputs, last.input).predict(x, batch_size=64, verbose=0)
    kernel, bias = last.get_weights() if last.use_bias else (last.get_weights()[0], 0.0)
    logits = feats.reshape(len(x), -1) @ kernel + bias
    floor = float(logits.max(axis=1).min() - math.log(output_levels))
    old = float(mins[0].numpy())
    if floor > old:
        mins[0].assign(np.full(mins[0].shape, floor, np.float32))
        return old, floor
    return old, old
