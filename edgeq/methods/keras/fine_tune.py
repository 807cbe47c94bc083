"""Fine-tuning a quantised model on the training split: the images it uses, tfmot QAT at INT8, and
straight-through-estimator fine-tuning of simulated low-bit kernels (INT4 and below, for the comparison).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from edgeq.core.config import QatSpec
from edgeq.core.data import LabelledImages, Preprocess
from edgeq.core.errors import DataError
from edgeq.core.progress import keras_progress, spinner, track
from edgeq.core.tfcompat import keras, set_seed, tf
from edgeq.methods.keras import distribute
from edgeq.methods.keras.fakequant import clone_model, fake_quant, mse_scales, qmax, weight_layers
from edgeq.methods.keras.qat import calibrate_ranges, fit_softmax_input_range, wrap_for_qat


# ------------------------------------------------------------------ training data
@dataclass
class TrainData:
    train: LabelledImages
    val: LabelledImages | None
    steps_per_epoch: int


def training_split(train: LabelledImages | None, opts: QatSpec, what: str = "stages.qat") -> TrainData:
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


def batch_stream(data: LabelledImages, pre: Preprocess, batch_size: int, seed: int, start: int = 0,
                 part: tuple[int, int] = (0, 1)):
    """Endless shuffled (x, y) batches, preprocessed on the fly (a 55,000-image split never sits in memory).

    start: skip that many batches without loading them (a resumed fine-tune continues the same order).
    part: (index, count) -- only that share of each batch's rows, for one of `count` distributed workers."""
    rng = np.random.default_rng(seed)
    n = 0
    while True:
        order = rng.permutation(len(data))
        for s in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            n += 1
            if n <= start:
                continue
            idx = np.sort(order[s:s + batch_size])
            if part[1] > 1:
                share = len(idx) // part[1]
                idx = idx[part[0] * share:(part[0] + 1) * share]
            yield pre(data.images[idx]), data.labels[idx]


