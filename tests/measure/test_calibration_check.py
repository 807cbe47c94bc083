"""Calibration diagnostics: calibrating on images of a few classes is flagged (class coverage naming them, clipping
naming the tensors whose evaluation activations reach past the calibrated range); a calibration set like the
evaluation data passes both."""
from __future__ import annotations

import json

import numpy as np

from conftest import REPO, make_config, run_edgeq
from edgeq.core.data import LabelledImages, Preprocess
from edgeq.measure.calibration_check import class_coverage


def test_a_balanced_calibration_set_passes_both_checks(tmp_path):
    from edgeq.measure.calibration_check import clipping

    with np.load(REPO / "calibration_data" / "fashion_mnist_sample.npz") as z:
        cal = LabelledImages(z["calibration_images"][:300], z["calibration_labels"][:300], "cal")
        ev = LabelledImages(z["eval_images"][:200], z["eval_labels"][:200], "ev")
    assert class_coverage(cal, ev, 10)["warning"] is None
    tfl = REPO / "models" / "mobilenet_v2.keras"
    from edgeq.core.tfcompat import keras
    from edgeq.methods.tflite.convert import convert_fp32

    (tmp_path / "fp32.tflite").write_bytes(convert_fp32(keras().models.load_model(tfl, compile=False)))
    assert clipping(tmp_path / "fp32.tflite", cal, ev, Preprocess((96, 96), 3))["warning"] is None


def test_class_coverage_names_the_classes_calibration_misses():
    ev = LabelledImages(np.zeros((100, 4, 4, 3), np.uint8), np.arange(100) % 10, "ev",
                        [f"c{i}" for i in range(10)])
    cal = LabelledImages(np.zeros((40, 4, 4, 3), np.uint8), np.arange(40) % 2, "cal")  # classes 0 and 1 only
    d = class_coverage(cal, ev, 10)
    assert d["under_covered"] == 8 and "'c2' (0.0% of calibration images, 10.0% of evaluation)" in d["warning"]
    assert class_coverage(ev, ev, 10)["warning"] is None


def test_calibrating_on_two_of_ten_classes_is_flagged_in_the_report(tmp_path):
    cfg = make_config(tmp_path, "mobilenet_v2", stages={"tflite_ptq": {"representative_images": 40}},
                      data={"calibration_size": 40, "eval_size": 200}, benchmark={"enabled": False})
    # calibration images of 2 of the 10 Fashion-MNIST classes: the shipped sample's calibration split, filtered
    with np.load(REPO / "calibration_data" / "fashion_mnist_sample.npz") as z:
        keep = np.isin(z["calibration_labels"], [0, 1])
        cal = tmp_path / "cal.npz"
        np.savez(cal, images=z["calibration_images"][keep][:80], labels=z["calibration_labels"][keep][:80])
        ev = tmp_path / "ev.npz"
        np.savez(ev, images=z["eval_images"][:200], labels=z["eval_labels"][:200])
    import yaml

    raw = yaml.safe_load(cfg.read_text())
    raw["data"] = {"kind": "npz", "calibration_path": str(cal), "eval_path": str(ev), "calibration_size": 80}
    cfg.write_text(yaml.safe_dump(raw))
    p = run_edgeq("run", cfg, "--out", tmp_path / "run")
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    cov, clip = rep["calibration"]["coverage"], rep["calibration"]["clipping"]
    assert cov["under_covered"] == 8 and "calibration images hardly cover 8 of 10 classes" in p.stdout
    assert clip["shifted"] >= 2 and all(w["shifted"] for w in clip["worst"])
    assert "reach past the calibrated range clearly more than fresh calibration images" in (
        tmp_path / "run" / "report.md").read_text()
