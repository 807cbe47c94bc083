"""ONNX and PyTorch models reach TFLite (Edge TPU, Pi): a PyTorch CNN with the quirks real exports have
(depthwise, ReLU6 as Clip, Pad amounts from constant subgraphs, Gemm head, NCHW) goes through `edgeq run`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, _colour_image, run_edgeq, write_image_folder

torch = pytest.importorskip("torch")
import torch_nets  # noqa: E402  (tests/torch_nets.py needs torch)

SIZE = 32
SETTINGS = dict(opset_version=17, input_names=["input"], output_names=["logits"], do_constant_folding=True,
                dynamo=False)  # what the README documents for model.format pytorch


def explicit_export(module, path: Path) -> bytes:
    """The export a user would write by hand with edgeq's documented settings."""
    torch.onnx.export(module, (torch.zeros(1, 3, SIZE, SIZE),), str(path), **SETTINGS)
    return path.read_bytes()


def _trained_net():
    """small_net fitted briefly to the colour-blob classes, so top-1 and INT8 agreement mean something."""
    net = torch_nets.small_net(classes=3)
    rng = np.random.default_rng(1)
    x = np.stack([_colour_image(rng, i % 3, SIZE) for i in range(300)]).astype(np.float32)
    x = torch.from_numpy(((x - 127.5) / 127.5).transpose(0, 3, 1, 2).copy())
    y = torch.arange(300) % 3
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    net.train()
    for _ in range(4):
        for i in range(0, 300, 30):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[i:i + 30]), y[i:i + 30]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def torch_project(tmp_path_factory) -> Path:
    """net.pt (TorchScript), net.pt2 (torch.export), net_state.pth + torch_nets.py (factory), net.onnx (explicit
    export), images/ (3 classes, 32x32) and a config writer."""
    root = tmp_path_factory.mktemp("torch")
    net = _trained_net()
    x = torch.zeros(1, 3, SIZE, SIZE)
    torch.jit.save(torch.jit.trace(net, x), str(root / "net.pt"))
    torch.export.save(torch.export.export(net, (x,)), str(root / "net.pt2"))
    torch.save(net.state_dict(), str(root / "net_state.pth"))
    shutil.copyfile(Path(torch_nets.__file__), root / "torch_nets.py")
    explicit_export(net, root / "net.onnx")
    write_image_folder(root / "images", 300, classes=3, size=SIZE)
    return root


