"""Device targets without a device: inventory validation, the Edge TPU compatibility check on real
.tflite models, and the edgetpu_compiler / trtexec log parsers on logs in the tools' own format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import convert_tflite
from edgeq.core.errors import ConfigError, RuntimeUnavailable
from edgeq.targets.edgetpu import check_edgetpu, find_compiler, parse_compiler_log
from edgeq.targets.edgetpu_ops import SUPPORTED_OPS
from edgeq.targets.inventory import load_inventory
from edgeq.targets.jetson import parse_trtexec_log, stats_from_trtexec

DATA = Path(__file__).resolve().parents[1] / "data"
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ inventory
def test_example_inventory_is_valid():
    inv = load_inventory(REPO / "models" / "devices.example.yaml")
    kinds = {d.kind for d in inv.devices}
    assert kinds == {"host", "rpi", "edgetpu", "jetson"}
    rpi = next(d for d in inv.devices if d.kind == "rpi")
    assert rpi.key_file.is_absolute() and not rpi.trust_on_first_use


def test_inventory_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "inv.yaml"
    p.write_text("devices:\n  - {name: pi, kind: rpi, host: pi.local, pasword: hunter2}\n")
    with pytest.raises(ConfigError) as e:
        load_inventory(p)
    msg = str(e.value)
    assert str(p) in msg and "pasword" in msg and "\n" not in msg


def test_inventory_remote_kind_needs_host(tmp_path):
    p = tmp_path / "inv.yaml"
    p.write_text("devices:\n  - {name: pi, kind: rpi}\n")
    with pytest.raises(ConfigError, match="needs 'host'"):
        load_inventory(p)


def test_inventory_paths_resolve_against_its_file(tmp_path):
    p = tmp_path / "inv.yaml"
    p.write_text("devices:\n  - {name: pi, kind: rpi, host: pi.local, key_file: keys/pi, known_hosts: kh}\n")
    d = load_inventory(p).get("pi")
    assert d.key_file == tmp_path / "keys" / "pi" and d.known_hosts == tmp_path / "kh"
    with pytest.raises(ConfigError, match="no device named 'jetson'"):
        load_inventory(p).get("jetson")


# ------------------------------------------------------------------ Edge TPU check on real models


@pytest.fixture(scope="module")
def edgetpu_models(tmp_path_factory) -> dict[str, Path]:
    """Real .tflite files: int8 with batch fixed at 1, the FP32 twin, and int8 with an op the TPU lacks."""
    from edgeq.core.tfcompat import keras

    k = keras()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32)

    def build(act):
        inp = k.Input((16, 16, 3), batch_size=1)
        h = k.layers.Conv2D(8, 3, padding="same")(inp)
        h = act(h)
        h = k.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(h)
        h = k.layers.GlobalAveragePooling2D()(h)
        return k.Model(inp, k.layers.Dense(3, activation="softmax")(h))

    good, leaky = build(k.layers.ReLU()), build(k.layers.LeakyReLU(0.1))
    d = tmp_path_factory.mktemp("edgetpu")
    out = {"int8": convert_tflite(good, True, x), "fp32": convert_tflite(good, False, x), "int8_leaky": convert_tflite(leaky, True, x)}
    for name, data in out.items():
        (d / f"{name}.tflite").write_bytes(data)
    return {n: d / f"{n}.tflite" for n in out}


def test_edgetpu_check_passes_fully_int8_static_model(edgetpu_models):
    c = check_edgetpu(edgetpu_models["int8"], "int8")
    assert c.ok, c.problems
    assert set(c.details["ops"]) <= set(SUPPORTED_OPS)
    assert c.details["warnings"] == []  # batch fixed at 1: nothing dynamic


def test_edgetpu_check_rejects_float_model_naming_the_tensors(edgetpu_models):
    c = check_edgetpu(edgetpu_models["fp32"], "fp32")
    assert not c.ok
    assert any("float32" in p and "CONV_2D" in p for p in c.problems)


def test_edgetpu_check_names_the_unsupported_op(edgetpu_models):
    c = check_edgetpu(edgetpu_models["int8_leaky"], "int8_leaky")
    assert not c.ok
    assert c.details["unsupported_ops"] == {"LEAKY_RELU": 1}
    assert any(p.startswith("LEAKY_RELU#") for p in c.problems)


def test_missing_edgetpu_compiler_says_where_and_how_to_install():
    with pytest.raises(RuntimeUnavailable) as e:
        find_compiler("edgetpu_compiler_that_does_not_exist")
    assert "not found on this machine" in str(e.value) and "apt-get install edgetpu-compiler" in str(e.value)


# ------------------------------------------------------------------ log parsers
def test_parse_edgetpu_compiler_log_all_mapped():
    r = parse_compiler_log((DATA / "edgetpu_compiler_all_mapped.log").read_text())
    assert r["success"] and r["compiler_version"] == "16.0.384591198"
    assert r["total_ops"] == 72 == r["mapped"] == r["ops_on_tpu"]
    assert r["not_mapped"] == 0 and r["ops_on_cpu"] == 0 and r["subgraphs"] == 1
    assert {o["op"] for o in r["operators"]} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "MEAN"}


def test_parse_edgetpu_compiler_log_partially_mapped():
    r = parse_compiler_log((DATA / "edgetpu_compiler_partial.log").read_text())
    assert r["success"]
    assert (r["ops_on_tpu"], r["ops_on_cpu"]) == (14, 27)
    assert (r["mapped"], r["not_mapped"]) == (14, 27)  # the table agrees with the summary lines
    assert "LEAKY_RELU (Operation not supported)" in r["not_mapped_ops"]
    assert any(o["op"] == "DEQUANTIZE" and not o["mapped"] for o in r["operators"])


def test_parse_edgetpu_compiler_log_failure():
    r = parse_compiler_log((DATA / "edgetpu_compiler_failed.log").read_text())
    assert not r["success"] and r["operators"] == []
    assert any("dynamic-sized tensors" in e for e in r["errors"])


def test_parse_trtexec_performance_summary():
    r = parse_trtexec_log((DATA / "trtexec_int8_build_and_run.log").read_text())
    assert r["passed"] and r["tensorrt_version"] == "8.6.2" and r["gpu"] == "Orin"
    assert r["latency"] == {"min": 1.19434, "max": 1.61279, "mean": 1.23716, "median": 1.22876,
                            "p90": 1.25586, "p95": 1.27148, "p99": 1.41895}
    assert r["gpu_compute"]["median"] == 1.18945 and r["throughput_qps"] == 806.45
    s = stats_from_trtexec(r, runs=300, warmup=30, device="orin: Orin")
    assert (s.median, s.p90, s.p99, s.runs) == (1.22876, 1.25586, 1.41895, 300)
    assert s.runtime == "TensorRT 8.6.2 (trtexec)"


def test_parse_trtexec_legacy_summary_has_no_p90():
    r = parse_trtexec_log((DATA / "trtexec_legacy_summary.log").read_text())
    assert r["tensorrt_version"] == "8.2.1"
    s = stats_from_trtexec(r, runs=200, warmup=20, device="xavier")
    assert s.p90 is None and s.p99 == 3.87915 and s.median == 3.28467


def test_parse_trtexec_failed_build_keeps_the_errors():
    r = parse_trtexec_log((DATA / "trtexec_build_failed.log").read_text())
    assert r["failed"] and not r["passed"] and "latency" not in r
    assert "Failed to parse onnx file" in r["errors"]


def test_inventory_refuses_an_inline_key(tmp_path):
    p = tmp_path / "inv.yaml"
    p.write_text('devices:\n  - {name: pi, kind: rpi, host: pi.local, key_file: "-----BEGIN OPENSSH PRIVATE KEY-----"}\n')
    with pytest.raises(ConfigError, match=r"key_file holds what looks like a key itself \(not shown\)") as e:
        load_inventory(p)
    assert "BEGIN OPENSSH" not in str(e.value)


def test_jetson_engine_build_flags():
    from types import SimpleNamespace

    from edgeq.targets.jetson import JetsonTarget

    def flags(precision, fallback):
        dev = SimpleNamespace(fp16_fallback=fallback)
        t = JetsonTarget(SimpleNamespace(name="orin", device=dev))
        return t.build_flags(SimpleNamespace(precision=precision))

    assert flags("int8", True) == ["--int8", "--fp16"]
    assert flags("int8", False) == ["--int8"]
    assert flags("fp32", False) == ["--fp16"]
