"""The on-device agent as a device runs it: a lone copied file, `python3 agent.py ...`, one JSON object."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeq.targets.device import AGENT_SOURCE

from conftest import convert_tflite

# what the agent may import: the standard library, numpy and the interpreters (never edgeq)
ALLOWED_TOP_LEVEL = {"argparse", "json", "os", "platform", "sys", "time", "traceback", "importlib", "numpy",
                     "ai_edge_litert", "tflite_runtime", "tensorflow", "onnxruntime", "openvino", "__future__"}


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Path:
    """agent.py copied alone into an empty directory, as on a device."""
    d = tmp_path_factory.mktemp("device")
    return Path(shutil.copy(AGENT_SOURCE, d / "agent.py"))


def run_agent(agent: Path, *args, python: str = sys.executable) -> tuple[int, dict, str]:
    p = subprocess.run([python, str(agent), *map(str, args)], capture_output=True, text=True, cwd=agent.parent,
                       timeout=120)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, f"expected one JSON object on stdout, got {p.stdout!r}"
    return p.returncode, json.loads(lines[0]), p.stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A real INT8 .tflite (batch 1) and a real FP32 NCHW .onnx, both 16x16x3 -> 3 classes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeq.core.tfcompat import keras

    k = keras()
    inp = k.Input((16, 16, 3), batch_size=1)
    h = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = k.layers.GlobalAveragePooling2D()(h)
    m = k.Model(inp, k.layers.Dense(3, activation="softmax")(h))
    x = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32)
    d = tmp_path_factory.mktemp("agent_models")
    (d / "int8.tflite").write_bytes(convert_tflite(m, True, x))

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3)).astype(np.float32), "fc")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w, fc])
    om = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    om.ir_version = 8
    onnx.save(om, str(d / "fp32.onnx"))
    np.save(d / "inputs.npy", x[:6])
    return {"tflite": d / "int8.tflite", "onnx": d / "fp32.onnx", "inputs": d / "inputs.npy"}


def test_agent_imports_nothing_but_numpy_and_interpreters():
    tree = ast.parse(AGENT_SOURCE.read_text())
    mods = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
            for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in (n.names if isinstance(n, ast.Import) else [n])}
    assert mods <= ALLOWED_TOP_LEVEL, mods - ALLOWED_TOP_LEVEL


def test_agent_runs_with_edgeq_unimportable(agent):
    code = ("import sys, runpy; sys.modules['edgeq'] = None; sys.argv = ['agent.py', '--info']; "
            f"runpy.run_path({str(agent)!r}, run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=agent.parent, timeout=60)
    ans = json.loads(p.stdout)
    assert p.returncode == 0 and ans["ok"] and ans["protocol"] == 1
    assert ans["device"]["machine"] and "litert" in ans["runtimes"]


def test_agent_times_tflite_and_returns_the_same_outputs_as_the_host_predictor(agent, models, tmp_path):
    from edgeq.measure.predictors import open_predictor

    out = tmp_path / "y.npy"
    rc, ans, _ = run_agent(agent, "--model", models["tflite"], "--runs", 20, "--warmup", 3, "--threads", 1,
                           "--inputs", models["inputs"], "--outputs-out", out)
    assert rc == 0 and ans["ok"] and ans["runtime"].startswith("ai-edge-litert")
    t = ans["timing"]
    assert len(t["samples_ms"]) == 20 and t["warmup"] == 3 and t["threads"] == 1 and min(t["samples_ms"]) > 0
    assert ans["model"]["input_dtype"] == "int8" and ans["inputs"]["n"] == 6
    x = np.load(models["inputs"])
    y_host = open_predictor(models["tflite"], "tflite", threads=1).predict(x)
    np.testing.assert_allclose(np.load(out, allow_pickle=False), y_host, atol=1e-6)


def test_agent_runs_onnx_nchw_and_returns_outputs_in_json(agent, models):
    from edgeq.measure.predictors import open_predictor

    rc, ans, _ = run_agent(agent, "--model", models["onnx"], "--runs", 5, "--inputs", models["inputs"],
                           "--return-outputs")
    assert rc == 0 and ans["runtime"].startswith("onnxruntime") and ans["model"]["layout"] == "NCHW"
    y_host = open_predictor(models["onnx"], "onnx", threads=1).predict(np.load(models["inputs"]))
    np.testing.assert_allclose(np.asarray(ans["outputs"], np.float32), y_host, rtol=1e-5, atol=1e-6)


def test_agent_without_inputs_uses_random_ones(agent, models):
    rc, ans, _ = run_agent(agent, "--model", models["tflite"], "--runs", 3)
    assert rc == 0 and ans["inputs"]["source"].startswith("random") and "outputs" not in ans


def test_agent_refuses_pickled_inputs(agent, models, tmp_path):
    p = tmp_path / "evil.npy"
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    rc, ans, _ = run_agent(agent, "--model", models["tflite"], "--inputs", p)
    assert rc == 1 and not ans["ok"] and ans["error_kind"] == "inputs" and "not a plain numeric .npy" in ans["error"]


def test_agent_rejects_inputs_of_the_wrong_shape(agent, models, tmp_path):
    p = tmp_path / "wrong.npy"
    np.save(p, np.zeros((2, 8, 8, 3), np.float32))
    rc, ans, _ = run_agent(agent, "--model", models["tflite"], "--inputs", p)
    assert ans["error_kind"] == "inputs" and "[N, 16, 16, 3]" in ans["error"]


def test_agent_missing_delegate_is_a_clear_runtime_error(agent, models):
    rc, ans, err = run_agent(agent, "--model", models["tflite"], "--delegate", "libedgetpu.so.1")
    assert rc == 1 and ans["error_kind"] == "delegate_unavailable"
    assert "libedgetpu.so.1 could not be loaded" in ans["error"] and "Traceback" in err


def test_agent_usage_errors_are_json_too(agent):
    rc, ans, _ = run_agent(agent, "--runs", 5)
    assert rc == 2 and ans == {"protocol": 1, "ok": False, "error": "--model is required (or --info)",
                               "error_kind": "usage"}
    rc, ans, _ = run_agent(agent, "--model", "m.tflite", "--bogus")
    assert rc == 2 and "unrecognized arguments: --bogus" in ans["error"]


def test_agent_missing_model_file_names_it(agent):
    rc, ans, _ = run_agent(agent, "--model", "nope.tflite")
    assert rc == 1 and ans["error_kind"] == "model" and "nope.tflite: no such file" in ans["error"]


def test_agent_uses_the_onnx_optimisation_level_it_is_given(agent, models):
    rc, ans, _ = run_agent(agent, "--model", models["onnx"], "--runs", 3, "--graph-optimization", "basic")
    assert rc == 0 and ans["runtime"].endswith("(CPU EP, opt=basic)")


def test_agent_runs_an_openvino_ir_at_f32_and_returns_the_host_predictors_outputs(agent, models, tmp_path):
    """The IR as a directory (model.xml + model.bin), as edgeq stores and copies it; precision f32 unless asked."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgeq[openvino]')")
    from edgeq.measure.predictors import open_predictor
    from edgeq.methods.openvino.convert import onnx_to_ir

    ir = tmp_path / "fp32.openvino"
    onnx_to_ir(models["onnx"], ir)
    rc, ans, err = run_agent(agent, "--model", ir, "--runs", 5, "--threads", 1, "--inputs", models["inputs"],
                             "--return-outputs")
    assert rc == 0 and ans["ok"], err[-2000:]
    assert ans["runtime"].startswith("openvino") and "precision=f32" in ans["runtime"]
    m = ans["model"]
    assert (m["inference_precision"], m["streams"], m["threads"], m["device"]) == ("f32", "1", "1", "CPU")
    assert m["layout"] == "NCHW" and m["bytes"] == sum(f.stat().st_size for f in ir.iterdir())
    y_host = open_predictor(ir, "openvino", threads=1).predict(np.load(models["inputs"]))
    np.testing.assert_allclose(np.asarray(ans["outputs"], np.float32), y_host, rtol=1e-6, atol=1e-7)
    y_onnx = open_predictor(models["onnx"], "onnx", threads=1).predict(np.load(models["inputs"]))
    np.testing.assert_allclose(y_host, y_onnx, rtol=1e-4, atol=1e-6)


