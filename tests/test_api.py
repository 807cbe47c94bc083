"""The Python API (edgeq.api, `edgeq.__all__`), the run without a YAML file, the config schema and the examples
shipped in the package."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import edgeq
from edgeq.core.errors import ConfigError, DataError
from conftest import REPO, _colour_image, build_tiny_cnn, run_edgeq, write_image_folder

SCHEMA_FILE = REPO / "docs" / "config.schema.json"


def colour_blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images of the tiny CNN's task (one dominant colour channel per class) and their labels."""
    rng = np.random.default_rng(seed)
    return np.stack([_colour_image(rng, i % 3) for i in range(n)]), np.arange(n) % 3


def check_run(run: edgeq.Run, int8: str) -> None:
    arts = run.artifacts
    a = arts[int8]
    assert a.path.is_file() and a.size_bytes == a.path.stat().st_size
    assert a.n > 0 and a.top1_ci95[0] <= a.top1 <= a.top1_ci95[1]
    assert a.mcnemar_p is not None and a.drop_ci95_pt[0] <= a.drop_pt <= a.drop_ci95_pt[1] and a.verdict
    assert run.ship["host"] in arts  # timed and within the budget, or FP32
    assert run.report_path.is_file() and (run.path / "config.yaml").is_file()


def test_public_surface_is_all_and_import_stays_light():
    assert set(edgeq.__all__) >= {"run", "quantize", "load_run", "example", "Run"}
    code = "import sys, edgeq; assert 'tensorflow' not in sys.modules and 'onnxruntime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_quantize_a_keras_model_in_memory_with_numpy_arrays(tmp_path):
    x, y = colour_blobs(120)
    run = edgeq.quantize(build_tiny_cnn(), calibration=(x[:60], y[:60]), evaluation=(x[60:], y[60:]), name="mem",
                         stages=["tflite_ptq"], out=tmp_path / "mem", benchmark={"rounds": 3, "runs": 5, "warmup": 1})
    check_run(run, "int8_tflite_ptq")
    assert run.artifacts["int8_tflite_ptq"].n == 60
    assert run.artifacts["int8_tflite_ptq"].top1 >= 0.9  # a trained model stays a classifier after INT8


def test_quantize_a_torch_module_with_a_dataloader(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 3))
    def loader(seed: int) -> DataLoader:
        x, y = colour_blobs(80, seed)
        pixels = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW, as PILToTensor gives
        return DataLoader(TensorDataset(pixels, torch.from_numpy(y)), batch_size=16)

    run = edgeq.quantize(net, calibration=loader(1), evaluation=loader(2), input_shape=(16, 16, 3), name="torch",
                         stages=["onnx_ptq"], out=tmp_path / "torch", benchmark={"rounds": 3, "runs": 5, "warmup": 1})
    check_run(run, "int8_onnx_ptq")
    assert run.artifacts["fp32_onnx"].n == 80


def test_float_images_outside_unit_range_are_refused_in_one_line(tmp_path):
    x, y = colour_blobs(20)
    with pytest.raises(DataError, match=r"calibration: float images in \[-1, .*before normalisation"):
        edgeq.quantize(build_tiny_cnn(train=False), calibration=(x / 127.5 - 1, y), evaluation=(x, y),
                       out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_load_run_of_a_cli_run_gives_the_figures_of_its_report(tiny_run, tiny_run_report):
    run = edgeq.load_run(tiny_run[0])
    for e in tiny_run_report["artifacts"]:
        a = run.artifacts[e["name"]]
        assert (a.top1, a.n, a.sha256) == (e["accuracy"]["top1"], e["accuracy"]["n"], e["sha256"])
        assert a.latency_ms == e["latency_ms"]
    assert run.ship == {t: s["artifact"] for t, s in tiny_run_report["ship"].items()}
    rows = run.compare(run)
    assert rows and not any(r.regressions for r in rows)


def test_run_without_a_yaml_infers_the_config_and_its_config_reproduces_the_artifacts(tmp_path):
    from edgeq.methods.onnx.from_keras import keras_to_onnx

    keras_to_onnx(build_tiny_cnn(), tmp_path / "tiny.onnx", 17)
    write_image_folder(tmp_path / "images", 90)
    first = tmp_path / "first"
    p = run_edgeq("run", "--model", tmp_path / "tiny.onnx", "--data", tmp_path / "images", "--stages", "onnx_ptq",
                  "--out", first, "--no-benchmark")
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = yaml.safe_load((first / "config.yaml").read_text())
    assert cfg["model"]["input_shape"] == [16, 16, 3] and cfg["model"]["num_classes"] == 3
    assert cfg["data"]["kind"] == "image_folder" and cfg["data"]["calibration_size"] == 45
    again = tmp_path / "again"
    p = run_edgeq("run", first / "config.yaml", "--out", again, "--no-benchmark")
    assert p.returncode == 0, p.stderr[-3000:]
    sha = {r: {a["name"]: a["sha256"] for a in json.loads((r / "report.json").read_text())["artifacts"]}
           for r in (first, again)}
    assert sha[first] == sha[again] and "int8_onnx_ptq" in sha[first]


def test_run_without_a_yaml_says_what_it_cannot_read(tmp_path):
    (tmp_path / "net.pt").write_bytes(b"not read: the input size is asked for first")
    write_image_folder(tmp_path / "images", 12)
    p = run_edgeq("run", "--model", tmp_path / "net.pt", "--data", tmp_path / "images", cwd=tmp_path)
    assert p.returncode == 2 and "give --input-shape H,W,C" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()


def test_examples_ship_in_the_package_and_validate():
    path = edgeq.example("mobilenet_v2")
    assert path.parent == Path(edgeq.__file__).parent / "examples"
    p = run_edgeq("validate", path)
    assert p.returncode == 0, p.stderr
    with pytest.raises(ConfigError, match="no example named 'nope'; the package ships: mobilenet_v2"):
        edgeq.example("nope")


# ------------------------------------------------------------------ the config schema
def schema() -> dict:
    p = run_edgeq("schema")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_committed_schema_is_the_one_edgeq_prints():
    assert json.loads(SCHEMA_FILE.read_text()) == schema(), "regenerate: edgeq schema > docs/config.schema.json"


def test_schema_validates_every_shipped_and_documented_config_and_refuses_a_misspelt_key():
    jsonschema = pytest.importorskip("jsonschema")
    v = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    configs = {p.name: yaml.safe_load(p.read_text()) for p in sorted((REPO / "models").glob("*.yaml"))}
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        import re

        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S)):
            raw = yaml.safe_load(block)
            if isinstance(raw, dict) and {"name", "model"} <= set(raw):  # a whole config, not a fragment
                configs[f"{doc.name}#{i}"] = raw
    configs = {k: c for k, c in configs.items() if isinstance(c, dict) and "model" in c}
    assert len(configs) >= 3
    for where, raw in configs.items():
        errors = [e.message for e in v.iter_errors(raw)]
        assert not errors, f"{where}: {errors}"
    bad = yaml.safe_load((REPO / "models" / "mobilenet_v2.yaml").read_text())
    bad["stages"]["tflite_ptq"]["representativ_images"] = 10
    assert any("representativ_images" in e.message for e in v.iter_errors(bad))


def test_shipped_configs_point_editors_at_the_schema():
    for p in (REPO / "models").glob("*.yaml"):
        if "model" in yaml.safe_load(p.read_text()):
            assert p.read_text().startswith("# yaml-language-server: $schema=../docs/config.schema.json"), p.name