def outputs_probabilities(model) -> bool:
    """True when the model ends in softmax (its loss then takes probabilities, not logits)."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    if isinstance(last, keras().layers.Softmax):
        return True
    name = getattr(act, "__name__", "") or type(act).__name__
    if name == "QuantizeAwareActivation":  # tfmot wraps the activation of the last layer
        name = getattr(act.activation, "__name__", "")
    return name == "softmax"


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
    distribution: dict = field(default_factory=dict)  # strategy, replicas, workers, resumed_at_epoch (distributed)


def fine_tune_notes(r: QatResult, data: TrainData, **extra) -> dict:
    """What a fine-tune recorded (Keras or PyTorch), in the notes of every artifact made from it; `extra` before
    the distribution."""
    return {"fine_tune_seconds": r.seconds, "steps": r.steps, "epochs_run": r.epochs_run,
            "train_images": len(data.train), "validation_images": len(data.val) if data.val is not None else 0,
            "validation_top1_before_fine_tune": r.val_top1_before,
            "validation_top1_after_fine_tune": r.val_top1_after, "validation_loss_before": r.val_loss_before,
            "fine_tune_kept": r.fine_tune_kept, "history": r.history, **extra,
            **({"distribution": r.distribution} if r.distribution else {})}


def _top1(model, x, y, when: str) -> float | None:
    if x is None:
        return None
    with spinner(f"QAT: validation top-1 {when} fine-tuning ({len(x)} images)"):
        p = model.predict(x, batch_size=64, verbose=0)
    return round(float((np.argmax(p, axis=1) == y).mean()), 5)


def _teacher(model):
    """FP32 soft targets for distillation: class probabilities of the FP32 model."""
    t = tf()
    probs = outputs_probabilities(model)
    fn = t.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: (fn(t.constant(x)) if probs else t.nn.softmax(fn(t.constant(x)))).numpy()


def _objective(model, stream, xv, yv, opts: QatSpec):
    """(training batches, validation data, loss): soft FP32 targets when distilling, else the labels."""
    k = keras()
    from_logits = not outputs_probabilities(model)
    if opts.distill:
        # Soft FP32 targets pull the quantised model towards the FP32 one; a few hundred steps on hard
        # labels mostly re-fit the training images instead.
        teacher = _teacher(model)
        return (((x, teacher(x)) for x, _ in stream), (xv, teacher(xv)) if xv is not None else None,
                k.losses.CategoricalCrossentropy(from_logits=from_logits))
    return (stream, (xv, yv) if xv is not None else None,
            k.losses.SparseCategoricalCrossentropy(from_logits=from_logits))


def fine_tune_qat(model, data: TrainData, pre: Preprocess, calibration: np.ndarray | None, opts: QatSpec,
                  log=print, checkpoint_dir=None, callbacks=()) -> QatResult:
    """Wrap `model` with tfmot, initialise its ranges on `calibration` (opts.calibrate_ranges) and fine-tune it.

    Under opts.distribution the fit runs on a twin of the wrapped model made in the strategy's scope (from the
    calibrated weights), with BackupAndRestore checkpoints in `checkpoint_dir`; the result is this process's
    plain model holding the trained weights (what conversion and evaluation take). `callbacks`: extra Keras
    callbacks for the fit (e.g. a step timer)."""
    set_seed(opts.seed)
    with spinner(f"QAT: wrap {model.name} (tfmot quantize_model)"):
        qmodel = wrap_for_qat(model, opts.passthrough_layers)
    if opts.calibrate_ranges:
        calibrate_ranges(qmodel, calibration)
        logit_range = fit_softmax_input_range(qmodel, model, calibration) if opts.narrow_logits_range else None
        if logit_range and logit_range[1] != logit_range[0]:
            log(f"  QAT: logits range min {logit_range[0]:.2f} -> {logit_range[1]:.2f} (int8 softmax output)")
    xv, yv = (pre(data.val.images), data.val.labels) if data.val is not None else (None, None)
    before = _top1(qmodel, xv, yv, "before")
    if opts.distribution.strategy != "none":
        r = _fit_distributed(qmodel, model, data, pre, (xv, yv), opts, checkpoint_dir, log, callbacks)
    else:
        stream, val, loss = _objective(model, batch_stream(data.train, pre, opts.batch_size, opts.seed), xv, yv,
                                       opts)
        r = _fit(qmodel, model.name, data, stream, val, loss, opts, extra_callbacks=callbacks)
    r.val_top1_before, r.val_top1_after = before, _top1(qmodel, xv, yv, "after")
    val_loss = r.history.get("val_loss")
    log(f"  QAT fine-tune: {r.epochs_run} epoch(s) x {data.steps_per_epoch} steps of {opts.batch_size} "
        f"on {len(data.train)} images in {r.seconds} s"
        + (f"; validation loss {r.val_loss_before:.4f} -> {min(val_loss):.4f}"
           if r.val_loss_before is not None and val_loss else "")
        + ("" if r.fine_tune_kept else " (not lower: kept the range-calibrated weights)")
        + (f"; validation top-1 {before:.4f} -> {r.val_top1_after:.4f}" if before is not None else ""))
    return r


def _fit_distributed(qmodel, model, data: TrainData, pre: Preprocess, val_xy, opts: QatSpec, checkpoint_dir,
                     log, callbacks=()) -> QatResult:
    """`_fit` under the configured tf.distribute strategy: each worker loads and distils only its rows of every
    global batch; Keras all-reduces the gradients; epochs are checkpointed for BackupAndRestore."""
    from pathlib import Path

    spec = opts.distribution
    strategy = distribute.start(spec)
    distribute.check_batch(opts.batch_size, strategy, spec)
    role = distribute.worker_role(spec)
    backup = Path(checkpoint_dir if checkpoint_dir is not None else spec.checkpoint_dir or "qat_backup")
    first = distribute.resumed_epoch(backup)
    if first:
        log(f"  QAT: resuming from the epoch checkpoint in {backup}: epoch {first + 1} of {opts.epochs}")
    with strategy.scope():
        twin = wrap_for_qat(model, opts.passthrough_layers)
    twin.set_weights(qmodel.get_weights())
    xv, yv = val_xy
    _, val, loss = _objective(model, iter(()), xv, yv, opts)

    def part_batches(index: int, count: int):
        rows = batch_stream(data.train, pre, opts.batch_size, opts.seed, start=first * data.steps_per_epoch,
                            part=(index, count))
        return _objective(model, rows, None, None, opts)[0]

    train = distribute.dataset(strategy, part_batches, opts.batch_size)
    log(f"  QAT: {distribute.STRATEGY_NAMES[spec.strategy]} ({role.name} of {role.workers} worker(s), "
        f"{distribute.replicas(strategy)} replica(s), global batch {opts.batch_size})")
    with distribute.global_batch_ranges():
        r = _fit(twin, model.name, data, train, val, loss, opts,
                 extra_callbacks=[distribute.backup_callback(backup), *callbacks], scope=strategy.scope())
    qmodel.set_weights(twin.get_weights())
    r.model = qmodel
    r.distribution = {"strategy": spec.strategy, "workers": role.workers,
                      "replicas": distribute.replicas(strategy), "resumed_at_epoch": first}
    return r


def _fit(qmodel, name: str, data: TrainData, stream, val, loss, opts: QatSpec, extra_callbacks=(),
         scope=None) -> QatResult:
    """Keras fit with early stopping; the starting weights are kept when validation loss never improves."""
    import contextlib

    k = keras()
    with scope or contextlib.nullcontext():  # a strategy's optimizer is made in its scope
        qmodel.compile(k.optimizers.Adam(opts.learning_rate), loss=loss)
    callbacks = [*extra_callbacks]
    if val is not None and opts.early_stop_patience:
        callbacks.append(k.callbacks.EarlyStopping(monitor="val_loss", patience=opts.early_stop_patience,
                                                   restore_best_weights=True))
    start_loss = qmodel.evaluate(*val, batch_size=64, verbose=0) if val is not None else None
    start_weights = qmodel.get_weights()
    t = time.perf_counter()
    hist = {}
    if opts.epochs > 0:
        bar = keras_progress(f"QAT fine-tune {name} ({len(data.train)} images, batch {opts.batch_size})",
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
    return QatResult(qmodel, seconds, data.steps_per_epoch * epochs_run, epochs_run, hist,
                     val_loss_before=start_loss, fine_tune_kept=kept)


# ------------------------------------------------------------------ simulated low-bit QAT
def fine_tune_fake_quant(model, bits: int, batches, steps: int, learning_rate: float, seed: int = 0,
                         start=None):
    """A copy of `model` fine-tuned with `bits`-bit per-channel kernels (straight-through estimator).

    Float master kernels start from `model`'s; every step evaluates loss and gradients at the quantised
    kernels and applies them to the masters. Scales are the MSE-optimal ones of the starting kernels,
    held fixed. `start` (same architecture, e.g. the bias-corrected PTQ model) supplies every other
    weight, so step 0 is that PTQ model. Returns the copy with its kernels at their quantised values.
    """
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