def write_config(root: Path, name: str, model: dict, stages: dict, **extra) -> Path:
    import yaml

    cfg = {"name": name, "model": {"input_shape": [SIZE, SIZE, 3], "num_classes": 3, **model},
           "data": {"kind": "image_folder", "path": "images", "calibration_size": 100},
           "stages": {"tflite_ptq": {"enabled": False}, **stages}, "benchmark": {"enabled": False}, **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def onnx_run(torch_project, tmp_path_factory):
    cfg = write_config(torch_project, "from_onnx", {"path": "net.onnx"},
                       {"tflite_ptq": {"representative_images": 100}, "onnx_ptq": {"enabled": True, "calibration_images": 100}})
    out = tmp_path_factory.mktemp("run") / "onnx"
    r = run_edgeq("run", cfg, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text()), r


def test_pytorch_cnn_in_onnx_becomes_a_full_integer_tflite_matching_the_onnx(onnx_run):
    out, rep, _ = onnx_run
    arts = {a["name"]: a for a in rep["artifacts"]}
    assert set(arts) == {"fp32_onnx", "fp32_tflite", "int8_tflite_ptq", "int8_onnx_ptq", "int8_onnx_trt"}
    int8 = arts["int8_tflite_ptq"]
    assert int8["notes"]["float_ops"] == [] and int8["notes"]["tensor_dtypes"].get("float32", 0) == 0
    vs = rep["tflite_ptq"]["vs_onnx"]
    assert vs["relative"] <= 1e-3 and vs["top1_agreement"] == 1.0 and vs["images"] == 100
    assert arts["fp32_onnx"]["accuracy"]["top1"] >= 0.9  # the net learned the task: agreement below means something
    assert int8["agreement_with_fp32"]["top1_agreement"] >= 0.97
    assert int8["notes"]["size_floor"]["weights"] > 0  # counted from the ONNX weights
    assert "## TFLite from ONNX" in (out / "report.md").read_text()


def test_int8_tflite_from_onnx_passes_the_edge_tpu_check(onnx_run):
    from edgeq.targets.edgetpu import check_edgetpu

    out, rep, _ = onnx_run
    c = check_edgetpu(out / "artifacts" / "int8_ptq.tflite", "int8_tflite_ptq")
    assert c.ok, c.problems
    assert c.details["ops"].get("DEPTHWISE_CONV_2D") and c.details["ops"].get("FULLY_CONNECTED")


def test_translation_downloads_nothing(torch_project, tmp_path, monkeypatch):
    """onnx2tf fetches sample images from GitHub to check itself; edgeq gives it the run's images instead."""
    import socket

    from edgeq.loaders.onnx import read_onnx_input
    from edgeq.methods.onnx.to_tf import onnx_to_keras

    def refuse(*a, **k):
        raise AssertionError("network access during the ONNX -> TensorFlow translation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    info = read_onnx_input(torch_project / "net.onnx", (SIZE, SIZE, 3))
    images = np.random.default_rng(0).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    model, notes = onnx_to_keras(torch_project / "net.onnx", info, images, tmp_path)
    assert list(model.inputs[0].shape) == [None, SIZE, SIZE, 3] and notes["onnx_input_layout"] == "NCHW"


@pytest.mark.parametrize("form", ["torchscript", "state_dict"])
def test_pytorch_format_exports_the_same_bytes_as_an_explicit_export(torch_project, tmp_path, form):
    model = {"torchscript": {"path": "net.pt"},
             "state_dict": {"path": "net_state.pth", "factory": "torch_nets:small_net"}}[form]
    cfg = write_config(torch_project, f"pt_{form}", {**model, "format": "pytorch"}, {}, evaluate={"enabled": False})
    r = run_edgeq("run", cfg, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    if form == "torchscript":
        module = torch.jit.load(str(torch_project / "net.pt"))
    else:
        module = torch_nets.small_net()
        module.load_state_dict(torch.load(str(torch_project / "net_state.pth"), weights_only=True))
    assert (tmp_path / "run" / "artifacts" / "fp32.onnx").read_bytes() == explicit_export(module.eval(), tmp_path / "x.onnx")
    fp32 = next(a for a in json.loads((tmp_path / "run" / "manifest.json").read_text())["artifacts"]
                if a["name"] == "fp32_onnx")
    assert fp32["notes"]["settings"]["opset_version"] == 17 and fp32["notes"]["max_abs_diff_vs_torch"] < 1e-4


def test_torch_export_program_runs_through_tflite_ptq(torch_project, tmp_path):
    """(QAT of a .pt2: tests/stages/test_qat_pytorch_inputs.py)"""
    cfg = write_config(torch_project, "pt2", {"path": "net.pt2"}, {"tflite_ptq": {"representative_images": 50}},
                       evaluate={"enabled": False})
    r = run_edgeq("run", cfg, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {a["name"] for a in rep["artifacts"]} == {"fp32_onnx", "fp32_tflite", "int8_tflite_ptq"}
    assert "[qat] skipped" not in r.stdout
    assert rep["tflite_ptq"]["vs_onnx"]["relative"] <= 1e-3
    assert "exported from PyTorch" in rep["tflite_ptq"]["markdown"]


# ------------------------------------------------------------------------------------ bad input
def test_pytorch_without_torch_installed_says_how_to_install(torch_project):
    cfg = write_config(torch_project, "no_torch", {"path": "net.pt"}, {})
    code = ("import sys; sys.modules['torch'] = None; from edgeq.cli import main; "
            f"sys.exit(main(['validate', {str(cfg)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "pip install 'edgeq[torch]'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("model, expect", [
    ({"path": "net_state.pth", "format": "pytorch"}, "not a TorchScript file or torch.export program"),
    ({"path": "net_state.pth", "factory": "torch_nets"}, "give 'package.module:function'"),
    ({"path": "net_state.pth", "factory": "no_such_module:f"}, "cannot import no_such_module"),
    ({"path": "net_state.pth", "factory": "torch_nets:mobilenet_v2_like"}, "cannot load the PyTorch model"),
    ({"path": "net.onnx", "factory": "torch_nets:small_net"}, "model.factory is for PyTorch"),
])
def test_bad_pytorch_input_fails_in_one_line_before_writing(torch_project, tmp_path, model, expect):
    cfg = write_config(torch_project, "bad", model, {})
    r = run_edgeq("run", cfg, "--out", tmp_path / "run")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert expect in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
