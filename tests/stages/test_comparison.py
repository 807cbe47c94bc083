"""The PTQ-vs-QAT table's FP32 figure when the Keras model is not evaluated (evaluate.keras_baseline: false, as in
models/resnet50.yaml): it comes from the FP32 .tflite's predictions, the table's FP32 artifact, on the same images."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def test_the_fp32_row_reads_the_fp32_tflite_when_the_keras_model_is_not_evaluated(tmp_path):
    from edgeq.core.config import ComparisonSpec
    from edgeq.core.results import Evaluation
    from edgeq.stages.comparison import _fp32_top1

    labels = np.arange(100) % 10
    pred = labels.copy()
    pred[:7] = (pred[:7] + 1) % 10  # wrong on 7 of the first 50
    (tmp_path / "eval").mkdir()
    np.savez(tmp_path / "eval" / "fp32_tflite.npz", predictions=pred)
    keras = SimpleNamespace(name="fp32_keras", format="keras", precision="fp32", sha256="k")
    tflite = SimpleNamespace(name="fp32_tflite", format="tflite", precision="fp32", sha256="t")
    evals = {"t": Evaluation("fp32_tflite", 0.93, None, 100, "d", 1.0, "eval/fp32_tflite.npz")}
    ctx = SimpleNamespace(run_dir=tmp_path, fp32=keras, cfg=SimpleNamespace(evaluate=SimpleNamespace(enabled=True)),
                          manifest=SimpleNamespace(artifacts={"fp32_keras": keras, "fp32_tflite": tflite}),
                          results=SimpleNamespace(evaluation=lambda sha, fp: evals.get(sha)),
                          splits=SimpleNamespace(eval=SimpleNamespace(labels=labels, fingerprint=lambda: "f")))
    assert _fp32_top1(ctx, ComparisonSpec(eval_images=50), np.arange(50)) == round(43 / 50, 5)
