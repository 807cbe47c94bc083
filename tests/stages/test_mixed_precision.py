"""Mixed precision under the accuracy budget (stages.mixed_precision) on the hard model (tests/hard_model.py): naive
INT8 loses accuracy through a few sensitive layers (the outlier channel pw1 writes), and putting the wrong layers at
int4 makes it worse. The shipped plan is the best the search measured, never worse than naive INT8 on the held-back
images; a budget no plan can meet says so and ships nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeq.methods.tflite import litert
from hard_model import save_hard_model


def _run(root, name: str, budget: float, allow_float: bool, sensitivity: str = "models"):
    from edgeq.core.config import config_from_dict
    from edgeq.run.pipeline import run_pipeline

    cfg = config_from_dict({
        "name": name, "max_accuracy_drop": budget,
        "model": {"path": "hard.keras", "input_shape": [28, 28, 1], "num_classes": 10},
        "data": {"kind": "fashion_mnist", "prefer_full_dataset": False, "calibration_size": 500},
        "stages": {"tflite_ptq": {"representative_images": 200},
                   "mixed_precision": {"enabled": True, "allow_float": allow_float, "calibration_images": 200,
                                       "holdout_images": 300, "search_rounds": 4, "sensitivity": sensitivity}},
        "benchmark": {"enabled": False}}, base_dir=root)
    run_dir = run_pipeline(cfg, root / name, log=lambda m: None)
    manifest = {a["name"]: a for a in json.loads((run_dir / "manifest.json").read_text())["artifacts"]}
    return run_dir, json.loads((run_dir / "report.json").read_text()), manifest


@pytest.fixture(scope="module")
def hard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    save_hard_model(root / "hard.keras")
    return root


@pytest.fixture(scope="module")
def float_run(hard_root):
    # 10 pt: within reach of float layers (the 1,000 evaluation images add ~2 pt of interval), not of naive INT8
    return _run(hard_root, "float", 10.0, allow_float=True)


@pytest.mark.slow  # the hard model's run: ~1 min on a loaded 2-core machine
def test_shipped_plan_is_the_best_measured_and_no_worse_than_naive_int8(float_run):
    _check_shipped_plan(float_run)


@pytest.mark.slow
def test_int4_costs_by_weight_substitution_ship_the_best_measured_plan(hard_root):
    run = _run(hard_root, "substitution", 10.0, allow_float=True, sensitivity="substitution")
    s = run[1]["mixed_precision"]
    assert s["sensitivity"].startswith("per int4-capable layer, the all-int8 (W8A8) model with only that layer")
    _check_shipped_plan(run)


def _check_shipped_plan(run) -> None:
    run_dir, rep, manifest = run
    s = rep["mixed_precision"]
    naive, tried = s["naive"], s["tried"]
    assert naive["drop_pt"] >= 2.0, naive  # the model is hard for naive INT8 on the held-back images
    # the wrong layers at int4 make it worse: all-int4 is measured worse than naive INT8
    all4 = next(m for m in tried if m["label"] == "all int4")
    assert all4["kl_mean"] > naive["kl_mean"]
    assert "mixed_tflite" in manifest, s["why_not"]
    best = s["best"]
    accepted = [m for m in tried if m["accepted"]]
    assert best["accepted"] and not naive["accepted"]
    # the smallest plan measured within the budget, whichever round found it (not the last one tried)
    assert best["file_bytes"] == min(m["file_bytes"] for m in accepted)
    assert best["drop_pt"] < naive["drop_pt"] and best["kl_mean"] < naive["kl_mean"]
    a = manifest["mixed_tflite"]
    assert a["precision"] == "mixed" and a["stage"] == "mixed_precision"
    # the plan table is the file's: every layer's precision read back from the artifact
    stored = litert.weight_layers((run_dir / a["path"]).read_bytes())
    names = {"int4": "int4", "int8": "int8", "float": "float32"}
    assert {r["layer"]: names[r["precision"]] for r in a["notes"]["plan"]} == {k: v[1] for k, v in stored.items()}
    assert any(r["precision"] == "float" for r in a["notes"]["plan"])  # sensitive layers bought back
    ev = {x["name"]: x for x in rep["artifacts"]}["mixed_tflite"]
    assert ev["accuracy"]["top1"] is not None and ev["vs_fp32"]["n"] == len(np.load(run_dir / "eval" /
                                                                                   "labels.npz")["labels"])
    assert "## Mixed precision" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_a_budget_no_integer_plan_meets_says_so_and_ships_nothing(hard_root):
    run_dir, rep, manifest = _run(hard_root, "integer", 0.0, allow_float=False)
    s = rep["mixed_precision"]
    assert "mixed_tflite" not in manifest
    assert s["artifact"] is None and "cannot be met" in s["why_not"] and "ship int8_tflite_ptq" in s["why_not"]
    assert not any(m["accepted"] for m in s["tried"]) and all("float" not in (m["plan_counts"] or {}) or
                                                             not m["plan_counts"]["float"] for m in s["tried"])
    assert "Nothing made" in s["markdown"]
