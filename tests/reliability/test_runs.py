"""Runs under hostile conditions: odd but legal input exits 0, interrupts and full disks leave nothing that
claims success, one run at a time per directory, and report.json tells the truth."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hostile import Proj, assert_nothing_claims_success, assert_one_error, cli, proj  # noqa: F401


def _run(capsys, cfg: Path, out: Path, *args):
    return cli(capsys, "run", cfg, "--out", out, "--no-benchmark", *args)


def _manifest(out: Path) -> dict:
    return {a["name"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}


def test_odd_but_legal_input_runs_and_report_tells_the_truth(proj: Proj, capsys, monkeypatch):
    """Unicode and spaces in every path and the name, ~ and $VARS in paths, numeric class folders, a stale lock."""
    home = proj.root / "hôme dir"
    data = home / "dåta ünïcode" / "imgs"
    proj.folder("tmp_imgs")
    data.parent.mkdir(parents=True)
    shutil.copytree(proj.root / "tmp_imgs", data)
    for i in range(3):  # ImageNet-style numeric folders are the class indices themselves
        os.rename(data / f"class_{i}", data / f"{i:03d}")
    model = proj.root / "mödel src.keras"
    shutil.copyfile(proj.model, model)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("EDGEQ_TEST_MODEL_DIR", str(proj.root))
    cfg = proj.config({"name": "tïny modèl", "model": {"path": "${EDGEQ_TEST_MODEL_DIR}/mödel src.keras"},
                       "data": {"path": "~/dåta ünïcode/imgs", "calibration_size": 20},
                       "stages": {"tflite_ptq": {"representative_images": 20}}}, name="cönfig ü.yaml")
    out = proj.root / "rün öut"
    out.mkdir()
    (out / ".edgeq.lock").write_text("999999\n")  # left by a killed run: never blocks
    code, stdout, err = _run(capsys, cfg, out)
    assert code == 0, err
    assert "Traceback" not in err
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"] == "tïny modèl"
    assert rep["dataset"]["full_test_set"] is False  # an eval split of one folder is not a whole test set
    assert rep["wall_seconds"] > 0 and rep["wall_seconds_last_run"] == rep["wall_seconds"]
    top1 = rep["artifacts"][0]["accuracy"]["top1"]
    assert top1 > 0.6, "numeric folder names must be the class indices"
    # the FP32 source is copied, never hard-linked: overwriting the source leaves the run's artifact intact
    fp32 = _manifest(out)["fp32_keras"]
    art = out / fp32["path"]
    assert art.stat().st_ino != model.stat().st_ino
    model.write_bytes(b"overwritten")
    from edgeq.core.artifacts import sha256_of
    assert sha256_of(art) == fp32["sha256"]


def test_rerun_that_reuses_everything_keeps_wall_seconds(proj: Proj, capsys):
    cfg = proj.config({"data": {"calibration_size": 20}, "stages": {"tflite_ptq": {"representative_images": 20}}})
    assert _run(capsys, cfg, proj.out)[0] == 0
    first = json.loads((proj.out / "report.json").read_text())
    code, stdout, err = _run(capsys, cfg, proj.out)
    assert code == 0, err
    assert "= int8_tflite_ptq: reused" in stdout
    rep = json.loads((proj.out / "report.json").read_text())
    assert rep["wall_seconds"] == first["wall_seconds"] and rep["wall_seconds_last_run"] is not None
    # the phases of the run that made the artifacts stay; this rerun's own are beside them
    assert rep["stage_seconds"] == first["stage_seconds"] and "tflite_ptq" in rep["stage_seconds_last_run"]


def test_labels_not_matching_the_model_warn_loudly(proj: Proj, capsys):
    """A class map in the wrong order makes FP32 top-1 near chance: a warning on stderr and in the report."""
    ev = proj.folder("eval", 30)
    cfg = proj.config({"data": {"path": None, "calibration_path": str(proj.images), "eval_path": str(ev),
                                "classes": ["class_1", "class_2", "class_0"]},
                       "stages": {"tflite_ptq": {"export_fp32": False}}})
    code, _, err = _run(capsys, cfg, proj.out)
    assert code == 0, err
    assert "edgeq: warning:" in err and "labels probably do not match the model's classes" in err
    rep = json.loads((proj.out / "report.json").read_text())
    assert rep["warnings"] and rep["dataset"]["full_test_set"] is True  # a whole eval_path set


def test_validate_of_a_good_config_writes_nothing(proj: Proj, capsys):
    code, stdout, err = cli(capsys, "validate", proj.config(), "--out", proj.out)
    assert code == 0, err
    assert "ok (tiny" in stdout and "stages tflite_ptq" in stdout
    assert not proj.out.exists()


def test_data_counts_are_checked_before_any_image_is_decoded(proj: Proj, capsys, monkeypatch):
    import edgeq.core.image_folder

    def no_decoding(*a, **k):
        raise AssertionError("images decoded before the counts were checked")
    monkeypatch.setattr(edgeq.core.image_folder, "decode_image_folder", no_decoding)
    monkeypatch.setattr("edgeq.run.inputs.decode_image_folder", no_decoding)
    cfg = proj.config({"data": {"calibration_size": 5000}, "stages": {"tflite_ptq": {"representative_images": 5}}})
    code, _, err = cli(capsys, "validate", cfg)
    assert_one_error(code, err, "5000 images asked for but only 120")


def test_disk_without_room_for_the_artifacts_is_refused_up_front(proj: Proj, capsys, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    code, _, err = _run(capsys, proj.config(), proj.out)
    assert_one_error(code, err, str(proj.out), "MB free", "free space or choose another --out")
    assert not proj.out.exists()


def test_disk_full_mid_run_is_one_line_and_nothing_claims_success(proj: Proj, capsys, monkeypatch):
    def full(src, dst, *a, **k):
        Path(dst).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))
    monkeypatch.setattr(shutil, "copyfile", full)
    code, _, err = _run(capsys, proj.config(), proj.out)
    assert_one_error(code, err, "No space left on device", "the disk is full", "free space and rerun")
    assert_nothing_claims_success(proj.out)
    assert not (proj.out / "artifacts" / "fp32.keras").exists()


def test_second_run_into_a_locked_directory_refuses_with_no_wait(proj: Proj, capsys):
    from edgeq.run.lock import run_lock

    proj.out.mkdir()
    with run_lock(proj.out):
        code, _, err = _run(capsys, proj.config(), proj.out, "--no-wait")
    assert_one_error(code, err, str(proj.out), f"pid {os.getpid()}", "choose another --out")
    assert_nothing_claims_success(proj.out)


def test_second_run_waits_for_the_first_and_names_its_pid(proj: Proj, capsys):
    from edgeq.run.lock import run_lock

    proj.out.mkdir()
    held, release = threading.Event(), threading.Event()

    def holder():
        with run_lock(proj.out):
            held.set()
            release.wait(30)
    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    threading.Timer(1.0, release.set).start()
    cfg = proj.config({"data": {"calibration_size": 20}, "stages": {"tflite_ptq": {"representative_images": 20,
                                                                                   "export_fp32": False}}})
    code, _, err = _run(capsys, cfg, proj.out)
    t.join()
    assert code == 0, err
    assert f"in use by another edgeq run (pid {os.getpid()}); waiting" in err


def _interrupting_stage(monkeypatch, signum: int, swallow: bool):
    """The first stage gets a signal; with `swallow`, its KeyboardInterrupt is eaten (as TensorFlow may)."""
    import edgeq.run.pipeline

    real = edgeq.run.pipeline._run_stage

    def stage(name, ctx, opts):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(0.5)
        except KeyboardInterrupt:
            if not swallow:
                raise
        return real(name, ctx, opts)
    monkeypatch.setattr(edgeq.run.pipeline, "_run_stage", stage)


@pytest.mark.parametrize("signum,status,swallow", [(signal.SIGINT, 130, False), (signal.SIGINT, 130, True),
                                                    (signal.SIGTERM, 143, False)],
                         ids=["sigint", "sigint_swallowed_inside_tensorflow", "sigterm"])
def test_signal_stops_the_run_keeps_finished_artifacts_and_resumes(proj: Proj, capsys, monkeypatch,
                                                                   signum, status, swallow):
    cfg = proj.config({"data": {"calibration_size": 20}, "stages": {"tflite_ptq": {"representative_images": 20,
                                                                                   "export_fp32": False}}})
    _interrupting_stage(monkeypatch, signum, swallow)
    code, _, err = _run(capsys, cfg, proj.out)
    assert code == status, err
    assert "Traceback" not in err
    assert f"edgeq: interrupted ({signal.Signals(signum).name}); finished artifacts are kept" in err
    assert_nothing_claims_success(proj.out)
    assert "fp32_keras" in _manifest(proj.out)  # finished before the signal: kept
    monkeypatch.undo()
    code, stdout, err = _run(capsys, cfg, proj.out)
    assert code == 0, err
    assert "= fp32_keras: reused" in stdout and (proj.out / "report.json").exists()


def test_ctrl_c_on_the_real_command_exits_130_with_one_line(proj: Proj):
    """A real SIGINT to `edgeq run` during a stage (the only subprocess in this suite)."""
    cfg = proj.config({"data": {"calibration_size": 20}, "stages": {"tflite_ptq": {"representative_images": 20}}})
    p = subprocess.Popen([sys.executable, "-m", "edgeq", "run", str(cfg), "--out", str(proj.out), "--no-benchmark"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    for line in p.stdout:
        if line.startswith("[tflite_ptq]"):
            p.send_signal(signal.SIGINT)
            break
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("edgeq: interrupted (SIGINT)")]
    assert_nothing_claims_success(proj.out)
