"""The `qat` stage: quantisation-aware fine-tuning with tfmot, exported as full-integer INT8.

The FP32 model is wrapped with `tfmot.quantization.keras.quantize_model`, its activation ranges are
initialised from calibration images, it is fine-tuned on the training split (early stop on a
held-out part of it) and converted with the same full-integer check as the PTQ path.

Also here: `fine_tune_fake_quant`, straight-through-estimator fine-tuning of simulated low-bit
weights (INT4 and below), which the comparison uses where no runtime executes the real thing.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..artifacts import Artifact
from ..config import QatSpec
from ..data import LabelledImages, Preprocess, representative_dataset
from ..errors import DataError, QuantizationError
from . import tflite_ptq

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
    from ..tfcompat import keras

    k = keras()
    ins = _inbound_layers(layer)
    if len(ins) != 1 or isinstance(ins[0], (list, tuple)):
        return False
    prev = ins[0]
    act = getattr(prev, "activation", None)
    return (isinstance(prev, (k.layers.Conv2D, k.layers.DepthwiseConv2D, k.layers.Dense))
            and (act is None or act.__name__ == "linear"))


def unsupported_layers(model, passthrough: list[str] = ()) -> list[str]:
    """'name (Class)' of every layer tfmot's default 8-bit scheme cannot quantise (passthrough excluded)."""
    from ..tfcompat import keras

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


def wrap_for_qat(model, passthrough: list[str] = ()):
    """tfmot-wrapped copy of `model`; QuantizationError naming each layer tfmot cannot quantise."""
    import tensorflow_model_optimization as tfmot

    bad = unsupported_layers(model, passthrough)
    if bad:
        raise QuantizationError(f"QAT: tfmot cannot quantise {len(bad)} layer(s): {', '.join(bad)}; "
                                + UNSUPPORTED_HINT)
    q = tfmot.quantization.keras
    try:
        if not passthrough:
            return q.quantize_model(model)
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs \
            import NoOpQuantizeConfig

        from ..tfcompat import keras

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
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
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
    from ..tfcompat import keras

    bn = keras().layers.BatchNormalization
    return [getattr(layer, "layer", layer) for layer in qmodel.layers
            if isinstance(getattr(layer, "layer", layer), bn)]


def calibrate_ranges(qmodel, x: np.ndarray, batch_size: int = 64) -> None:
    """Set every quantiser range of a tfmot model to the min/max seen over `x` (as PTQ calibration does).

    Batch norms run in inference mode meanwhile, so the ranges are those of the deployed network; all
    weights other than the ranges are left as they were.
    """
    is_range = [v.name.endswith(("_min:0", "_max:0")) for v in qmodel.weights]
    from ..progress import track

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
    from ..tfcompat import keras

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


# ------------------------------------------------------------------ training data
@dataclass
class TrainData:
    train: LabelledImages
    val: LabelledImages | None
    steps_per_epoch: int


