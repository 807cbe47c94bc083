"""Shared fixtures: tiny real Keras models and ImageFolder data built on the spot (never downloaded)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO = Path(__file__).resolve().parent.parent


def _colour_image(rng, cls: int, size: int = 16) -> np.ndarray:
    a = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    a[..., cls % 3] += 150
    return a


def write_image_folder(root: Path, n: int, classes: int = 3, size: int = 16, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"class_{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_colour_image(rng, i % classes, size)).save(d / f"{i:04d}.png")
    return root


def build_tiny_cnn(classes: int = 3, size: int = 16, train: bool = True, seed: int = 0):
    """A small real CNN (conv, depthwise, BN, residual add, pooling, dense) trained briefly on colour blobs."""
    import edgeq  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
    from edgeq.tfcompat import keras, set_seed

    set_seed(seed)
    k = keras()
    inp = k.Input((size, size, 3))
    x = k.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.ReLU()(x)
    y = k.layers.DepthwiseConv2D(3, padding="same")(x)
    y = k.layers.BatchNormalization()(y)
    x = k.layers.Add()([x, y])
    x = k.layers.ReLU(6.0)(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    out = k.layers.Dense(classes, activation="softmax")(x)
    m = k.Model(inp, out, name="tiny_cnn")
    if train:
        rng = np.random.default_rng(seed)
        X = np.stack([_colour_image(rng, i % classes, size) for i in range(300)])
        Y = np.arange(300) % classes
        m.compile(k.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
        m.fit((X.astype(np.float32) - 127.5) / 127.5, Y, epochs=4, batch_size=32, verbose=0)
    return m


TINY_CONFIG = """name: tiny
model: {{path: {model}, input_shape: [16, 16, 3], num_classes: 3}}
data: {{kind: image_folder, path: {images}, calibration_size: 40}}
stages: {{tflite_ptq: {{representative_images: 40}}}}
benchmark: {{runs: 20, warmup: 2}}
"""


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A directory with tiny.keras, images/<class>/*.png (120 images) and tiny.yaml pointing at them."""
    root = tmp_path_factory.mktemp("tiny")
    build_tiny_cnn().save(root / "tiny.keras")
    write_image_folder(root / "images", 120)
    (root / "tiny.yaml").write_text(TINY_CONFIG.format(model="tiny.keras", images="images"))
    return root


def run_edgeq(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """The real `edgeq` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "edgeq", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture(scope="session")
def tiny_run(tiny_project, tmp_path_factory):
    """One real `edgeq run` of the tiny project (TFLite PTQ, evaluation, interleaved host benchmark)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    proc = run_edgeq("run", tiny_project / "tiny.yaml", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="session")
def tiny_run_report(tiny_run) -> dict:
    import json

    return json.loads((tiny_run[0] / "report.json").read_text())
