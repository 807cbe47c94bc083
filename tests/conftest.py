"""Shared fixtures: tiny real Keras models and ImageFolder data built on the spot (never downloaded), the one
run-config factory (`make_config`) and the shipped model configs it starts from."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

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
    from edgeq.core.tfcompat import keras, set_seed

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


# ------------------------------------------------------------------ run configs
STAGE_NAMES = ("tflite_ptq", "litert_quant", "onnx_ptq", "onnx_fallback", "qat", "comparison", "nncf_ptq")  # `--stages` names, run order


def shipped_model_configs() -> dict[str, Path]:
    """Every run config under models/ (name -> file): a new models/*.yaml is picked up by every test using this."""
    found = {}
    for p in sorted((REPO / "models").glob("*.yaml")):
        raw = yaml.safe_load(p.read_text())
        if isinstance(raw, dict) and "model" in raw:  # devices.example.yaml is an inventory, not a run config
            found[p.stem] = p
    return found


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _base_config(model: str | Path) -> dict:
    if isinstance(model, Path) and model.is_dir():  # a tiny project: tiny.keras + images/
        return yaml.safe_load(TINY_CONFIG.format(model=model / "tiny.keras", images=model / "images"))
    src = shipped_model_configs()[model] if isinstance(model, str) else Path(model)
    raw = yaml.safe_load(src.read_text())
    raw["model"]["path"] = str((src.parent / raw["model"]["path"]).resolve())
    return raw


def make_config(directory: Path, model: str | Path, /, *, stages: list[str] | dict[str, dict] | None = None,
                filename: str = "config.yaml", **overrides) -> Path:
    """Write a run config YAML into `directory` and return its path.

    model: a shipped model's name ("mobilenet_v2"), a config file, or a tiny project directory (`tiny_project`).
    stages: enable exactly these, as names or {name: options merged into the base's} (None: as the base has them).
    overrides: top-level sections merged key by key, e.g. data={"eval_size": 200}, model={"path": ...}.
    """
    cfg = _base_config(model)
    if stages is not None:
        options = stages if isinstance(stages, dict) else {n: {} for n in stages}
        unknown = set(options) - set(STAGE_NAMES)
        assert not unknown, f"unknown stages {sorted(unknown)}; choose from {sorted(STAGE_NAMES)}"
        base = cfg.get("stages", {})
        cfg["stages"] = {n: _merge({**base.get(n, {}), "enabled": n in options}, options.get(n, {}))
                         for n in STAGE_NAMES}
    cfg = _merge(cfg, overrides)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


# ------------------------------------------------------------------ recorded device tools
def fake_edgetpu_compiler(directory: Path, log: str, exit_code: int = 0) -> Path:
    """An `edgetpu_compiler` that prints a recorded log and, when it exits 0, writes `<stem>_edgetpu.tflite`
    into its -o directory as the real compiler does (a copy of the input: nothing here runs it on a TPU)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "compiler.log").write_text(log)
    exe = directory / "edgetpu_compiler"
    exe.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import shutil, sys
        from pathlib import Path
        args = sys.argv[1:]
        out, model = Path(args[args.index("-o") + 1]), Path(args[-1])
        sys.stdout.write((Path(__file__).parent / "compiler.log").read_text())
        if {exit_code} == 0:
            shutil.copyfile(model, out / (model.stem + "_edgetpu.tflite"))
        sys.exit({exit_code})
        """))
    exe.chmod(0o755)
    return exe


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


def convert_tflite(model, int8: bool, x: np.ndarray) -> bytes:
    """A Keras model as FP32 or full-integer INT8 (int8 I/O) .tflite bytes, calibrated on `x`."""
    from edgeq.core.tfcompat import tf

    conv = tf().lite.TFLiteConverter.from_keras_model(model)
    if int8:
        conv.optimizations = [tf().lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
        conv.target_spec.supported_ops = [tf().lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf().int8
        conv.inference_output_type = tf().int8
    return conv.convert()
