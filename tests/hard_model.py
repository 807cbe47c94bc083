"""The hard model of the accuracy-recovery tests: a small depthwise network naive INT8 breaks.

Trained briefly on the shipped Fashion-MNIST sample's training images (never the calibration or evaluation
ones), then given an equalisation-breaking rescale: every activation tensor between two weight layers gets
per-channel factors spread log-uniformly over [1/SPREAD, SPREAD], and one of them (pw1 -> dw2) an outlier
channel OUTLIER times larger, each compensated exactly in the next layer's input weights. The float model computes the same function (ReLU is
positively homogeneous), but a per-tensor int8 activation scale now spends its 256 levels on the outlier
channel and rounds the others away, and the per-channel weight ranges are deliberately unequal: the pattern
EfficientNet/MobileNetV3-class networks show after training, made deliberately strong.
"""
from __future__ import annotations

import numpy as np

SPREAD = 2.0
OUTLIER = 64.0
OUTLIER_TENSOR = 2  # which equalisable tensor (in layer order) gets the outlier channel: pw1's output, into dw2


def build_hard_model(seed: int = 0):
    import edgeq  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
    from edgeq.core.data import SHIPPED_SAMPLE
    from edgeq.core.tfcompat import keras, set_seed

    set_seed(seed)
    k = keras()
    with np.load(SHIPPED_SAMPLE) as z:
        x = (z["train_images"][..., None].astype(np.float32) - 127.5) / 127.5
        y = z["train_labels"]
    inp = k.Input((28, 28, 1))
    h = k.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1")(inp)
    h = k.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw1")(h)
    h = k.layers.Conv2D(32, 1, activation="relu", name="pw1")(h)
    h = k.layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu", name="dw2")(h)
    h = k.layers.Conv2D(32, 1, activation="relu", name="pw2")(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    out = k.layers.Dense(10, activation="softmax", name="logits")(h)
    m = k.Model(inp, out, name="hard")
    m.compile(k.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=12, batch_size=32, verbose=0)
    return unequalize(m, seed + 1)


def unequalize(model, seed: int):
    """Rescale every equalisable tensor of `model` in place (float function unchanged): see the module text."""
    from edgeq.methods.keras import equalize

    rng = np.random.default_rng(seed)
    for i, p in enumerate(equalize.find_pairs(model)):
        c = int(p.tensor_layer.output.shape[-1])
        s = np.exp(rng.uniform(-np.log(SPREAD), np.log(SPREAD), c)).astype(np.float32)
        if i == OUTLIER_TENSOR:
            s[rng.integers(c)] = 1.0 / OUTLIER  # channel c divided by s: OUTLIER times larger
        equalize.scale_pair(p, s)
    return model


def save_hard_model(path, seed: int = 0) -> None:
    """Train and save the hard model in a fresh process: its brief training is seeded, but what TensorFlow computes
    also depends on the process's threading state, which earlier tests in a session (torch, NNCF, Ray) change."""
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    code = f"import sys; sys.path.insert(0, {str(here)!r}); from hard_model import build_hard_model; " \
           f"build_hard_model({seed}).save({str(path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=900)
