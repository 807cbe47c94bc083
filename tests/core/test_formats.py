"""The formats and device-kinds tables (edgeq.core.formats), row by row: every promise a row makes is tried on a
real tiny artifact of that format, and every format a kind does not take is refused by name.

Adding a row adds its tests: the ids below come from the tables themselves.
"""
from __future__ import annotations

import inspect
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeq.ondevice import agent
from edgeq.core.artifacts import Artifact
from edgeq.core.formats import (FORMATS, KINDS, Format, Kind, format_from_path, format_refusal, formats_for_kind, host_benchmark_formats, imported_artifact)
from edgeq.targets.device import DeviceTarget

from conftest import build_tiny_cnn

TAKEN = [(f.name, k) for f in FORMATS.values() for k in f.kinds]
NOT_TAKEN = [(f, k) for f in FORMATS for k in KINDS if (f, k) not in TAKEN]
WITH_PREDICTOR = [f.name for f in FORMATS.values() if f.predictor]
AGENT_RUN = [f.name for f in FORMATS.values() if f.agent_runtimes]


def _ids(pairs):
    return [f"{f}-{k}" for f, k in pairs]


# ------------------------------------------------------------------ real tiny artifacts, one per format
def _int8_qdq_onnx(fp32: Path, out: Path, x_nchw: np.ndarray) -> None:
    """A TensorRT-ready QDQ ONNX (symmetric int8, per-channel weights, float biases, float Softmax)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x_nchw[i:i + 1]} for i in range(len(x_nchw))])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm", "Add"],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory holding the tiny CNN in every format of the table (engine: bytes nobody opens here)."""
    from edgeq.methods.onnx.from_keras import keras_to_onnx
    from edgeq.methods.tflite.convert import convert_int8

    d = tmp_path_factory.mktemp("formats")
    m = build_tiny_cnn(train=True)  # trained: an untrained net's near-uniform outputs would agree with anything
    x = colour_blobs(24)
    m.save(d / "tiny.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 is a legacy format": it is one we read
        m.save(d / "tiny.h5")
    m.save(d / "tiny_savedmodel")
    (d / "tiny.tflite").write_bytes(convert_int8(m, lambda: ([x[i:i + 1]] for i in range(len(x)))))
    keras_to_onnx(m, d / "fp32.onnx", 17)
    _int8_qdq_onnx(d / "fp32.onnx", d / "tiny.onnx", x.transpose(0, 3, 1, 2).copy())
    (d / "tiny.engine").write_bytes(b"a TensorRT engine is built on the device")
    np.save(d / "inputs.npy", x)
    try:  # the openvino row: the FP32 ONNX as an IR directory (edgeq[openvino]); only its own tests need it
        from edgeq.methods.openvino.convert import onnx_to_ir

        onnx_to_ir(d / "fp32.onnx", d / "tiny.openvino")
    except ImportError:
        pass
    try:  # the pytorch row: a TorchScript file (exported to ONNX by a run); only its own tests need torch
        import torch
    except ImportError:
        return d
    torch.jit.save(torch.jit.trace(torch.nn.Conv2d(3, 3, 16), torch.zeros(1, 3, 16, 16)), str(d / "tiny.pt"))
    return d


def colour_blobs(n: int) -> np.ndarray:
    """Normalised images of the kind the tiny CNN was trained on (one dominant colour channel per class)."""
    from conftest import _colour_image

    rng = np.random.default_rng(1)
    return ((np.stack([_colour_image(rng, i % 3) for i in range(n)]).astype(np.float32) - 127.5) / 127.5)


def needs_file(run_dir: Path, fmt: str) -> None:
    if not (run_dir / FILES[fmt]).exists():
        pytest.skip(f"no {fmt} file here: its writer ({FORMATS[fmt].install}) is not installed")


FILES = {"keras": "tiny.keras", "h5": "tiny.h5", "savedmodel": "tiny_savedmodel", "tflite": "tiny.tflite",
         "onnx": "tiny.onnx", "engine": "tiny.engine", "pytorch": "tiny.pt", "openvino": "tiny.openvino"}


def artifact(run_dir: Path, fmt: str) -> Artifact:
    needs_file(run_dir, fmt)
    precision = "int8" if fmt in ("tflite", "onnx") else "fp32"
    return Artifact.record(run_dir, run_dir / FILES[fmt], name=f"tiny_{fmt}", format=fmt, precision=precision,
                           method="test", stage="test")


def test_every_format_row_has_a_tiny_artifact_here():
    assert set(FILES) == set(FORMATS)


# ------------------------------------------------------------------ device sessions without a device
def _session(run_dir: Path, kind: str):
    """A real DeviceSession whose agent runs on this machine (a local subprocess), as a `kind` device."""
    from edgeq.targets.device import DeviceSession
    from edgeq.targets.inventory import Device
    from edgeq.targets.ssh import LocalTransport

    d = Device(name=f"test-{kind}", kind=kind, host=None if kind == "host" else f"{kind}.invalid",
               python=sys.executable, command_timeout=120)
    return DeviceSession(d, LocalTransport(d, log=lambda m: None), run_dir, log=lambda m: None)


@pytest.fixture(scope="module")
def sessions(run_dir):
    """One session per kind; those whose target asks the agent for its runtimes have said hello."""
    out = {k: _session(run_dir, k) for k in KINDS}
    for k in ("host", "rpi"):
        out[k].hello()
    return out


def _target(sessions, kind: str):
    from edgeq.targets.fleet import make_target

    return make_target(sessions[kind])


# ------------------------------------------------------------------ the tables hold together
@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_target_class_is_a_device_target(kind, sessions):
    t = _target(sessions, kind)
    assert type(t).__name__ == KINDS[kind].target.split(":")[1] and t.kind == kind
    assert isinstance(t, DeviceTarget)
    params = inspect.signature(t.benchmark).parameters
    assert {"inputs_remote", "return_outputs"} <= set(params)


def test_every_row_names_known_kinds_agent_runtimes_and_a_predictor_where_the_host_times_it():
    for f in FORMATS.values():
        assert set(f.kinds) <= set(KINDS), f.name
        assert set(f.agent_runtimes) <= set(agent.RUNTIMES), f.name
        assert not f.host_benchmark or f.predictor, f.name
        assert f.directory or f.suffixes, f.name
        assert f.imported_as is None or f.imported_as in FORMATS, f.name
        runtimes = {g.runtime for g in FORMATS.values() if g.predictor}
        assert set(f.other_runtimes) <= runtimes - {f.runtime}, f.name  # another row's runtime, with a predictor


# ------------------------------------------------------------------ per format
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_format_is_told_by_its_file_name(fmt, run_dir):
    needs_file(run_dir, fmt)
    row = FORMATS[fmt]
    names = [run_dir / FILES[fmt]] + [Path(f"model{s.upper()}") for s in row.suffixes]
    assert all(format_from_path(p) == fmt for p in names)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_config_takes_model_input_formats_and_refuses_the_others_by_name(fmt, run_dir):
    needs_file(run_dir, fmt)
    from edgeq.core.config import config_from_dict
    from edgeq.core.errors import ConfigError

    raw = {"name": "t", "model": {"path": str(run_dir / FILES[fmt]), "input_shape": [16, 16, 3], "num_classes": 3}}
    if FORMATS[fmt].model_input:
        assert config_from_dict(raw).model.format == fmt
        art_fmt, suffix = imported_artifact(fmt, run_dir / FILES[fmt])
        assert art_fmt in FORMATS and FORMATS[art_fmt].predictor
        assert suffix == ("" if FORMATS[fmt].directory else Path(FILES[fmt]).suffix)
    else:
        with pytest.raises(ConfigError, match=f"is a {fmt} model; a run starts from a keras, h5, savedmodel"):
            config_from_dict(raw)


@pytest.mark.parametrize("fmt", WITH_PREDICTOR)
def test_host_predictor_opens_the_format_and_agrees_with_keras(fmt, run_dir):
    from edgeq.measure.predictors import open_predictor

    x = np.load(run_dir / "inputs.npy")
    y = open_predictor(run_dir / FILES[fmt], fmt, threads=1).predict(x)
    y_keras = open_predictor(run_dir / "tiny.keras", "keras").predict(x)
    assert y.shape == (len(x), 3) and y.dtype == np.float32
    assert (y_keras.argmax(1) == np.arange(len(x)) % 3).mean() >= 0.9  # the reference itself is a trained classifier
    if fmt in ("tflite", "onnx"):  # the int8 rows: same class on every image, probabilities within a few int8 steps
        np.testing.assert_array_equal(y.argmax(1), y_keras.argmax(1))
        np.testing.assert_allclose(y, y_keras, atol=4 / 256)
    else:  # the same FP32 model in another container
        np.testing.assert_allclose(y, y_keras, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f not in WITH_PREDICTOR])
