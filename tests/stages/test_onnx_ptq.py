"""The onnx_ptq stage through the real command line: export, ORT static INT8 for the host and for TensorRT,
evaluation and benchmark beside the TFLite artifacts; ONNX input models; bad input as one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_edgeq
from edgeq.methods.onnx.ort_int8 import TENSORRT_SCHEME, host_int8_scheme, resolve_host_scheme
from edgeq.core.sysinfo import cpu_info

DATA = "data: {{kind: image_folder, path: {images}, calibration_size: 40}}\n"
ONNX_CONFIG = ("name: tiny_onnx\nmodel: {{path: {model}, input_shape: [{size}, {size}, 3], num_classes: 3}}\n" + DATA +
               "stages: {{tflite_ptq: {{enabled: {tflite}, representative_images: 40}}, "
               "onnx_ptq: {{enabled: true, calibration_images: 40{extra}}}}}\n"
               "benchmark: {{runs: 10, warmup: 2}}\n")


def write_config(root: Path, name: str, model: str, size: int = 16, tflite: bool = False, extra: str = "") -> Path:
    p = root / name
    p.write_text(ONNX_CONFIG.format(model=model, images=root / "images" if (root / "images").exists() else "images",
                                    size=size, tflite=str(tflite).lower(), extra=extra))
    return p


def run_ok(config: Path, out: Path) -> dict:
    r = run_edgeq("run", config, "--out", out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def one_line_error(r) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("edgeq: error")]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def keras_run(tiny_project, tmp_path_factory) -> tuple[dict, Path, object]:
    """The tiny Keras model through TFLite PTQ and ONNX PTQ in one run."""
    cfg = write_config(tiny_project, "tiny_onnx_stage.yaml", "tiny.keras", tflite=True)
    out = tmp_path_factory.mktemp("onnx_run") / "run"
    r = run_edgeq("run", cfg, "--out", out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), out, r


def by_name(rep: dict) -> dict:
    return {a["name"]: a for a in rep["artifacts"]}


def test_onnx_artifacts_are_evaluated_and_benchmarked_beside_tflite(keras_run):
    rep, out, _ = keras_run
    arts = by_name(rep)
    assert {"fp32_tflite", "int8_tflite_ptq", "fp32_onnx", "int8_onnx_ptq", "int8_onnx_trt"} <= set(arts)
    for name in ("fp32_onnx", "int8_onnx_ptq", "int8_onnx_trt"):
        a = arts[name]
        assert a["format"] == "onnx" and (out / a["path"]).is_file()
        assert a["accuracy"]["top1"] is not None and a["accuracy"]["n"] == rep["dataset"]["n_eval"]
    for name in ("fp32_onnx", "int8_onnx_ptq"):
        assert arts[name]["latency_ms"]["host"]["median"] > 0
        assert "onnxruntime" in arts[name]["latency_ms"]["host"]["runtime"]
    # the TensorRT model's latency belongs to the device; the report says so instead of a host figure
    trt_host = arts["int8_onnx_trt"]["latency_ms"]["host"]
    assert trt_host["median"] is None and "TensorRT" in trt_host["reason"]
    assert rep["checks"]["int8_onnx_ptq"]["reference"] == "fp32_onnx"
    table = (out / "report.md").read_text()
    assert "| int8_tflite_ptq |" in table and "| int8_onnx_ptq |" in table  # one table, both formats


def test_export_is_checked_against_keras_on_real_images(keras_run):
    notes = by_name(keras_run[0])["fp32_onnx"]["notes"]
    assert notes["onnx_checker"].startswith("passed")
    assert notes["opset"] == 17 and notes["input_layout"] == "NCHW"
    assert notes["max_abs_diff_vs_keras"] < 1e-4
    assert notes["transposes"] == 0  # NCHW input: tf2onnx leaves no layout Transpose


def test_tensorrt_artifact_passes_the_tensorrt_check_and_the_host_one_records_why_not(keras_run):
    arts = by_name(keras_run[0])
    trt = arts["int8_onnx_trt"]["compatibility"]["tensorrt"]
    assert trt["ok"] and trt["problems"] == [] and trt["details"]["int8_compute_layers"] >= 3
    host = arts["int8_onnx_ptq"]
    if host["notes"]["scheme"]["activation_type"] == "uint8":
        assert not host["compatibility"]["tensorrt"]["ok"]


def test_host_artifact_runs_every_conv_as_an_integer_kernel(keras_run):
    k = by_name(keras_run[0])["int8_onnx_ptq"]["notes"]["ort_kernels"]
    assert k["float_convs"] == 0 and k["integer_convs"] >= 2 and k["float_adds"] == 0


def test_host_scheme_and_its_reason_are_in_the_report(keras_run):
    rep = keras_run[0]
    section = rep["onnx_ptq"]
    chosen_by = section["host_scheme"].pop("chosen_by")
    assert section["host_scheme"] == host_int8_scheme(cpu_info()).to_dict()
    assert set(chosen_by.values()) == {"cpu"}
    assert "Why:" in (keras_run[1] / "report.md").read_text()


def test_tensorrt_artifact_is_evaluated_with_qdq_as_written(keras_run):
    rep, out, _ = keras_run
    trt = by_name(rep)["int8_onnx_trt"]
    assert trt["notes"]["graph_optimization"] == "basic"
    results = json.loads((out / "results.json").read_text())
    ev = [v for v in results["evaluations"].values() if v["artifact"] == "int8_onnx_trt"]
    assert ev and ev[0]["predictor"]["graph_optimization"] == "basic"


def test_rerun_reuses_the_onnx_artifacts(keras_run, tiny_project):
    _, out, _ = keras_run
    r = run_edgeq("run", tiny_project / "tiny_onnx_stage.yaml", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("fp32_onnx", "int8_onnx_ptq", "int8_onnx_trt"):
        assert f"= {name}: reused" in r.stdout


def test_host_options_do_not_leak_into_the_tensorrt_artifact(tiny_project, tmp_path):
    cfg = write_config(tiny_project, "tiny_onnx_qop.yaml", "tiny.keras",
                       extra=", quant_format: qoperator, per_channel: false, activation_type: uint8, "
                             "weight_type: int8, symmetric: false, reduce_range: true")
    arts = by_name(run_ok(cfg, tmp_path / "run"))
    host = arts["int8_onnx_ptq"]
    assert host["notes"]["scheme"]["quant_format"] == "qoperator" and host["notes"]["scheme"]["reduce_range"]
    assert set(host["params"]["chosen_by"].values()) == {"config"}
    assert any("ONNX Runtime-only" in p for p in host["compatibility"]["tensorrt"]["problems"])
    trt = arts["int8_onnx_trt"]
    assert trt["notes"]["scheme"] == TENSORRT_SCHEME.to_dict()
    assert trt["compatibility"]["tensorrt"]["ok"], trt["compatibility"]["tensorrt"]["problems"]


# ------------------------------------------------------------------------------------ CPU defaults
AVX2_NO_VNNI = "model name: AMD EPYC 7B12\nflags: fpu sse4_2 avx fma avx2\n"
AVX512_VNNI = "model name: Intel Xeon\nflags: sse4_2 avx avx2 fma avx512f avx512_vnni\n"
ARM_DOTPROD = "Features: fp asimd asimddp\nCPU part: 0xd0b\n"


def test_x86_without_vnni_gets_reduced_range_weights():
    s = host_int8_scheme({**cpu_info(AVX2_NO_VNNI), "machine": "x86_64"})
    assert s.reduce_range and s.activation_type == "uint8" and s.weight_type == "int8"
    assert "VPMADDUBSW" in s.why


def test_x86_with_vnni_keeps_full_range_weights():
    s = host_int8_scheme({**cpu_info(AVX512_VNNI), "machine": "x86_64"})
    assert not s.reduce_range and "VNNI" in s.why


def test_arm_keeps_full_range_weights():
    s = host_int8_scheme({**cpu_info(ARM_DOTPROD), "machine": "aarch64"})
    assert not s.reduce_range and s.activation_type == "uint8"


def test_config_choices_override_the_cpu_defaults_and_say_so():
    from edgeq.core.config import OnnxPtqSpec

    s, chosen = resolve_host_scheme(OnnxPtqSpec(reduce_range=False), {**cpu_info(AVX2_NO_VNNI), "machine": "x86_64"})
    assert not s.reduce_range and chosen["reduce_range"] == "config" and chosen["activation_type"] == "cpu"
    assert s.why.startswith("config sets reduce_range")


# ------------------------------------------------------------------------------------ ONNX input
@pytest.fixture(scope="module")
def tiny_onnx(tiny_project) -> Path:
    """tiny.keras exported twice: NCHW input (edgeq's export) and NHWC input (tf2onnx's default)."""
    import onnx
    import tf2onnx

    from edgeq.loaders.keras import load_keras_model
    from edgeq.methods.onnx.from_keras import keras_to_onnx
    from edgeq.core.tfcompat import tf

    model = load_keras_model(tiny_project / "tiny.keras")
    if not (tiny_project / "tiny_nchw.onnx").exists():
        keras_to_onnx(model, tiny_project / "tiny_nchw.onnx", 17)
        spec = (tf().TensorSpec((None, 16, 16, 3), tf().float32, name="pixels"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
        onnx.save(proto, str(tiny_project / "tiny_nhwc.onnx"))
    return tiny_project


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_onnx_input_model_is_quantized_as_given(tiny_onnx, tmp_path, layout):
    cfg = write_config(tiny_onnx, f"tiny_in_{layout}.yaml", f"tiny_{layout}.onnx", tflite=True)
    r = run_edgeq("run", cfg, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    arts = by_name(rep)
    # no ONNX export; TFLite through onnx2tf, from either layout
    assert set(arts) == {"fp32_onnx", "int8_onnx_ptq", "int8_onnx_trt", "fp32_tflite", "int8_tflite_ptq"}
    assert arts["fp32_onnx"]["stage"] == "import"
    assert rep["tflite_ptq"]["vs_onnx"]["relative"] <= 1e-3
    assert rep["tflite_ptq"]["translation"]["onnx_input_layout"] == layout.upper()
    assert arts["int8_tflite_ptq"]["notes"]["float_ops"] == []
    assert rep["onnx_ptq"]["input"]["layout"] == layout.upper()
    assert arts["int8_onnx_trt"]["compatibility"]["tensorrt"]["ok"]
    for a in arts.values():
        assert a["accuracy"]["top1"] is not None
    # the INT8 models agree with the FP32 one on this easy task
    assert arts["int8_onnx_ptq"]["agreement_with_fp32"]["top1_agreement"] >= 0.9


# ------------------------------------------------------------------------------------ bad input
def test_file_that_is_not_onnx_fails_in_one_line(tiny_project, tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage, not a protobuf ModelProto\xff\xfe" * 8)
    cfg = write_config(tiny_project, "tiny_bad.yaml", str(tmp_path / "bad.onnx"))
    msg = one_line_error(run_edgeq("run", cfg, "--out", tmp_path / "run"))
    assert "bad.onnx" in msg and "not an ONNX model" in msg


def test_dynamic_input_dims_fail_with_the_fix(tiny_onnx, tmp_path):
    import onnx

    m = onnx.load(str(tiny_onnx / "tiny_nchw.onnx"))
    for d, name in zip(m.graph.input[0].type.tensor_type.shape.dim, "NCHW"):
        d.dim_param = name
    onnx.save(m, str(tmp_path / "dynamic.onnx"))
    cfg = write_config(tiny_onnx, "tiny_dyn.yaml", str(tmp_path / "dynamic.onnx"))
    msg = one_line_error(run_edgeq("run", cfg, "--out", tmp_path / "run"))
    assert "dynamic dims" in msg and "make_dynamic_shape_fixed" in msg and "--input_shape 1,3,16,16" in msg


def test_calibration_images_of_the_wrong_size_fail_in_one_line(tiny_onnx, tmp_path):
    cfg = write_config(tiny_onnx, "tiny_size.yaml", "tiny_nchw.onnx", size=24)
    msg = one_line_error(run_edgeq("run", cfg, "--out", tmp_path / "run"))
    assert "16x16" in msg and "24x24" in msg and "model.input_shape" in msg


def test_excluded_nodes_stay_float_and_unknown_names_are_refused(tiny_onnx, tmp_path):
    import numpy as np
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeq.core.errors import ConfigError
    from edgeq.methods.onnx.ort_int8 import host_op_types, quantize_onnx

    prepared = tmp_path / "prepared.onnx"
    quant_pre_process(str(tiny_onnx / "tiny_nchw.onnx"), str(prepared))
    conv = next(n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv")
    cal = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32)
    kw = dict(input_name="input", nchw=True, batch=None, calibration_method="minmax", op_types=host_op_types("qdq"))
    quantize_onnx(prepared, tmp_path / "q.onnx", TENSORRT_SCHEME, cal, exclude_nodes=[conv], **kw)
    q = onnx.load(str(tmp_path / "q.onnx"))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    node = next(n for n in q.graph.node if n.name == conv)
    assert producers.get(node.input[0]) != "DequantizeLinear"  # its input stays float
    with pytest.raises(ConfigError, match="no node named \\['conv_typo'\\]"):
        quantize_onnx(prepared, tmp_path / "q2.onnx", TENSORRT_SCHEME, cal, exclude_nodes=["conv_typo"], **kw)
