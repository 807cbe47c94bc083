"""Chunked evaluation (`evaluate.workers`): batch-aligned chunks in parallel processes give exactly the predictions
and paired tests of one process."""
from __future__ import annotations

import os

import numpy as np
import pytest

from edgeq.core.data import LabelledImages, Preprocess
from edgeq.core.stats import paired_test
from edgeq.measure.evaluate import chunk_bounds, evaluate, evaluate_chunked
from edgeq.measure.predictors import open_predictor
from conftest import _colour_image, build_tiny_cnn, convert_tflite


def test_chunks_are_contiguous_and_start_on_batch_boundaries():
    bounds = chunk_bounds(1000, 64, 4)
    assert bounds[0][0] == 0 and bounds[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(s % 64 == 0 for s, _ in bounds) and len(bounds) == 4
    assert chunk_bounds(10, 64, 4) == [(0, 10)]  # fewer batches than workers: fewer chunks


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    """The tiny CNN as FP32 and INT8 .tflite files, and 301 labelled images (not a multiple of the batch)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 301)
    images = np.stack([_colour_image(rng, int(c)) for c in labels])
    model = build_tiny_cnn()
    pre = Preprocess((16, 16))
    root = tmp_path_factory.mktemp("chunks")
    paths = {}
    for name, int8 in (("fp32", False), ("int8", True)):
        paths[name] = root / f"{name}.tflite"
        paths[name].write_bytes(convert_tflite(model, int8, pre(images[:40])))
    return paths, LabelledImages(images, labels, "blobs"), pre


def test_four_chunks_give_the_single_process_predictions_and_paired_tests(tiny_tflite):
    paths, data, pre = tiny_tflite
    one = {k: evaluate(open_predictor(p, "tflite", threads=os.cpu_count()), data, pre, "blobs", 32)
           for k, p in paths.items()}
    four = {k: evaluate_chunked(p, "tflite", data, pre, "blobs", 32, workers=4) for k, p in paths.items()}
    for k in paths:
        assert one[k].predictions.dtype == four[k].predictions.dtype
        assert one[k].predictions.tobytes() == four[k].predictions.tobytes(), k
        assert (one[k].top1, one[k].top5, one[k].n) == (four[k].top1, four[k].top5, four[k].n) == (one[k].top1, None, 301)

    def test(r):
        return paired_test(r["fp32"].predictions == data.labels, r["int8"].predictions == data.labels)

    assert test(one) == test(four)


def test_a_run_with_evaluate_workers_stores_the_single_process_predictions(tiny_project, tiny_run, tmp_path):
    """`evaluate.workers: 2` in a run config: the pipeline evaluates each artifact file in 2 chunks and keeps the
    predictions the one-process run (the session's tiny run) kept."""
    import json

    from conftest import make_config, run_edgeq

    cfg = make_config(tmp_path, tiny_project, evaluate={"workers": 2, "batch_size": 8},
                      benchmark={"enabled": False})
    r = run_edgeq("run", cfg, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    chunked = {e["artifact"]: e for e in results["evaluations"].values()}
    assert chunked["int8_tflite_ptq"]["predictor"]["workers"] == 2
    assert "workers" not in chunked["fp32_keras"]["predictor"]  # the Keras model evaluates in-process
    for name in ("fp32_tflite", "int8_tflite_ptq"):
        with np.load(tmp_path / "run" / "eval" / f"{name}.npz") as a, np.load(tiny_run[0] / "eval" / f"{name}.npz") as b:
            assert a["predictions"].tobytes() == b["predictions"].tobytes(), name


def test_the_chance_warning_reads_the_fp32_export_when_the_keras_model_is_not_evaluated(tmp_path):
    """evaluate.keras_baseline: false (models/resnet50.yaml) must not silence the wrong-labels warning."""
    from types import SimpleNamespace

    from edgeq.core.results import Evaluation, Results
    from edgeq.measure.evaluate import warn_if_chance

    fp32 = [SimpleNamespace(name="fp32_keras", precision="fp32"), SimpleNamespace(name="fp32_tflite", precision="fp32"),
            SimpleNamespace(name="int16x8_tflite", precision="int16x8")]
    results = Results(tmp_path / "results.json")
    results.evaluations["a:f"] = Evaluation("fp32_tflite", 0.11, None, 1000, "d", 1.0, "eval/fp32_tflite.npz")
    results.evaluations["b:f"] = Evaluation("int16x8_tflite", 0.9, None, 500, "d", 1.0, "eval/x.npz",
                                            subset={"images": 500, "of": 1000, "seed": 0})
    logged = []
    ctx = SimpleNamespace(cfg=SimpleNamespace(model=SimpleNamespace(num_classes=10)), fp32=fp32[0], results=results,
                          manifest=SimpleNamespace(artifacts={a.name: a for a in fp32}), log=logged.append)
    warn_if_chance(ctx)
    assert logged and "FP32 model's top-1 is 0.1100, near chance for 10 classes" in logged[0]