def test_format_without_a_predictor_is_refused_by_name(fmt, run_dir):
    from edgeq.core.errors import ModelError
    from edgeq.measure.predictors import open_predictor

    with pytest.raises(ModelError, match=f"no predictor for format '{fmt}'"):
        open_predictor(run_dir / FILES[fmt], fmt)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_host_benchmark_times_exactly_its_formats(fmt, run_dir):
    from edgeq.targets.host import HostTarget

    host = HostTarget(np.load(run_dir / "inputs.npy"))
    a = artifact(run_dir, fmt)
    c = host.check(a, run_dir)
    assert c.ok == FORMATS[fmt].host_benchmark, c.problems
    if c.ok:
        stats, samples = host.time_round(host.prepare(a, run_dir), runs=3, warmup=1, threads=1)
        assert stats.runs == 3 == len(samples) and stats.median > 0
    else:
        assert f"format {fmt} is not a deployment format" in c.problems[0]
        assert " or ".join(host_benchmark_formats()) in c.problems[0]


@pytest.mark.parametrize("fmt", AGENT_RUN)
def test_agent_times_the_format_with_a_runtime_of_its_row(fmt, run_dir, sessions):
    t = _target(sessions, "host")
    a = artifact(run_dir, fmt)
    assert t.check(a, run_dir).ok
    stats = t.benchmark(t.prepare(a, run_dir), runs=3, warmup=1, threads=1)
    assert stats.runs == 3 and len(t.last_answer["timing"]["samples_ms"]) == 3
    assert any(stats.runtime.startswith(agent.RUNTIMES[r][1]) for r in FORMATS[fmt].agent_runtimes), stats.runtime


