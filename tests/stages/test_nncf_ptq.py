"""The nncf_ptq stage through the real command line: the FP32 OpenVINO IR and NNCF's INT8 routes (IR, QDQ ONNX,
accuracy control) evaluated, paired with their FP32 and host-timed beside edgeq's own routes; a toolchain that is
not installed leaves its routes recorded as not made while the others stand."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_config, run_edgeq

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgeq[openvino]')")
pytest.importorskip("nncf", reason="nncf is not installed (pip install 'edgeq[openvino]')")

NNCF_ARTIFACTS = ("fp32_openvino", "int8_openvino_nncf", "int8_onnx_nncf", "int8_openvino_nncf_ac")
STAGES = {"tflite_ptq": {"representative_images": 40}, "onnx_ptq": {"calibration_images": 40},
          "nncf_ptq": {"calibration_images": 40, "routes": ["openvino", "onnx", "openvino_ac"],
                       "validation_images": 20, "precision_variants": ["bf16", "f16"]}}


def _config(tiny_project: Path, root: Path) -> Path:
    return make_config(root, tiny_project, stages=STAGES, data={"calibration_size": 60},
                       benchmark={"runs": 10, "warmup": 2})


@pytest.fixture(scope="module")
def nncf_run(tiny_project, tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("nncf")
    out = root / "run"
    r = run_edgeq("run", _config(tiny_project, root), "--out", out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads((out / "report.json").read_text()), out


def by_name(rep: dict) -> dict:
    return {a["name"]: a for a in rep["artifacts"]}


def test_nncf_routes_are_made_evaluated_and_paired_with_their_fp32(nncf_run):
    rep, _ = nncf_run
    arts = by_name(rep)
    assert set(NNCF_ARTIFACTS) <= set(arts), sorted(arts)
    for name in NNCF_ARTIFACTS:
        acc = arts[name]["accuracy"]
        assert acc["top1"] is not None and acc["n"] > 0 and len(acc["ci95"]) == 2, name
    # each INT8 route is paired with the FP32 of its own format: the IRs with the FP32 IR, the QDQ ONNX with fp32_onnx
    assert arts["int8_openvino_nncf"]["vs_fp32"]["reference"] == "fp32_openvino"
    assert arts["int8_openvino_nncf_ac"]["vs_fp32"]["reference"] == "fp32_openvino"
    assert arts["int8_onnx_nncf"]["vs_fp32"]["reference"] == "fp32_onnx"
    for name in NNCF_ARTIFACTS[1:]:
        v = arts[name]["vs_fp32"]
        assert v["n"] == acc_n(arts, name) and "p" in v["mcnemar"] and len(v["drop_ci95_pt"]) == 2, v


def test_every_openvino_figure_names_its_inference_precision(nncf_run):
    rep, _ = nncf_run
    arts = by_name(rep)
    for name in ("fp32_openvino", "int8_openvino_nncf", "int8_openvino_nncf_ac"):
        a = arts[name]
        assert a["format"] == "openvino" and a["params"]["inference_precision"] == "f32"
        assert "precision=f32" in a["latency_ms"]["host"]["runtime"], a["latency_ms"]["host"]
    assert arts["fp32_openvino"]["notes"]["max_rel_diff_vs_onnx"] <= 1e-4


def test_nncf_artifacts_are_timed_in_the_same_interleaved_rounds_as_tflite_and_ort(nncf_run):
    rep, _ = nncf_run
    arts = by_name(rep)
    host = {n: arts[n]["latency_ms"]["host"] for n in ("int8_tflite_ptq", "int8_onnx_ptq", *NNCF_ARTIFACTS)}
    assert all(h["median"] > 0 for h in host.values()), host
    assert len({h["rounds"] for h in host.values()}) == 1 and next(iter(host.values()))["rounds"] > 1
    assert host["int8_onnx_nncf"]["runtime"].startswith("onnxruntime")  # a QDQ ONNX is judged on ORT


def test_nncfs_qdq_onnx_is_timed_on_openvino_too_in_the_same_rounds_each_figure_naming_its_runtime(nncf_run):
    rep, out = nncf_run
    arts = by_name(rep)
    ort, ov = arts["int8_onnx_nncf"]["latency_ms"]["host"], arts["int8_onnx_nncf"]["latency_ms_other_runtimes"]
    on_ov = ov["openvino"]["host"]
    assert ort["runtime"].startswith("onnxruntime") and on_ov["runtime"].startswith("openvino ")
    assert "precision=f32" in on_ov["runtime"] and on_ov["median"] > 0 and len(on_ov["median_ci95"]) == 2
    assert on_ov["rounds"] == ort["rounds"] == arts["int8_tflite_ptq"]["latency_ms"]["host"]["rounds"] > 1
    assert on_ov["ratio_to_fp32"]["reference"] == "fp32_openvino"  # against the FP32 OpenVINO runs as its own
    assert ort["ratio_to_fp32"]["reference"] == "fp32_onnx"
    md = (out / "report.md").read_text()
    assert "## On other runtimes" in md and "| int8_onnx_nncf | onnx | host | openvino " in md
    # the referee takes (NNCF, OpenVINO, onnx) as a route of its own wherever the artifact is within the budget
    routes = {(r["artifact"], r["runtime"]) for r in rep["referee"]["host"]["routes"]}
    within = arts["int8_onnx_nncf"]["vs_fp32"]["within_budget"] is True
    assert ((("int8_onnx_nncf", "OpenVINO") in routes) and (("int8_onnx_nncf", "ONNX Runtime") in routes)) == within


def test_bf16_and_f16_variants_are_artifacts_of_their_own_where_the_cpu_has_the_instructions(nncf_run):
    """Detected from OpenVINO's CPU capabilities, never assumed: made and run at that precision, or not made with the
    capability list as the reason."""
    from edgeq.methods.openvino.convert import cpu_runs

    rep, _ = nncf_run
    arts = by_name(rep)
    for p in ("bf16", "f16"):
        name, why = f"{p}_openvino", cpu_runs(p)
        if why:
            assert name not in arts and rep["nncf_ptq"]["not_made"][name] == why, rep["nncf_ptq"]["not_made"]
            continue
        a = arts[name]
        assert a["precision"] == p and a["params"]["inference_precision"] == p and a["sha256"] != arts["fp32_openvino"]["sha256"]
        assert f"precision={p}" in a["latency_ms"]["host"]["runtime"] and a["accuracy"]["n"] > 0
        assert a["vs_fp32"]["reference"] == "fp32_openvino"


def test_an_openvino_ir_is_bundled_as_a_directory_and_its_classify_check_passes(nncf_run, tmp_path):
    _, out = nncf_run
    r = run_edgeq("bundle", out, "--artifact", "int8_openvino_nncf", "--out", tmp_path)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    bundle = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert (bundle / "int8_nncf.openvino" / "model.xml").is_file() and (bundle / "int8_nncf.openvino" / "model.bin").is_file()
    chk = subprocess.run([sys.executable, str(bundle / "classify.py"), "--check"], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert chk.returncode == 0, chk.stdout[-1000:] + chk.stderr[-2000:]
    ans = json.loads(chk.stdout.strip().splitlines()[-1])
    assert ans["check"]["ok"] and ans["runtime"].startswith("openvino") and "precision=f32" in ans["runtime"], ans


def test_nncf_options_and_the_accuracy_control_account_are_recorded(nncf_run):
    rep, out = nncf_run
    arts = by_name(rep)
    p = arts["int8_openvino_nncf"]["params"]
    assert p["subset_size"] == 40 and p["fast_bias_correction"] is True and p["preset"] is None
    ac = arts["int8_openvino_nncf_ac"]["notes"]["accuracy_control"]
    assert isinstance(ac["reverted_layers"], list) and ac["validation_precision"] == "f32"
    assert 0 <= ac["initial_metric"] <= 1 and 0 <= ac["quantized_metric"] <= 1
    assert ac["validated_on"].startswith("calibration images 40..59")  # held back: never the evaluation split
    assert (out / arts["fp32_openvino"]["path"] / "model.xml").is_file()
    assert (out / arts["fp32_openvino"]["path"] / "model.bin").is_file()
    assert not {k for k in rep["nncf_ptq"]["not_made"] if not k.endswith("16_openvino")}, rep["nncf_ptq"]["not_made"]


def test_routes_are_not_made_with_the_reason_when_openvino_and_nncf_are_missing(tiny_project, tmp_path):
    """Python treats a None in sys.modules as not installed: the real ImportError path, the rest of the run stands."""
    out = tmp_path / "run"
    code = ("import sys; sys.modules['openvino'] = None; sys.modules['nncf'] = None; "
            "from edgeq.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "run", str(_config(tiny_project, tmp_path)), "--out", str(out)],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    arts = by_name(rep)
    assert not set(NNCF_ARTIFACTS) & set(arts) and {"int8_tflite_ptq", "int8_onnx_ptq"} <= set(arts)
    not_made = rep["nncf_ptq"]["not_made"]
    assert "openvino is not installed" in not_made["fp32_openvino"]
    assert "nncf is not installed" in not_made["int8_onnx_nncf"]
    assert "no FP32 OpenVINO IR" in not_made["int8_openvino_nncf"]
    assert "not made" in rep["nncf_ptq"]["markdown"]


def acc_n(arts: dict, name: str) -> int:
    return arts[name]["accuracy"]["n"]


# NNCF 3.4's accuracy-control messages, as its algorithm logs them when it has to revert (recorded, MobileNetV2-like)
RECORDED_AC_LOG = [
    "Metric of initial model: 0.905",
    "Collecting values for each data item using the initial model",
    "Metric of quantized model: 0.87",
    "Accuracy drop: 0.035 (absolute)",
    "Total number of quantized operations in the model: 53",
    "Changing the scope of quantizer nodes was started",
    "Reverted 1 operations to the floating-point precision: \n\tblock_16_project/Conv2D",
    "Accuracy drop with the new quantization scope is 0.015 (absolute)",
    "Reverted 1 operations to the floating-point precision: \n\tConv_1/Conv2D",
    "Algorithm completed: achieved required accuracy drop 0.005 (absolute)",
    "2 out of 53 were reverted back to the floating-point precision:\n\tblock_16_project/Conv2D\n\tConv_1/Conv2D",
]


def test_accuracy_control_account_names_the_reverted_layers_from_nncfs_log():
    from edgeq.methods.openvino.nncf_routes import accuracy_control_log

    ac = accuracy_control_log(RECORDED_AC_LOG)
    assert ac["reverted_layers"] == ["block_16_project/Conv2D", "Conv_1/Conv2D"]
    assert (ac["initial_metric"], ac["quantized_metric"], ac["drop_before_revert"]) == (0.905, 0.87, 0.035)
    assert ac["outcome"].startswith("Algorithm completed: achieved required accuracy drop")
    within = accuracy_control_log(RECORDED_AC_LOG[:4])
    assert within["reverted_layers"] == [] and within["outcome"] == "within the budget without reverting any layer"


def test_an_nhwc_onnx_input_is_quantized_as_given_without_an_export(tiny_project, tmp_path):
    """A run starting from an ONNX model (tf2onnx's NHWC default): the IR comes from it as given, calibration
    images stay NHWC, and the NNCF artifacts are paired with it."""
    import onnx
    import tf2onnx

    from edgeq.core.tfcompat import tf
    from edgeq.loaders.keras import load_keras_model

    spec = (tf().TensorSpec((None, 16, 16, 3), tf().float32, name="pixels"),)
    proto, _ = tf2onnx.convert.from_keras(load_keras_model(tiny_project / "tiny.keras"), input_signature=spec,
                                          opset=17)
    onnx.save(proto, str(tmp_path / "tiny_nhwc.onnx"))
    cfg = make_config(tmp_path, tiny_project, stages={"nncf_ptq": {"calibration_images": 40}},
                      model={"path": str(tmp_path / "tiny_nhwc.onnx")}, benchmark={"runs": 5, "warmup": 1})
    r = run_edgeq("run", cfg, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    arts = by_name(rep)
    assert set(arts) == {"fp32_onnx", "fp32_openvino", "int8_openvino_nncf", "int8_onnx_nncf"}
    assert arts["fp32_onnx"]["stage"] == "import" and rep["nncf_ptq"]["input_layout"] == "NHWC"
    assert arts["fp32_openvino"]["notes"]["max_rel_diff_vs_onnx"] <= 1e-4
    assert arts["int8_onnx_nncf"]["vs_fp32"]["reference"] == "fp32_onnx"
    assert arts["fp32_openvino"]["accuracy"]["top1"] == arts["fp32_onnx"]["accuracy"]["top1"]
