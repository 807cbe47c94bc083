"""`edgeq run` with QAT from each PyTorch input the loader takes: the same trained FashionNet given as a
torch.export program (.pt2, batch 1 as exported by default), a traced TorchScript file and a state_dict + factory
makes the same artifacts (int8_onnx_qat, int8_tflite_qat), records the input kind and route, and, with the same seed,
the same QAT model (identical predictions on the 1,000 evaluation images)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nncf")

import torch_nets  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]
INPUTS = {"state_dict": {"path": "net.pth", "factory": "factory:fashion_net"}, "pt2": {"path": "net.pt2"},
          "torchscript": {"path": "net_traced.pt"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    import yaml

    from edgeq.cli import main

    root = tmp_path_factory.mktemp("pt_inputs")
    net = torch_nets.train_fashion_net(0, 1)
    x = torch.zeros(1, 1, 28, 28)
    torch.save(net.state_dict(), root / "net.pth")
    torch.export.save(torch.export.export(net, (x,)), root / "net.pt2")
    torch.jit.save(torch.jit.trace(net, x), root / "net_traced.pt")
    (root / "factory.py").write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
                                     "from torch_nets import fashion_net\n")
    out = {}
    for kind, model in INPUTS.items():
        cfg = {"name": f"fashion_{kind}",
               "model": {**model, "format": "pytorch", "input_shape": [28, 28, 1], "num_classes": 10},
               "data": {"kind": "fashion_mnist", "prefer_full_dataset": False, "calibration_size": 100,
                        "train_size": 300},
               "stages": {"tflite_ptq": {"enabled": False, "representative_images": 50},
                          "qat": {"enabled": True, "epochs": 1, "batch_size": 32, "validation_images": 50,
                                  "calibration_images": 50}},
               "benchmark": {"enabled": False}}
        (root / f"{kind}.yaml").write_text(yaml.safe_dump(cfg))
        dest = root / f"run_{kind}"
        assert main(["run", str(root / f"{kind}.yaml"), "--out", str(dest)]) == 0
        out[kind] = json.loads(next(dest.rglob("report.json")).read_text())
    return out


def _art(rep, name):
    return next(a for a in rep["artifacts"] if a["name"] == name)


@pytest.mark.parametrize("kind", ["pt2", "torchscript"])
def test_qat_from_a_program_makes_both_artifacts_and_records_its_route(runs, kind):
    rep = runs[kind]
    assert "qat" not in (rep.get("skipped") or {})
    src = _art(rep, "int8_onnx_qat")["params"]["pytorch_input"]
    assert src["kind"] == {"pt2": "torch.export program (.pt2)", "torchscript": "TorchScript file"}[kind]
    assert src["route"].endswith("-> NNCF PyTorch backend") and "ATen ops as torch functions" in src["route"]
    assert rep["checks"]["int8_tflite_qat"]["fully_integer"] is True
    assert rep["qat"]["quantizer"]["batch_norms_folded"] == 7
    k = _art(rep, "int8_onnx_qat")["notes"]["ort_kernels"]
    assert k["integer_convs"] == 7 and k["float_convs"] == 0


@pytest.mark.parametrize("kind", ["pt2", "torchscript"])
def test_qat_from_a_program_gives_the_model_of_the_state_dict_route(runs, kind):
    """Same weights, seed and images: the fine-tune's history and the QAT ONNX's accuracy are those of the
    state_dict + factory run."""
    ref, rep = runs["state_dict"], runs[kind]
    assert _art(ref, "int8_onnx_qat")["params"]["pytorch_input"]["kind"] == "state_dict + model.factory"
    assert rep["qat"]["history"] == ref["qat"]["history"]
    for name in ("int8_onnx_qat", "int8_tflite_qat"):
        assert _art(rep, name)["accuracy"] == _art(ref, name)["accuracy"], name
        assert _art(rep, name)["agreement_with_fp32"] == _art(ref, name)["agreement_with_fp32"], name
