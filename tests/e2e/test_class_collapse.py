"""A class collapse inside a small overall drop is caught: a small Fashion-MNIST classifier (trained here on the
shipped sample) whose INT8 version is broken for one class on purpose goes through `edgeq run` (tflite_ptq); the
report names the class with its paired test, and `max_class_drop` makes what-to-ship refuse the artifact that the
overall budget alone would let through."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_config, run_edgeq

pytestmark = pytest.mark.slow  # trains a small CNN and runs `edgeq run` once: ~20 s idle, ~35 s on a loaded 2-core host

SHIRT = 6  # Fashion-MNIST's 'shirt'
OVERALL_BUDGET, CLASS_BUDGET = 5.0, 10.0


def build_class_broken_classifier(path, broken: int = SHIRT, seed: int = 0) -> None:
    """A small CNN trained on the shipped Fashion-MNIST sample whose FP32 outputs are unchanged but whose INT8 version
    never predicts class `broken`.

    The class's logit leaves the final Dense scaled by 1e-3 and offset, and a per-channel (depthwise 1x1) layer scales
    it back: exact in float, but the Dense output is one per-tensor INT8 tensor whose step (set by the other classes'
    logits) is far coarser than that class's scaled logit, so after full-integer quantisation it rounds to one value
    and the class's logit becomes a constant -30: it never wins.
    """
    import edgeq  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
    from edgeq.core.data import SHIPPED_SAMPLE
    from edgeq.core.tfcompat import keras, set_seed

    with np.load(SHIPPED_SAMPLE, allow_pickle=False) as z:
        x = (z["train_images"][..., None].astype(np.float32) - 127.5) / 127.5
        y = z["train_labels"]
    set_seed(seed)
    k = keras()
    inp = k.Input((28, 28, 1))
    h = k.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    h = k.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    h = k.layers.Dense(32, activation="relu")(h)
    h = k.layers.Dense(10, name="logits")(h)
    h = k.layers.Reshape((1, 1, 10))(h)
    h = k.layers.DepthwiseConv2D(1, name="per_class_scale", trainable=False, depthwise_initializer="ones")(h)
    out = k.layers.Softmax()(k.layers.Reshape((10,))(h))
    m = k.Model(inp, out, name="class_broken")
    m.compile(k.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=8, batch_size=64, verbose=0)
    eps, offset = 1e-3, 30.0
    w, b = m.get_layer("logits").get_weights()
    w[:, broken] *= eps
    b[broken] = (b[broken] + offset) * eps
    m.get_layer("logits").set_weights([w, b])
    dw, db = m.get_layer("per_class_scale").get_weights()
    dw[..., broken, 0] = 1 / eps
    db[broken] = -offset
    m.get_layer("per_class_scale").set_weights([dw, db])
    m.save(path)


@pytest.fixture(scope="module")
def collapsed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("collapse")
    build_class_broken_classifier(root / "broken.keras")
    cfg = make_config(root, "mobilenet_v2", stages={"tflite_ptq": {"representative_images": 300}},
                      name="class_broken", max_accuracy_drop=OVERALL_BUDGET, max_class_drop=CLASS_BUDGET,
                      model={"path": str(root / "broken.keras"), "input_shape": [28, 28, 1], "family": "custom"},
                      data={"calibration_size": 300, "prefer_full_dataset": False},
                      benchmark={"rounds": 6, "runs": 20, "warmup": 2})
    proc = run_edgeq("run", cfg, "--out", root / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((root / "run" / "report.json").read_text())
    return rep, (root / "run" / "report.md").read_text()


def _int8(rep: dict) -> dict:
    return next(a for a in rep["artifacts"] if a["name"] == "int8_tflite_ptq")


def test_the_broken_class_is_lost_in_int8_while_overall_top1_is_within_the_budget(collapsed_run):
    rep, _ = collapsed_run
    v = _int8(rep)["vs_fp32"]
    assert v["n"] == 1000 and v["reference"] == "fp32_tflite"
    assert v["drop_ci95_pt"][1] <= OVERALL_BUDGET  # the overall paired test alone would ship it
    shirt = next(c for c in v["per_class"]["classes"] if c["class"] == "shirt")
    assert shirt["recall_fp32"] > 0.3 and shirt["recall"] == 0.0
    assert shirt["p_holm"] < 0.001 and shirt["drop_ci95_pt"][0] > CLASS_BUDGET
    others = [c for c in v["per_class"]["classes"] if c["class"] != "shirt"]
    assert all(c["p_holm"] >= 0.05 or c["drop_pt"] < 0 for c in others)


def test_the_report_names_the_class_with_its_paired_test(collapsed_run):
    rep, md = collapsed_run
    v = _int8(rep)["vs_fp32"]
    assert len(v["per_class"]["collapsed"]) == 1 and v["per_class"]["collapsed"][0].startswith("class 'shirt' -")
    assert "Holm, 10 classes" in v["verdict"]
    assert "## Per class" in md and "**int8_tflite_ptq**: class 'shirt'" in md
    assert v["mcnemar_holm"] == {"p": v["mcnemar"]["p"], "comparisons": 1}  # one INT8 artifact against FP32
    assert "after Holm's correction across the 1 artifact compared with FP32" in md and "McNemar p (Holm)" in md


def test_max_class_drop_makes_what_to_ship_refuse_the_artifact(collapsed_run):
    rep, md = collapsed_run
    v = _int8(rep)["vs_fp32"]
    assert v["within_budget"] is False and "max_class_drop" in v["verdict"]
    assert rep["ship"]["host"]["artifact"] != "int8_tflite_ptq"
    shipped = next(a for a in rep["artifacts"] if a["name"] == rep["ship"]["host"]["artifact"])
    if _int8(rep)["latency_ms"]["host"]["median"] < shipped["latency_ms"]["host"]["median"]:  # refused though faster
        assert ("int8_tflite_ptq is faster" in rep["ship"]["host"]["why"]
                and "but over the per-class budget (max_class_drop): class 'shirt'" in rep["ship"]["host"]["why"])
    assert "int8_tflite_ptq" not in md.split("## What to ship", 1)[1].split("\n## ", 1)[0].split("—")[0]
