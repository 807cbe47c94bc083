"""`edgeq compare`: runs side by side, paired tests on shared evaluation images, a CI gate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CONFIG, run_edgeq

REPO = Path(__file__).resolve().parents[2]


def test_a_run_compared_with_itself_passes_the_gate(tiny_run, tmp_path):
    out = tiny_run[0]
    p = run_edgeq("compare", out, out, "--fail-on-regression", "--json", tmp_path / "cmp.json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "same evaluation images: paired exact McNemar" in p.stdout and "int8_tflite_ptq" in p.stdout
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    rows = {r["artifact"]: r for r in cmp["rows"]}
    assert cmp["regressions"] == 0
    assert rows["int8_tflite_ptq"]["paired"]["b"] == rows["int8_tflite_ptq"]["paired"]["c"] == 0
    assert rows["int8_tflite_ptq"]["latency_ratio"] == 1.0


def test_runs_on_different_evaluation_sets_compare_without_paired_tests(tiny_run, tiny_project, tmp_path):
    cfg = tmp_path / "other.yaml"
    cfg.write_text(TINY_CONFIG.format(model=tiny_project / "tiny.keras", images=tiny_project / "images")
                   .replace("calibration_size: 40}", "calibration_size: 40, seed: 7}"))  # another eval split
    assert run_edgeq("run", cfg, "--out", tmp_path / "other", "--no-benchmark").returncode == 0
    p = run_edgeq("compare", tiny_run[0], tmp_path / "other", "--json", tmp_path / "cmp.json")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "different evaluation sets: no paired tests" in p.stdout
    assert all(r["paired"] is None for r in json.loads((tmp_path / "cmp.json").read_text())["rows"])


def test_compare_needs_two_runs_and_says_so(tiny_run, tmp_path):
    p = run_edgeq("compare", tiny_run[0])
    assert p.returncode == 2 and "at least two runs" in p.stderr and "Traceback" not in p.stderr
    p = run_edgeq("compare", tiny_run[0], tmp_path / "nowhere")
    assert p.returncode == 2 and "nowhere" in p.stderr


def _npz_config(tmp: Path, name: str, calibration: np.ndarray, labels: np.ndarray, eval_npz: Path) -> Path:
    np.savez(tmp / f"{name}_cal.npz", images=calibration, labels=labels)
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(f"""name: {name}
model: {{path: {REPO / 'models' / 'mobilenet_v2.keras'}, input_shape: [96, 96, 3], num_classes: 10}}
data: {{kind: npz, calibration_path: {name}_cal.npz, eval_path: {eval_npz}, calibration_size: {len(labels)}}}
stages: {{tflite_ptq: {{representative_images: {len(labels)}}}}}
evaluate: {{keras_baseline: false}}
benchmark: {{runs: 20, warmup: 3, rounds: 6}}
""")
    return cfg


@pytest.mark.slow
def test_a_degraded_int8_artifact_fails_the_gate_and_is_named(tmp_path):
    """The default MobileNetV2 calibrated on 100 real images vs on one near-black image, on the same
    1,000 shipped evaluation images: the second INT8 model loses accuracy and the gate names it."""
    z = np.load(REPO / "calibration_data" / "fashion_mnist_sample.npz", allow_pickle=False)
    np.savez(tmp_path / "eval.npz", images=z["eval_images"], labels=z["eval_labels"])
    good = _npz_config(tmp_path, "good", z["calibration_images"][:100], z["calibration_labels"][:100],
                       tmp_path / "eval.npz")
    dark = _npz_config(tmp_path, "dark", (z["calibration_images"][:1] // 16).astype(np.uint8),
                       z["calibration_labels"][:1], tmp_path / "eval.npz")
    for cfg in (good, dark):
        p = run_edgeq("run", cfg, "--out", tmp_path / cfg.stem, timeout=1200)
        assert p.returncode == 0, p.stderr[-2000:]
    p = run_edgeq("compare", tmp_path / "good", tmp_path / "dark", "--fail-on-regression")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "int8_tflite_ptq" in p.stderr.splitlines()[-1]
    lost = [ln for ln in p.stdout.splitlines() if ln.startswith("regression:") and "top-1 lower" in ln]
    assert len(lost) == 1 and "int8_tflite_ptq" in lost[0] and "McNemar p" in lost[0]  # FP32: same file, no loss
    p = run_edgeq("compare", tmp_path / "good", tmp_path / "dark")  # without the gate: a report, exit 0
    assert p.returncode == 0


def _run_dir(root: Path, name: str, labels: np.ndarray, preds: np.ndarray, indices: np.ndarray | None) -> Path:
    """A run directory as `edgeq run` leaves it for compare: report.json, eval/labels.npz, eval/<artifact>.npz."""
    d = root / name
    (d / "eval").mkdir(parents=True)
    np.savez(d / "eval" / "labels.npz", labels=labels.astype(np.int32), fingerprint=np.array("same"))
    np.savez(d / "eval" / "int16x8_tflite.npz", predictions=preds.astype(np.int16),
             **({} if indices is None else {"indices": indices.astype(np.int32)}))
    n = len(preds)
    e = {"name": "int16x8_tflite", "accuracy": {"top1": 0.5, "ci95": [0.4, 0.6], "n": n}, "latency_ms": {}}
    (d / "report.json").write_text(json.dumps({"dataset": {"eval_fingerprint": "same", "n_eval": len(labels)},
                                               "artifacts": [e]}))
    return d


def test_artifacts_evaluated_on_seeded_subsets_are_paired_on_the_images_both_saw(tmp_path):
    from edgeq.app.compare import compare_pair, load_runs
    from edgeq.core.data import eval_subset

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 1000)
    a_idx, b_idx = eval_subset(1000, 300, 0), eval_subset(1000, 300, 1)  # two seeds: partly the same images
    a_pred = labels[a_idx]  # run A right on all of its images
    b_pred = np.where(rng.random(300) < 0.5, labels[b_idx], (labels[b_idx] + 1) % 10)  # run B right on ~half
    runs = load_runs([_run_dir(tmp_path, "a", labels, a_pred, a_idx), _run_dir(tmp_path, "b", labels, b_pred, b_idx)])
    row = compare_pair(runs[0], runs[1], "host", 1.0, 1.2)[0]
    common = np.intersect1d(a_idx, b_idx)
    assert 0 < len(common) < 300 and row.paired["n"] == len(common)
    b_ok = dict(zip(b_idx.tolist(), (b_pred == labels[b_idx]).tolist()))
    assert row.paired["b"] == sum(not b_ok[i] for i in common.tolist()) and row.paired["c"] == 0
    assert f"paired on the {len(common):,} evaluation images both runs" in row.accuracy_note
    assert row.regressions  # B loses ~50 pt on the shared images: the gate names it


def test_a_subset_run_against_a_full_run_is_paired_on_the_subset(tmp_path):
    from edgeq.app.compare import compare_pair, load_runs
    from edgeq.core.data import eval_subset

    labels = np.arange(200) % 10
    idx = eval_subset(200, 60, 0)
    runs = load_runs([_run_dir(tmp_path, "full", labels, labels.copy(), None),
                      _run_dir(tmp_path, "sub", labels, labels[idx], idx)])
    row = compare_pair(runs[0], runs[1], "host", 1.0, 1.2)[0]
    assert (row.paired["n"], row.paired["b"], row.paired["c"]) == (60, 0, 0) and not row.regressions
