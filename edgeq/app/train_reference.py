"""Reproducible recipe for the embedded default FP32 models (Fashion-MNIST, Keras applications).

`edgeq train-reference mobilenet_v2|resnet50` builds the Keras application architecture with
weights=None and 10 classes, trains it on Fashion-MNIST train[:55000] (never the calibration pool
train[55000:] nor the test set) with fixed seeds, and writes models/<name>.keras plus
models/<name>.train.json (recipe, timings and FP32 test accuracy).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path


from edgeq.core.artifacts import atomic_path, write_json_atomic
from edgeq.core.data import Preprocess, fashion_mnist_splits
from edgeq.core.tfcompat import keras, set_seed, tf


@dataclass(frozen=True)
class Recipe:
    name: str
    arch: str
    input_size: int
    alpha: float | None
    train_images: int
    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    bn_momentum: float = 0.9
    seed: int = 0


RECIPES = {
    "mobilenet_v2": Recipe("mobilenet_v2", "MobileNetV2", 96, 0.35, train_images=55_000, epochs=4),
    "resnet50": Recipe("resnet50", "ResNet50", 32, None, train_images=55_000, epochs=3),
}


def build(recipe: Recipe):
    k = keras()
    shape = (recipe.input_size, recipe.input_size, 3)
    if recipe.arch == "MobileNetV2":
        model = k.applications.MobileNetV2(input_shape=shape, alpha=recipe.alpha, weights=None, classes=10)
    elif recipe.arch == "ResNet50":
        model = k.applications.ResNet50(input_shape=shape, weights=None, classes=10)
    else:
        raise ValueError(recipe.arch)
    for layer in model.layers:
        if isinstance(layer, k.layers.BatchNormalization):
            # The applications' default (0.999) leaves short trainings with unusable moving stats.
            layer.momentum = recipe.bn_momentum
    return model


def train(name: str, out_dir: Path, train_images: int | None = None, epochs: int | None = None) -> dict:
    r = RECIPES[name]
    if train_images or epochs:
        r = Recipe(**{**asdict(r), "train_images": train_images or r.train_images, "epochs": epochs or r.epochs})
    set_seed(r.seed)
    tf().config.experimental.enable_op_determinism()
    k = keras()
    pre = Preprocess((r.input_size, r.input_size), 3)
    splits = fashion_mnist_splits(calibration_size=0, eval_size=None, train_size=r.train_images, seed=r.seed)
    assert splits.train is not None
    t0 = time.time()
    x_train = pre.resize(splits.train.images)
    y_train = splits.train.labels
    x_test = pre.resize(splits.eval.images)
    print(f"[{name}] data ready: {len(x_train)} train / {len(x_test)} test at {x_train.shape[1:]} "
          f"({time.time() - t0:.0f}s)", flush=True)

    def ds(x, y, shuffle):
        d = tf().data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            d = d.shuffle(len(x), seed=r.seed, reshuffle_each_iteration=True)
            d = d.map(lambda a, b: (tf().image.random_flip_left_right(a, seed=r.seed), b))
        d = d.batch(r.batch_size).map(lambda a, b: ((tf().cast(a, "float32") - 127.5) / 127.5, b))
        return d.prefetch(2)

    model = build(r)
    steps = math.ceil(len(x_train) / r.batch_size) * r.epochs
    lr = k.optimizers.schedules.CosineDecay(r.lr, decay_steps=steps, alpha=0.02)
    model.compile(k.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t1 = time.time()
    model.fit(ds(x_train, y_train, True), epochs=r.epochs, verbose=2)
    train_s = time.time() - t1
    _, acc = model.evaluate(ds(x_test, splits.eval.labels, False), verbose=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.keras"
    clean = build(r)  # an uncompiled twin: the saved file carries no optimizer state
    clean.set_weights(model.get_weights())
    with atomic_path(target) as tmp:
        clean.save(tmp)
    info = {"recipe": asdict(r), "train_seconds": round(train_s, 1),
            "seconds_per_1000_images": round(train_s / (len(x_train) * r.epochs) * 1000, 2),
            "fp32_top1_test": round(float(acc), 4), "test_images": len(x_test),
            "train_split": splits.train.source, "tensorflow": tf().__version__,
            "params": int(model.count_params())}
    write_json_atomic(out_dir / f"{name}.train.json", info)
    print(json.dumps(info, indent=1), flush=True)
    return info
