"""QAT under tf.distribute: two MultiWorkerMirroredStrategy workers as local processes on 127.0.0.1 (TF_CONFIG),
each running the real `edgeq run CONFIG --stages qat`; the chief alone writes; a killed job resumes from its
BackupAndRestore epoch checkpoint; config errors are one line."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeq.core.config import config_from_dict
from edgeq.core.errors import ConfigError

from conftest import make_config

BASE = {"name": "m", "model": {"path": "m.keras", "input_shape": [8, 8, 3], "num_classes": 3}}
WORKER_TIMEOUT = 150  # seconds per worker process (two share 2 busy cores)

# `edgeq run` in a subprocess; the test's only additions: the fine-tuned weights of this process saved to
# $SAVE_WEIGHTS, and with $KILL_AFTER_EPOCH the process SIGKILLs itself right after that epoch's checkpoint
DRIVER = """
import os, signal, sys
import numpy as np
from edgeq.methods.keras import distribute
from edgeq.stages import qat

fine_tune, backup_callback = qat.fine_tune_qat, distribute.backup_callback

def saving(*a, **kw):
    r = fine_tune(*a, **kw)
    np.savez(os.environ["SAVE_WEIGHTS"], *r.model.get_weights())
    return r

def dying(backup_dir):
    cb = backup_callback(backup_dir)
    end = cb.on_epoch_end

    def on_epoch_end(epoch, logs=None):
        end(epoch, logs)
        if epoch + 1 == int(os.environ["KILL_AFTER_EPOCH"]):
            print(f"test: killing myself after epoch {epoch + 1}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    cb.on_epoch_end = on_epoch_end
    return cb

qat.fine_tune_qat = saving
if os.environ.get("KILL_AFTER_EPOCH"):
    distribute.backup_callback = dying
from edgeq.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _qat_config(directory: Path, tiny_project: Path, strategy: str, epochs: int, backup: Path,
                validation_images: int = 8) -> Path:
    qat = {"epochs": epochs, "steps_per_epoch": 3, "batch_size": 16, "validation_images": validation_images,
           "calibration_images": 32, "early_stop_patience": 0, "learning_rate": 1e-3,
           "distribution": {"strategy": strategy, "checkpoint_dir": str(backup)}}
    return make_config(directory, tiny_project, stages={"qat": qat}, benchmark={"enabled": False})


def _start(driver: Path, config: Path, out: Path, weights: Path, tf_config: dict | None, log: Path,
           kill_after: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "SAVE_WEIGHTS": str(weights), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[3]), os.environ.get("PYTHONPATH", "")])}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    if kill_after:
        env["KILL_AFTER_EPOCH"] = str(kill_after)
    return subprocess.Popen([sys.executable, str(driver), "run", str(config), "--out", str(out), "--stages", "qat"],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _cluster(n: int) -> list[dict]:
    addrs = [f"127.0.0.1:{p}" for p in _free_ports(n)]
    return [{"cluster": {"worker": addrs}, "task": {"type": "worker", "index": i}} for i in range(n)]


def _wait(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + WORKER_TIMEOUT
    try:
        for p, log in zip(procs, logs):
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"{log.name} exit {p.returncode}:\n{log.read_text()[-3000:]}"


def _weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def _qat_entry(run: Path) -> dict:
    return next(a for a in json.loads((run / "manifest.json").read_text())["artifacts"] if a["name"] == "int8_tflite_qat")


def _eval_images(project: Path) -> np.ndarray:
    from PIL import Image

    files = sorted((project / "images").rglob("*.png"))
    return (np.stack([np.asarray(Image.open(f), np.float32) for f in files]) - 127.5) / 127.5


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("driver") / "worker.py"
    p.write_text(DRIVER)
    return p


def _build_cnn_without_batch_norm(classes: int = 3, size: int = 16, seed: int = 0):
    """The tiny CNN of conftest without its batch norms (conv, depthwise, residual add, pooling, dense)."""
    from conftest import _colour_image
    from edgeq.core.tfcompat import keras, set_seed

    set_seed(seed)
    k = keras()
    inp = k.Input((size, size, 3))
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    y = k.layers.DepthwiseConv2D(3, padding="same")(x)
    x = k.layers.ReLU(6.0)(k.layers.Add()([x, y]))
    x = k.layers.GlobalAveragePooling2D()(x)
    m = k.Model(inp, k.layers.Dense(classes, activation="softmax")(x), name="tiny_cnn_no_bn")
    rng = np.random.default_rng(seed)
    X = np.stack([_colour_image(rng, i % classes, size) for i in range(300)])
    m.compile(k.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    m.fit((X.astype(np.float32) - 127.5) / 127.5, np.arange(300) % classes, epochs=3, batch_size=32, verbose=0)
    return m


@pytest.fixture(scope="module")
def no_bn_project(tiny_project, tmp_path_factory) -> Path:
    """tiny_project's images with a model that has no batch norm (see the first test's docstring)."""
    root = tmp_path_factory.mktemp("no_bn")
    _build_cnn_without_batch_norm().save(root / "tiny.keras")
    (root / "images").symlink_to(tiny_project / "images")
    return root


@pytest.mark.slow
def test_two_workers_train_identical_weights_and_only_the_chief_writes(no_bn_project, driver, tmp_path):
    """Two MultiWorkerMirroredStrategy workers (global batch 16 = 8 rows each) against one plain process (batch 16).

    The workers must hold bit-identical weights (TensorFlow all-reduces the gradients; edgeq makes tfmot's
    range quantisers use the global batch's min/max on every replica). Against the single process the match
    is not bit-exact: the gradient is summed in another order (two 8-row sums all-reduced instead of one
    16-row sum), which moves weights by float round-off (~1e-7, here amplified at most a little by Adam's
    division by small second moments over 6 steps). Hence 1e-4 on the float weights and, on the INT8
    artifacts' outputs, one int8 output step (1/256): round-off can flip a value across a rounding boundary.
    The model has no batch norm on purpose: Keras' BatchNormalization normalises each replica's 8 rows with
    their own statistics, which really differs from 16 rows (a model change, not round-off; see the README).
    """
    backup = tmp_path / "backup"
    # no validation images: nothing may reset the fine-tuned weights to the calibrated ones
    cfg = _qat_config(tmp_path / "cfg", no_bn_project, "multi_worker", 2, backup, validation_images=0)
    tfc = _cluster(2)
    outs = [tmp_path / "chief_run", tmp_path / "worker1_run"]
    w = [tmp_path / "w0.npz", tmp_path / "w1.npz"]
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    procs = [_start(driver, cfg, outs[i], w[i], tfc[i], logs[i]) for i in range(2)]
    _wait(procs, logs)

    a, b = _weights(w[0]), _weights(w[1])
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert (outs[0] / "artifacts" / "int8_qat.tflite").is_file()
    assert not outs[1].exists()  # the non-chief worked in a scratch directory, deleted afterwards
    assert "the chief writes the artifacts" in logs[1].read_text()
    notes = _qat_entry(outs[0])["notes"]
    assert notes["distribution"] == {"strategy": "multi_worker", "workers": 2, "replicas": 2, "resumed_at_epoch": 0}
    assert notes["epochs_run"] == 2 and notes["steps"] == 6 and notes["fine_tune_kept"]

    single_cfg = _qat_config(tmp_path / "cfg1", no_bn_project, "none", 2, tmp_path / "unused", validation_images=0)
    single = tmp_path / "single_run"
    p = _start(driver, single_cfg, single, tmp_path / "single.npz", None, tmp_path / "single.log")
    _wait([p], [tmp_path / "single.log"])
    s = _weights(tmp_path / "single.npz")
    assert len(s) == len(a) and max(float(np.abs(x - y).max()) for x, y in zip(a, s)) <= 1e-4

    from edgeq.measure.predictors import open_predictor

    images = _eval_images(no_bn_project)
    pa = open_predictor(outs[0] / "artifacts" / "int8_qat.tflite", "tflite").predict(images)
    ps = open_predictor(single / "artifacts" / "int8_qat.tflite", "tflite").predict(images)
    assert np.abs(pa - ps).max() <= 1 / 256 + 1e-6
    assert (pa.argmax(1) == ps.argmax(1)).mean() >= 0.98


@pytest.mark.slow
def test_killed_worker_job_resumes_from_the_epoch_checkpoint(tiny_project, driver, tmp_path):
    """Worker 1 dies (SIGKILL) right after epoch 1's checkpoint; the chief, stuck in the next all-reduce, is
    stopped as a job controller would; both restart with the same command and continue at epoch 2 of 3."""
    backup = tmp_path / "backup"
    cfg = _qat_config(tmp_path / "cfg", tiny_project, "multi_worker", 3, backup)
    tfc = _cluster(2)
    out = tmp_path / "run"
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    chief = _start(driver, cfg, out, tmp_path / "w0.npz", tfc[0], logs[0])
    dying = _start(driver, cfg, tmp_path / "w1_run", tmp_path / "w1.npz", tfc[1], logs[1], kill_after=1)
    try:
        assert dying.wait(timeout=WORKER_TIMEOUT) == -signal.SIGKILL, logs[1].read_text()[-3000:]
    finally:
        chief.kill()
        chief.wait()
    assert "killing myself after epoch 1" in logs[1].read_text()
    from edgeq.methods.keras.distribute import resumed_epoch

    assert resumed_epoch(backup) == 1

    logs2 = [tmp_path / "w0b.log", tmp_path / "w1b.log"]
    procs = [_start(driver, cfg, out, tmp_path / "w0.npz", tfc[0], logs2[0]),
             _start(driver, cfg, tmp_path / "w1_run", tmp_path / "w1.npz", tfc[1], logs2[1])]
    _wait(procs, logs2)
    assert "resuming from the epoch checkpoint" in logs2[0].read_text()
    assert "epoch 2 of 3" in logs2[0].read_text()
    notes = _qat_entry(out)["notes"]
    assert notes["distribution"]["resumed_at_epoch"] == 1
    assert notes["epochs_run"] == 2  # epochs 2 and 3 ran after the restart
    assert (out / "artifacts" / "int8_qat.tflite").is_file()
    assert resumed_epoch(backup) == 0  # a finished fit deletes its checkpoint: the next run starts afresh
    assert all(np.array_equal(x, y) for x, y in zip(_weights(tmp_path / "w0.npz"), _weights(tmp_path / "w1.npz")))


# ------------------------------------------------------------------ config validation
def test_multi_worker_without_tf_config_is_one_line_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError) as e:
        config_from_dict({**BASE, "stages": {"qat": {"distribution": {"strategy": "multi_worker"}}}})
    msg = str(e.value)
    assert "stages.qat.distribution" in msg and "TF_CONFIG" in msg and "\n" not in msg


def test_multi_worker_takes_tf_config_from_the_environment(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    cfg = config_from_dict({**BASE, "stages": {"qat": {"distribution": {"strategy": "multi_worker"}}}})
    from edgeq.methods.keras.distribute import worker_role

    role = worker_role(cfg.stages.qat.distribution)
    assert (role.workers, role.task_index, role.is_chief) == (2, 1, False)


def test_tf_config_json_string_and_chief_role():
    tfc = '{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}'
    cfg = config_from_dict({**BASE, "stages": {"qat": {"distribution": {"strategy": "multi_worker",
                                                                       "tf_config": tfc}}}})
    from edgeq.methods.keras.distribute import worker_role

    role = worker_role(cfg.stages.qat.distribution)
    assert role.workers == 2 and not role.is_chief  # with a chief in the cluster, worker 0 is not it


@pytest.mark.parametrize("tf_config, words", [
    ("{not json", "not valid JSON"),
    ({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 2}}, "task index 2 is outside"),
    ({"cluster": {"ps": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}, "only 'worker' and 'chief'"),
    ({"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker", "index": 0}}, "host:port"),
])
def test_bad_tf_config_is_one_line_error_naming_the_key(tf_config, words):
    with pytest.raises(ConfigError) as e:
        config_from_dict({**BASE, "stages": {"qat": {"distribution": {"strategy": "multi_worker",
                                                                     "tf_config": tf_config}}}})
    msg = str(e.value)
    assert "stages.qat.distribution" in msg and words in msg and "\n" not in msg


def test_unknown_strategy_is_refused():
    with pytest.raises(ConfigError, match="stages.qat.distribution.strategy"):
        config_from_dict({**BASE, "stages": {"qat": {"distribution": {"strategy": "parameter_server"}}}})


@pytest.mark.slow
def test_mirrored_strategy_fine_tune_equals_the_plain_one(tiny_project, tmp_path):
    """MirroredStrategy in this process (one CPU replica here; one per GPU on a GPU box): the tf.data path,
    the twin model made in the strategy's scope and the epoch checkpoints change nothing numerically."""
    from edgeq.core.config import load_config
    from edgeq.run.inputs import load_splits, preprocess_of
    from edgeq.loaders.keras import load_keras_model
    from edgeq.methods.keras.fine_tune import fine_tune_qat, training_split

    cfg = load_config(_qat_config(tmp_path, tiny_project, "mirrored", 2, tmp_path / "backup", validation_images=0))
    pre = preprocess_of(cfg)
    splits = load_splits(cfg, pre)
    model = load_keras_model(cfg.model.path, cfg.model.format)
    cal = pre(splits.calibration.images[:32])
    weights = {}
    for strategy in ("none", "mirrored"):
        opts = cfg.stages.qat.model_copy(update={"distribution": cfg.stages.qat.distribution.model_copy(
            update={"strategy": strategy})})
        r = fine_tune_qat(model, training_split(splits.train, opts), pre, cal, opts, log=lambda m: None,
                          checkpoint_dir=tmp_path / "backup")
        weights[strategy] = r.model.get_weights()
        assert r.epochs_run == 2
    assert r.distribution["strategy"] == "mirrored" and r.distribution["replicas"] >= 1
    assert max(float(np.abs(x - y).max()) for x, y in zip(weights["none"], weights["mirrored"])) <= 1e-6
    assert not list((tmp_path / "backup").glob("*/checkpoint"))  # finished: BackupAndRestore deleted its state