# ------------------------------------------------------------------ per format x kind
@pytest.mark.parametrize("fmt,kind", TAKEN, ids=_ids(TAKEN))
def test_kind_takes_format(fmt, kind, run_dir, sessions):
    """The kind's own check passes on a real artifact: the agent's runtimes (host, rpi), the Edge TPU's op and
    dtype rules, TensorRT's QDQ rules (jetson); and remote runs offer the artifact to that device."""
    assert fmt in formats_for_kind(kind) and format_refusal(fmt, kind) is None
    c = _target(sessions, kind).check(artifact(run_dir, fmt), run_dir)
    assert c.ok, c.problems


@pytest.mark.parametrize("fmt,kind", NOT_TAKEN, ids=_ids(NOT_TAKEN))
def test_kind_refuses_format_by_name(fmt, kind, run_dir, sessions):
    assert fmt not in formats_for_kind(kind)
    c = _target(sessions, kind).check(artifact(run_dir, fmt), run_dir)
    assert not c.ok and len(c.problems) == 1
    assert f"format {fmt} does not run on device kind {kind}" in c.problems[0]
    assert " or ".join(formats_for_kind(kind)) in c.problems[0]


# ------------------------------------------------------------------ adding a row is enough
TRIAL_FORMAT = Format("tflite_edgetpu", ("_edgetpu.tflite",), None, "edgetpu", "sudo apt-get install libedgetpu1-std",
                      kinds=("edgetpu",), agent_runtimes=agent.TFLITE_INTERPRETERS)


def test_a_new_format_row_is_read_by_every_part(monkeypatch, run_dir, sessions):
    from edgeq.core.config import config_from_dict
    from edgeq.core.errors import ConfigError
    from edgeq.targets.host import HostTarget

    monkeypatch.setitem(FORMATS, TRIAL_FORMAT.name, TRIAL_FORMAT)
    assert format_from_path("m_edgetpu.tflite") == "tflite_edgetpu" and format_from_path("m.tflite") == "tflite"
    assert formats_for_kind("edgetpu") == ["tflite", "tflite_edgetpu"]
    assert format_refusal("tflite_edgetpu", "edgetpu") is None
    raw = {"name": "t", "model": {"path": "m_edgetpu.tflite", "input_shape": [16, 16, 3], "num_classes": 3}}
    with pytest.raises(ConfigError, match="is a tflite_edgetpu model"):
        config_from_dict(raw)
    a = artifact(run_dir, "tflite")
    a.format = "tflite_edgetpu"
    host = HostTarget(np.zeros((1, 16, 16, 3), np.float32)).check(a, run_dir)
    assert "format tflite_edgetpu is not a deployment format" in host.problems[0]
    rpi = _target(sessions, "rpi").check(a, run_dir)
    assert "format tflite_edgetpu does not run on device kind rpi" in rpi.problems[0]


class TrialTarget:
    """A device target class, as a new kind's row names it."""

    def __init__(self, session, graph_optimization: str = "all"):
        self.session, self.name, self.kind, self.last_answer = session, session.name, "hailo", {}


def test_a_new_kind_row_is_read_by_the_inventory_and_make_target(monkeypatch, tmp_path, run_dir):
    from edgeq.core.errors import ConfigError
    from edgeq.targets.inventory import load_inventory
    from edgeq.targets.fleet import make_target

    inv = tmp_path / "inv.yaml"
    inv.write_text("devices:\n  - {name: h8, kind: hailo, host: h8.local}\n")
    with pytest.raises(ConfigError, match="unknown device kind 'hailo'; kinds: host, rpi, edgetpu, jetson"):
        load_inventory(inv)
    monkeypatch.setitem(KINDS, "hailo", Kind("hailo", "test_formats:TrialTarget", "a Hailo-8 NPU"))
    monkeypatch.setitem(FORMATS, "hef", Format("hef", (".hef",), None, "hailort", "pip install hailort",
                                               kinds=("hailo",)))
    device = load_inventory(inv).get("h8")
    assert formats_for_kind("hailo") == ["hef"] and format_from_path("m.hef") == "hef"
    assert "format tflite does not run on device kind hailo (a Hailo-8 NPU): it takes hef only" == \
        format_refusal("tflite", "hailo")
    from edgeq.targets.device import DeviceSession

    t = make_target(DeviceSession(device, None, run_dir))
    assert isinstance(t, TrialTarget) and t.name == "h8"
