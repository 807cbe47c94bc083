"""Seeds make runs repeatable: the same config run twice into two directories gives byte-identical INT8
artifacts (PTQ and QAT, whose fine-tune is seeded) and the same prediction for every evaluation image; another
data.seed draws another calibration/evaluation split."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_config, run_edgeq

STAGES = {"tflite_ptq": {"representative_images": 40},
          "qat": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "validation_images": 8, "calibration_images": 32}}


def _run(cfg, out) -> dict:
    proc = run_edgeq("run", cfg, "--out", out, "--no-benchmark")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def twin_runs(tiny_project, tmp_path_factory):
    """Two runs of one config (PTQ and QAT) into two fresh directories."""
    root = tmp_path_factory.mktemp("twins")
    cfg = make_config(root, tiny_project, stages=STAGES)
    return [(root / d, _run(cfg, root / d)) for d in ("a", "b")]


def test_same_seed_gives_byte_identical_int8_artifacts(twin_runs):
    (_, a), (_, b) = twin_runs
    sha = [{x["name"]: x["sha256"] for x in rep["artifacts"] if x["precision"] == "int8"} for rep in (a, b)]
    assert set(sha[0]) == {"int8_tflite_ptq", "int8_tflite_qat"}
    assert sha[0] == sha[1]


def test_same_seed_gives_the_same_prediction_for_every_image(twin_runs):
    (da, a), (db, b) = twin_runs
    assert a["dataset"]["eval_fingerprint"] == b["dataset"]["eval_fingerprint"]
    for art in a["artifacts"]:
        # eval/<artifact>.npz: the per-image predictions `edgeq compare` pairs runs with
        with np.load(da / "eval" / f"{art['name']}.npz") as pa, np.load(db / "eval" / f"{art['name']}.npz") as pb:
            assert len(pa["predictions"]) == 40 and np.array_equal(pa["predictions"], pb["predictions"]), art["name"]


def test_another_data_seed_draws_another_split(twin_runs, tiny_project, tmp_path):
    (_, a), _ = twin_runs
    cfg = make_config(tmp_path, tiny_project, data={"seed": 1})
    rep = _run(cfg, tmp_path / "run")
    assert rep["dataset"]["n_eval"] == a["dataset"]["n_eval"] == 40
    assert rep["dataset"]["eval_fingerprint"] != a["dataset"]["eval_fingerprint"]
