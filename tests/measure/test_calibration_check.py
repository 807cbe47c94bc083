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
    md = (tmp_path / "run" / "report.md").read_text()
    assert "reach past the calibrated range clearly more than fresh calibration images" in md
    prov = rep["calibration"]["provenance"]
    assert prov["overlap"] == 0 and not prov["same_split"] and "(another split), and their activations differ" in (
        prov["warning"]) and "- provenance: **warning**: calibration images come from" in md


def _set(pixels, source: str) -> LabelledImages:
    images = np.stack([np.full((4, 4, 3), v, np.uint8) for v in pixels])
    return LabelledImages(images, np.zeros(len(pixels), int), source)


def test_evaluation_images_that_are_also_calibration_images_are_counted_as_contamination():
    from edgeq.measure.calibration_check import provenance

    cal, ev = _set(range(0, 20), "pool (calibration split)"), _set([3, 3, 7, 11] + list(range(100, 106)), "pool (eval)")
    d = provenance(cal, ev, True, {"tensors": 5, "shifted": 0, "warning": None})
    assert d["overlap"] == 4  # a duplicated image counts once per evaluation copy
    assert d["warning"].startswith("evaluation contaminated: 4 of the 10 evaluation images are also calibration images")
    clean = provenance(cal, _set(range(100, 110), "pool (eval)"), True, {"tensors": 5, "shifted": 0, "warning": None})
    assert clean["overlap"] == 0 and clean["warning"] is None and clean["note"] is None


def test_calibration_from_another_split_is_named_and_a_warning_when_activations_differ():
    from edgeq.measure.calibration_check import provenance

    cal, ev = _set(range(0, 20), "train[55000:]"), _set(range(100, 110), "test")
    alike = provenance(cal, ev, False, {"tensors": 5, "shifted": 0, "warning": None})
    assert alike["warning"] is None and alike["note"] == (
        "calibration images come from train[55000:], evaluation images from test (another split); the clipping "
        "check finds their activation ranges alike")
    apart = provenance(cal, ev, False, {"tensors": 5, "shifted": 3, "warning": "..."})
    assert "calibration images come from train[55000:], evaluation images from test (another split), and their " \
           "activations differ (3 of 5 tensors apart" in apart["warning"]