def training_split(train: LabelledImages | None, opts, what: str = "stages.qat") -> TrainData:
    """The fine-tuning images and a disjoint validation slice, both from the training split."""
    if train is None or len(train) == 0:
        raise DataError(f"{what}: QAT fine-tunes on training images but the data has no training split; "
                        "set data.train_path (or use a data.path large enough to leave images after "
                        "calibration and evaluation)")
    n_val = min(opts.validation_images, len(train) // 5)
    n_train = min(opts.train_images or len(train) - n_val, len(train) - n_val)
    if n_train < 1:
        raise DataError(f"{what}: no training images left after {n_val} validation images")
    tr = train.take(np.arange(n_train), f"{train.source} [:{n_train}]")
    val = train.take(np.arange(len(train) - n_val, len(train)), f"{train.source} (validation)") if n_val else None
    steps = opts.steps_per_epoch or math.ceil(n_train / opts.batch_size)
    return TrainData(tr, val, steps)


def batch_stream(data: LabelledImages, pre: Preprocess, batch_size: int, seed: int):
    """Endless shuffled (x, y) batches, preprocessed on the fly (a 55,000-image split never sits in memory)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(data))
        for s in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            idx = np.sort(order[s:s + batch_size])
            yield pre(data.images[idx]), data.labels[idx]


# ------------------------------------------------------------------ INT8 QAT with tfmot
@dataclass
class QatResult:
    model: object  # the fine-tuned tfmot model
    seconds: float
    steps: int
    epochs_run: int
    history: dict = field(default_factory=dict)
    val_top1_before: float | None = None
    val_top1_after: float | None = None
    val_loss_before: float | None = None
    fine_tune_kept: bool = True  # False: validation loss did not improve, the calibrated weights were kept


def outputs_probabilities(model) -> bool:
    """True when the model ends in softmax (its loss then takes probabilities, not logits)."""
    from ..tfcompat import keras

    last = model.layers[-1]
    act = getattr(last, "activation", None)
    if isinstance(last, keras().layers.Softmax):
        return True
    name = getattr(act, "__name__", "") or type(act).__name__
    if name == "QuantizeAwareActivation":  # tfmot wraps the activation of the last layer
        name = getattr(act.activation, "__name__", "")
    return name == "softmax"


def _top1(model, x, y) -> float:
    p = model.predict(x, batch_size=64, verbose=0)
    return round(float((np.argmax(p, axis=1) == y).mean()), 5)


def _teacher(model):
    """FP32 soft targets for distillation: class probabilities of the FP32 model."""
    from ..tfcompat import tf

    t = tf()
    probs = outputs_probabilities(model)
    fn = t.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: (fn(t.constant(x)) if probs else t.nn.softmax(fn(t.constant(x)))).numpy()


def fine_tune_qat(model, data: TrainData, pre: Preprocess, calibration: np.ndarray, opts: QatSpec,
                  log=print) -> QatResult:
    """Wrap `model` with tfmot, initialise its ranges on `calibration` and fine-tune it."""
    from ..progress import keras_progress, spinner
    from ..tfcompat import keras, set_seed

    k = keras()
    set_seed(opts.seed)
    with spinner(f"QAT: wrap {model.name} (tfmot quantize_model)"):
        qmodel = wrap_for_qat(model, opts.passthrough_layers)
    if opts.calibrate_ranges:
        calibrate_ranges(qmodel, calibration)
        logit_range = fit_softmax_input_range(qmodel, model, calibration) if opts.narrow_logits_range else None
        if logit_range and logit_range[1] != logit_range[0]:
            log(f"  QAT: logits range min {logit_range[0]:.2f} -> {logit_range[1]:.2f} (int8 softmax output)")
    xv, yv = (pre(data.val.images), data.val.labels) if data.val is not None else (None, None)
    if xv is not None:
        with spinner(f"QAT: validation top-1 before fine-tuning ({len(xv)} images)"):
            before = _top1(qmodel, xv, yv)
    else:
        before = None
    stream = batch_stream(data.train, pre, opts.batch_size, opts.seed)
    from_logits = not outputs_probabilities(model)
    if opts.distill:
        # Soft FP32 targets pull the quantised model towards the FP32 one; a few hundred steps on hard
        # labels mostly re-fit the training images instead.
        teacher = _teacher(model)
        stream = ((x, teacher(x)) for x, _ in stream)
        val = (xv, teacher(xv)) if xv is not None else None
        loss = k.losses.CategoricalCrossentropy(from_logits=from_logits)
    else:
        val = (xv, yv) if xv is not None else None
        loss = k.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    qmodel.compile(k.optimizers.Adam(opts.learning_rate), loss=loss)
    callbacks = []
    if val is not None and opts.early_stop_patience:
        callbacks.append(k.callbacks.EarlyStopping(monitor="val_loss", patience=opts.early_stop_patience,
                                                   restore_best_weights=True))
    start_loss = qmodel.evaluate(*val, batch_size=64, verbose=0) if val is not None else None
    start_weights = qmodel.get_weights()
    t = time.perf_counter()
    hist = {}
    if opts.epochs > 0:
        bar = keras_progress(f"QAT fine-tune {model.name} ({len(data.train)} images, batch {opts.batch_size})",
                             opts.epochs, data.steps_per_epoch)
        try:
            h = qmodel.fit(stream, epochs=opts.epochs, steps_per_epoch=data.steps_per_epoch, verbose=0,
                           callbacks=[*callbacks, bar], validation_data=val)
        finally:
            bar.close()  # Keras skips on_train_end when fit raises
        hist = {key: [round(float(v), 5) for v in vals] for key, vals in h.history.items()}
    seconds = round(time.perf_counter() - t, 1)
    epochs_run = len(next(iter(hist.values()), []))
    kept = True
    if start_loss is not None and hist.get("val_loss") and min(hist["val_loss"]) >= start_loss:
        # Early stopping whose baseline is the range-calibrated model: fine-tuning that ends further
        # from the validation target than it started is not kept.
        qmodel.set_weights(start_weights)
        kept = False
    if xv is not None:
        with spinner(f"QAT: validation top-1 after fine-tuning ({len(xv)} images)"):
            after = _top1(qmodel, xv, yv)
    else:
        after = None
    log(f"  QAT fine-tune: {epochs_run} epoch(s) x {data.steps_per_epoch} steps of {opts.batch_size} "
        f"on {len(data.train)} images in {seconds} s"
        + (f"; validation loss {start_loss:.4f} -> {min(hist['val_loss']):.4f}" if start_loss is not None and
           hist.get("val_loss") else "")
        + ("" if kept else " (not lower: kept the range-calibrated weights)")
        + (f"; validation top-1 {before:.4f} -> {after:.4f}" if before is not None else ""))
    return QatResult(qmodel, seconds, data.steps_per_epoch * epochs_run, epochs_run, hist, before, after,
                     start_loss, kept)


def qat_section(n: dict, opts: QatSpec, n_cal: int, artifacts: list[str], onnx_note: str | None) -> dict:
    """The report's `qat` section from the QAT artifact's notes."""
    how = "distilled from the FP32 outputs" if opts.distill else "on the labels"
    how += f", Adam lr {opts.learning_rate:g}, "
    how += f"activation ranges calibrated on {n_cal} images" if opts.calibrate_ranges else "tfmot's initial ranges"
    text = (f"tfmot quantize_model ({how}), fine-tuned {n.get('epochs_run')} epoch(s) / {n.get('steps')} steps "
            f"on {n.get('train_images')} training images in {n.get('fine_tune_seconds')} s (conversion "
            f"{n.get('convert_seconds')} s); validation top-1 {n.get('validation_top1_before_fine_tune')} before "
            f"fine-tuning, {n.get('validation_top1_after_fine_tune')} after")
    if not n.get("fine_tune_kept", True):
        text += " (fine-tuning did not lower the validation loss, so the range-calibrated weights were exported)"
    keys = ("fine_tune_seconds", "convert_seconds", "epochs_run", "steps", "train_images", "validation_images",
            "validation_top1_before_fine_tune", "validation_top1_after_fine_tune", "validation_loss_before",
            "fine_tune_kept", "history")
    return {"markdown": "\n".join(["## QAT", "", text + "."] + (["", onnx_note] if onnx_note else [])),
            **{k: n.get(k) for k in keys}, "artifacts": artifacts, "onnx": onnx_note}


def run_stage(ctx, opts: QatSpec) -> list[Artifact]:
    model = ctx.keras_model()
    bad = unsupported_layers(model, opts.passthrough_layers)  # fail before any training
    if bad:
        raise QuantizationError(f"QAT: tfmot cannot quantise {len(bad)} layer(s): {', '.join(bad)}; "
                                + UNSUPPORTED_HINT)
    data = training_split(ctx.splits.train, opts)
    cal = ctx.splits.calibration
    n_cal = min(opts.calibration_images, len(cal))
    ptq = ctx.cfg.stages.tflite_ptq
    n_rep = min(ptq.representative_images, len(cal))
    key = {"train": data.train.fingerprint(), "val": data.val.fingerprint() if data.val is not None else None,
           "calibration": cal.fingerprint()}
    params = {**opts.model_dump(exclude={"enabled", "export_onnx"}), "input_type": ptq.input_type,
              "output_type": ptq.output_type, "representative_images": n_rep}
    cache: dict = {}

    def fine_tuned() -> QatResult:
        if "r" not in cache:
            cache["r"] = fine_tune_qat(model, data, ctx.pre, ctx.pre(cal.images[:n_cal]), opts, ctx.log)
        return cache["r"]

    def notes_of(r: QatResult) -> dict:
        return {"fine_tune_seconds": r.seconds, "steps": r.steps, "epochs_run": r.epochs_run,
                "train_images": len(data.train), "validation_images": len(data.val) if data.val is not None else 0,
                "validation_top1_before_fine_tune": r.val_top1_before,
                "validation_top1_after_fine_tune": r.val_top1_after, "validation_loss_before": r.val_loss_before,
                "fine_tune_kept": r.fine_tune_kept, "history": r.history}

    def make_tflite(tmp):
        r = fine_tuned()
        t = time.perf_counter()
        blob = tflite_ptq.convert_int8(r.model, representative_dataset(cal, ctx.pre, n_rep),
                                       input_type=ptq.input_type, output_type=ptq.output_type,
                                       per_channel=True, allow_float_ops=False, name="int8_tflite_qat",
                                       calibration_images=n_rep)
        tmp.write_bytes(blob)
        return {**notes_of(r), "convert_seconds": round(time.perf_counter() - t, 1),
                **tflite_ptq.tensor_summary(blob), "float_ops": tflite_ptq.float_ops(blob),
                "size_floor": tflite_ptq.param_floor_bytes(model)}

    parent = ctx.fp32.name
    out = [ctx.produce("int8_tflite_qat", "int8_qat.tflite", key, make_tflite, fmt="tflite", precision="int8",
                       method="qat", stage="qat", params=params, parent=parent)]
    onnx_note = None
    if ctx.cfg.stages.onnx_ptq.enabled and opts.export_onnx:
        try:
            from .onnx_ptq import keras_to_onnx
        except ImportError:
            onnx_note = "INT8 ONNX of the QAT model not made: edgeq.quantize.onnx_ptq.keras_to_onnx is unavailable"
            ctx.log(f"  ! {onnx_note}")
        else:
            opset = ctx.cfg.stages.onnx_ptq.opset

            def make_onnx(tmp):
                r = fine_tuned()
                # tf2onnx turns tfmot's activation FakeQuant nodes into QuantizeLinear/DequantizeLinear
                # pairs; add_weight_qdq stores the weights as int8 too
                info = keras_to_onnx(r.model, tmp, opset, name="int8_onnx_qat") or {}
                return {**notes_of(r), **info, **add_weight_qdq(tmp)}

            onnx_params = {**params, "opset": opset, "weights": "int8 per-channel (DequantizeLinear)"}
            out.append(ctx.produce("int8_onnx_qat", "int8_qat.onnx", key, make_onnx, fmt="onnx", precision="int8",
                                   method="qat", stage="qat", params=onnx_params, parent=parent))
    ctx.set_section("qat", qat_section(out[0].notes, opts, n_cal, [a.name for a in out], onnx_note))
    return out


# ------------------------------------------------------------------ simulated low-bit QAT
def fine_tune_fake_quant(model, bits: int, batches, steps: int, learning_rate: float, seed: int = 0,
                         start=None):
    """A copy of `model` fine-tuned with `bits`-bit per-channel kernels (straight-through estimator).

    Float master kernels start from `model`'s; every step evaluates loss and gradients at the quantised
    kernels and applies them to the masters. Scales are the MSE-optimal ones of the starting kernels,
    held fixed. `start` (same architecture, e.g. the bias-corrected PTQ model) supplies every other
    weight, so step 0 is that PTQ model. Returns the copy with its kernels at their quantised values.
    """
    from ..progress import track
    from ..tfcompat import keras, set_seed, tf
    from .fakequant import clone_model, fake_quant, mse_scales, qmax, weight_layers

    t = tf()
    k = keras()
    set_seed(seed)
    m = clone_model(start if start is not None else model)
    wls = weight_layers(m)
    fp32_kernels = [wl.kernel.numpy() for wl in weight_layers(model)]
    scales = [t.constant(mse_scales(w, bits, wl.reduce_axes)) for w, wl in zip(fp32_kernels, wls)]
    masters = [t.Variable(w, trainable=True) for w in fp32_kernels]
    kernels = [wl.kernel for wl in wls]
    kernel_refs = {v.ref() for v in kernels}
    others = [v for v in m.trainable_variables if v.ref() not in kernel_refs]
    opt = k.optimizers.Adam(learning_rate)
    loss_fn = k.losses.SparseCategoricalCrossentropy(from_logits=not outputs_probabilities(model))
    q = float(qmax(bits))

    def project():
        for kv, mv, s in zip(kernels, masters, scales):
            kv.assign(t.clip_by_value(t.round(mv / s), -q, q) * s)

    @t.function(reduce_retracing=True)
    def step(x, y):
        project()
        with t.GradientTape() as tape:
            p = m(x, training=True)
            loss = loss_fn(y, p)
        grads = tape.gradient(loss, kernels + others)
        opt.apply_gradients(zip(grads, masters + others))
        return loss

    for _, (x, y) in zip(track(range(steps), steps, f"straight-through fine-tune of {bits}-bit kernels", "steps"),
                         batches):
        step(t.constant(x), t.constant(y))
    project()
    for wl, mv, s in zip(wls, masters, scales):  # exact numpy grid, as the other simulated cells use
        wl.kernel.assign(fake_quant(mv.numpy(), s.numpy(), bits))
    return m


# ------------------------------------------------------------------ ONNX of the QAT model
def add_weight_qdq(path) -> dict:
    """Store the float Conv/MatMul/Gemm weights of an exported QAT ONNX model as int8 + DequantizeLinear.

    tf2onnx folds tfmot's weight FakeQuant into float constants (only activations keep their Q/DQ
    pairs), so the weights are float on disk and ONNX Runtime runs those convolutions in float. QAT
    weights already sit on a per-channel int8 grid, so re-expressing them as int8 (symmetric,
    per output channel) is lossless up to float rounding; the largest change is returned.
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    uses: dict[str, int] = {}
    for node in g.node:
        for i in node.input:
            uses[i] = uses.get(i, 0) + 1
    dq_nodes, worst, done = [], 0.0, 0
    for node in g.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in inits or uses.get(name) != 1:
            continue
        w = numpy_helper.to_array(inits[name])
        if w.dtype != np.float32 or w.ndim < 2:
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else w.ndim - 1
        red = tuple(i for i in range(w.ndim) if i != axis)
        scale = np.max(np.abs(w), axis=red, keepdims=True) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        worst = max(worst, float(np.max(np.abs(q * scale - w))))
        g.initializer.remove(inits[name])
        g.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                              numpy_helper.from_array(scale.reshape(-1), name + "_scale"),
                              numpy_helper.from_array(np.zeros(scale.size, np.int8), name + "_zero_point")])
        dq_nodes.append(helper.make_node("DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero_point"],
                                         [name + "_dq"], name=name + "_DequantizeLinear", axis=axis))
        node.input[1] = name + "_dq"
        done += 1
    nodes = dq_nodes + list(g.node)  # the new nodes read only initializers: first is a valid order
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return {"int8_weight_tensors": done, "weight_requantisation_max_abs_change": worst}
