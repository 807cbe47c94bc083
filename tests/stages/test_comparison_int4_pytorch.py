"""The comparison's INT4 row for a PyTorch input model: naive PTQ (round-to-nearest weights) and NNCF QAT with
4-bit weight quantizers, simulated in PyTorch on the same evaluation images as every cell, each paired against
FP32 (exact McNemar, Newcombe interval), QAT paired against the best PTQ, and a verdict line for INT4."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nncf")

import torch_nets  # noqa: E402


@pytest.fixture(scope="module")
def int4_run(tmp_path_factory):
    """`edgeq run --stages comparison` (bits [4], no W4A8 artifact) of FashionNet fitted 1 epoch on the sample."""
    from edgeq.cli import main

    root = tmp_path_factory.mktemp("pt_int4")
    torch_nets.fashion_project(
        root, "fashion_pt_int4", 0, 1, {"calibration_size": 100, "train_size": 400},
        {"tflite_ptq": {"representative_images": 64},
         "qat": {"epochs": 2, "batch_size": 32, "validation_images": 64},
         "comparison": {"enabled": True, "bits": [4], "calibration_images": 64, "eval_images": 400,
                        "int4_artifact": False, "low_bit_qat_steps": 16, "low_bit_qat_learning_rate": 1e-4}})
    out = tmp_path_factory.mktemp("pt_int4_run")
    assert main(["run", str(root / "run.yaml"), "--out", str(out), "--stages", "comparison"]) == 0
    run_dir = next(p.parent for p in out.rglob("report.json"))
    return run_dir, json.loads((run_dir / "report.json").read_text())


def _cells(rep) -> dict:
    return {r["method"]: r for r in rep["comparison"]["rows"] if r["bits"] == 4 and r["format"] == "tflite"}


def test_int4_naive_and_qat_cells_are_numeric_simulated_in_pytorch_with_n(int4_run):
    _, rep = int4_run
    cells = _cells(rep)
    for m in ("ptq_naive", "qat"):
        c = cells[m]
        assert c["simulated"] is True and c["framework"] == "pytorch" and 0 <= c["top1"] <= 1
        assert c["n"] == 400 and c["ci95"][0] <= c["top1"] <= c["ci95"][1]
        assert c["drop"] == pytest.approx((rep["comparison"]["rows"][0]["top1"] - c["top1"]) * 100, abs=1e-3)
    assert "round-to-nearest" in cells["ptq_naive"]["how"]
    assert "NNCF QAT with 4-bit weight quantizers" in cells["qat"]["how"] and "16 steps" in cells["qat"]["how"]
    assert cells["ptq_advanced"]["top1"] is None and "W4A8" in cells["ptq_advanced"]["reason"]


def test_every_int4_cell_is_paired_against_fp32_on_the_same_images(int4_run):
    import numpy as np

    from edgeq.core.stats import paired_test

    run_dir, rep = int4_run
    labels = np.load(run_dir / "eval" / "labels.npz")["labels"][:400]
    ref = _cells(rep)["qat"]["vs_fp32"]["reference"]
    fp32 = np.load(run_dir / "eval" / f"{ref}.npz")["predictions"][:400] == labels
    for m in ("ptq_naive", "qat"):
        c = _cells(rep)[m]
        right = np.load(run_dir / c["predictions_file"])["predictions"] == labels
        t = paired_test(fp32, right)
        assert c["vs_fp32"]["n"] == 400 and c["vs_fp32"]["mcnemar"]["p"] == round(t.p, 6)
        assert c["vs_fp32"]["drop_pt"] == pytest.approx(t.drop * 100, abs=1e-3)


def test_int4_verdict_pairs_qat_with_the_best_ptq(int4_run):
    _, rep = int4_run
    c = rep["comparison"]
    t = next(t for t in c["low_bit_tests"] if t["bits"] == 4)
    assert t["ptq"] == "ptq_naive" and t["qat"] == "qat" and t["qat_minus_ptq"]["n"] == 400
    lines = [v for v in c["verdict_lines"] if v.startswith("INT4")]
    assert any("QAT vs the best PTQ (PTQ naive)" in v for v in lines)
    assert any("naive PTQ" in v for v in lines)  # verdict_for's line, now with numbers for PyTorch
    assert not any("point estimates" in v for v in lines)
