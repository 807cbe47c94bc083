"""Data a user brings, through `edgeq run`: one labelled .npz split deterministically, and separate calibration
and evaluation sets (data.calibration_path + data.eval_path, as folders or .npz) used as given.

(Bad .npz files and an eval set identical to the calibration set: tests/reliability/test_bad_input.py.)
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_config, run_edgeq, write_image_folder


def folder_to_npz(folder: Path, path: Path) -> Path:
    """The ImageFolder tree written by conftest.write_image_folder as one .npz (class_<i> -> label i)."""
    from PIL import Image

    files = sorted(folder.glob("class_*/*.png"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = np.array([int(f.parent.name.removeprefix("class_")) for f in files])
    np.savez(path, images=images, labels=labels)
    return path


def _run(cfg: Path, out: Path) -> dict:
    proc = run_edgeq("run", cfg, "--out", out, "--no-benchmark")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def test_npz_file_is_split_into_calibration_and_eval(tmp_path, tiny_project):
    npz = folder_to_npz(tiny_project / "images", tmp_path / "all.npz")
    rep = _run(make_config(tmp_path, tiny_project, data={"kind": "npz", "path": str(npz)}), tmp_path / "run")
    assert (rep["dataset"]["n_calibration"], rep["dataset"]["n_eval"]) == (40, 40)  # 120 = 40 + 40 + 40 train
    assert rep["dataset"]["full_test_set"] is False and "all.npz" in rep["dataset"]["eval"]
    by = {a["name"]: a for a in rep["artifacts"]}
    assert by["fp32_tflite"]["accuracy"]["top1"] >= 0.9  # labels read in the model's class order


@pytest.mark.parametrize("kind", ["image_folder", "npz"])
def test_separate_calibration_and_eval_sets_are_used_as_given(kind, tmp_path, tiny_project):
    cal, ev = tiny_project / "images", write_image_folder(tmp_path / "eval", 30, seed=1)
    if kind == "npz":
        cal, ev = folder_to_npz(cal, tmp_path / "cal.npz"), folder_to_npz(ev, tmp_path / "eval.npz")
    cfg = make_config(tmp_path, tiny_project,
                      data={"kind": kind, "path": None, "calibration_path": str(cal), "eval_path": str(ev)})
    rep = _run(cfg, tmp_path / "run")
    assert (rep["dataset"]["n_calibration"], rep["dataset"]["n_eval"]) == (40, 30)
    assert rep["dataset"]["full_test_set"] is True and str(ev) in rep["dataset"]["eval"]
    assert all(a["accuracy"]["n"] == 30 for a in rep["artifacts"])


def test_eval_set_holding_some_calibration_images_is_refused(tmp_path, tiny_project):
    cal = write_image_folder(tmp_path / "cal", 40)  # calibration_size 40: every one of them calibrates
    ev = write_image_folder(tmp_path / "eval", 30, seed=1)
    for f in sorted(cal.glob("class_*/*.png"))[:10]:
        shutil.copyfile(f, ev / f.parent.name / f"from_cal_{f.name}")
    cfg = make_config(tmp_path, tiny_project,
                      data={"path": None, "calibration_path": str(cal), "eval_path": str(ev)})
    proc = run_edgeq("validate", cfg)
    assert proc.returncode == 2 and "overlap" in proc.stderr, proc.stdout + proc.stderr[-2000:]