def test_agent_runs_an_onnx_on_openvino_when_asked_and_matches_onnx_runtime(agent, models):
    """`--runtime openvino` on an .onnx: OpenVINO reads it directly (as the host times NNCF's QDQ ONNX on both)."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgeq[openvino]')")
    from edgeq.measure.predictors import open_predictor

    rc, ans, err = run_agent(agent, "--model", models["onnx"], "--runtime", "openvino", "--runs", 3, "--threads", 1,
                             "--inputs", models["inputs"], "--return-outputs")
    assert rc == 0 and ans["ok"], err[-2000:]
    assert ans["runtime"].startswith("openvino") and ans["model"]["inference_precision"] == "f32"
    y_ort = open_predictor(models["onnx"], "onnx", threads=1).predict(np.load(models["inputs"]))
    np.testing.assert_allclose(np.asarray(ans["outputs"], np.float32), y_ort, rtol=1e-4, atol=1e-6)


def test_agent_runs_an_ir_at_the_precision_it_names_for_itself(agent, models, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgeq[openvino]')")
    from edgeq.methods.openvino.convert import cpu_runs, onnx_to_ir, precision_variant

    onnx_to_ir(models["onnx"], tmp_path / "fp32.openvino")
    precision_variant(tmp_path / "fp32.openvino", tmp_path / "bf16.openvino", "bf16")
    rc, ans, err = run_agent(agent, "--model", tmp_path / "bf16.openvino", "--runs", 2)
    assert rc == 0 and ans["ok"], err[-2000:]
    assert ans["model"]["inference_precision"] == ("bf16" if cpu_runs("bf16") is None else "f32"), ans["model"]


def test_agent_refuses_an_unknown_openvino_precision(agent, models):
    rc, ans, _ = run_agent(agent, "--model", models["onnx"], "--inference-precision", "int4")
    assert rc == 2 and ans["error_kind"] == "usage" and "--inference-precision" in ans["error"]


def test_agent_keeps_every_tensor_and_names_the_kernel_of_each_op(agent, models, tmp_path):
    x = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    seen = {}
    for kernels in ("default", "reference"):
        out = tmp_path / f"t-{kernels}.npz"
        rc, ans, err = run_agent(agent, "--model", models["tflite"], "--inputs", tmp_path / "x.npy",
                                 "--tensors-out", out, "--kernels", kernels, "--threads", 1)
        assert rc == 0 and ans["ok"], err
        assert ans["ops"][0]["op"] == "INPUT" and [o["op"] for o in ans["ops"][1:]][0] == "CONV_2D"
        with np.load(out, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        # every op's output is there, raw (int8 stays int8), one row per image
        assert {f"t{t}" for o in ans["ops"] for t in o["outputs"]} == set(arrays)
        assert all(a.shape[0] == 2 and a.dtype == np.int8 for a in arrays.values())
        seen[kernels] = {o["kernel"] for o in ans["ops"][1:]}
    assert "XNNPACK" in seen["default"]  # the default interpreter delegates ops to XNNPACK, one per node
    assert seen["reference"] == {"reference"}


def test_agent_kernels_apply_to_tflite_only(agent, models):
    rc, ans, _ = run_agent(agent, "--model", models["onnx"], "--kernels", "reference")
    assert rc == 2 and ans["error_kind"] == "usage" and ".tflite" in ans["error"]


# /proc/cpuinfo as an arm64 container under QEMU user mode reads it (first lines, recorded on this project's host)
QEMU_ON_X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model name\t: AMD EPYC
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 avx2
"""
# a Raspberry Pi 4 (Cortex-A72) as its kernel reports it
PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd08
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_agent_detects_an_arm64_process_on_an_x86_cpu_as_emulated():
    from edgeq.ondevice import agent as a

    why = a.emulation(QEMU_ON_X86_CPUINFO, "aarch64", {"QEMU_CPU": "cortex-a72"})
    assert why.startswith("an aarch64 process on an x86-64 CPU (AMD EPYC)") and "QEMU_CPU=cortex-a72" in why
    assert a.emulation(PI4_CPUINFO, "aarch64", {}) is None  # a real Pi
    assert a.emulation(QEMU_ON_X86_CPUINFO, "x86_64", {}) is None  # this host itself
    assert a.emulation(PI4_CPUINFO, "x86_64", {}) == ("an x86_64 process on an ARM CPU: a user-mode CPU emulator "
                                                      "(QEMU) runs it; timings are not speed figures")


def test_agent_info_reports_cpu_list_and_emulation(agent):
    rc, ans, _ = run_agent(agent, "--info")
    assert rc == 0 and ans["device"]["emulated"] is None  # this machine runs its own instructions
    assert set(ans["device"]["cpu_list"]) == {"possible", "present", "online"} and ans["device"]["cpu_list"]["online"]


def test_agent_names_xnnpack_when_the_default_delegate_took_ops(agent, models):
    rc, ans, _ = run_agent(agent, "--model", models["tflite"], "--runs", "2", "--warmup", "1")
    assert rc == 0 and ans["runtime"].startswith("ai-edge-litert") and ans["runtime"].endswith("(XNNPACK)")
