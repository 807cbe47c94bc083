"""stages.precision: FP16, dynamic-range INT8 and 16x8 TFLite and INT16-activation QDQ ONNX are real artifacts,
each with the tensor types its name promises (read back from the file), evaluated, paired against the FP32 of its
format and host-timed like every other artifact; a precision CPUs run on reference kernels carries the note and is
not what the host ships.

One real run of a small CNN (the conftest tiny CNN with a wider convolution, so dynamic-range quantization, which
leaves tensors under 1,024 weights float, has a kernel to quantize) on a generated image folder.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import _colour_image, write_image_folder


def _wide_cnn(classes: int = 3, size: int = 16, seed: int = 0):
    import edgeq  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
    from edgeq.core.tfcompat import keras, set_seed

    set_seed(seed)
    k = keras()
    inp = k.Input((size, size, 3))
    x = k.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.ReLU()(x)
    x = k.layers.Conv2D(48, 3, padding="same")(x)  # 3,456 weights: over the dynamic-range threshold
    x = k.layers.ReLU(6.0)(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    m = k.Model(inp, k.layers.Dense(classes, activation="softmax")(x), name="wide_cnn")
    rng = np.random.default_rng(seed)
    X = np.stack([_colour_image(rng, i % classes, size) for i in range(300)])
    m.compile(k.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    m.fit((X.astype(np.float32) - 127.5) / 127.5, np.arange(300) % classes, epochs=4, batch_size=32, verbose=0)
    return m


def _config(root, **stages):
    from edgeq.core.config import config_from_dict

    return config_from_dict({
        "name": "wide", "model": {"path": "wide.keras", "input_shape": [16, 16, 3], "num_classes": 3},
        "data": {"kind": "image_folder", "path": "images", "calibration_size": 40},
        "stages": {"tflite_ptq": {"representative_images": 40}, **stages},
        "benchmark": {"runs": 10, "warmup": 2, "rounds": 6}}, base_dir=root)


@pytest.fixture(scope="module")
def precision_run(tmp_path_factory):
    from edgeq.run.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("precision")
    _wide_cnn().save(root / "wide.keras")
    write_image_folder(root / "images", 160)  # 60 evaluation images: int16x8 on 50 of them
    cfg = _config(root, onnx_ptq={"enabled": True, "calibration_images": 40, "tensorrt_artifact": False},
                  precision={"enabled": True, "eval_images": {"int16x8": 50, "int16": None}})
    cfg.benchmark.max_round_seconds = 1e-6  # every round over the cap: each artifact at min_runs (5) a round
    run_dir = run_pipeline(cfg, root / "run", log=lambda m: None)
    manifest = {a["name"]: a for a in json.loads((run_dir / "manifest.json").read_text())["artifacts"]}
    report = json.loads((run_dir / "report.json").read_text())
    return run_dir, manifest, report


def _ops(path):
    """[(op name, input dtypes, output dtypes)] of a .tflite file, from LiteRT's own reading of it."""
    from edgeq.measure.predictors import load_tflite_interpreter

    interp, _ = load_tflite_interpreter(content=path.read_bytes())
    dtype = {t["index"]: np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    return [(op["op_name"], [dtype[i] for i in op["inputs"] if i >= 0], [dtype[i] for i in op["outputs"]])
            for op in interp._get_ops_details()]


def test_fp16_tflite_stores_fp16_weights_and_computes_in_float(precision_run):
    run_dir, manifest, _ = precision_run
    a = manifest["fp16_tflite"]
    assert (a["precision"], a["method"], a["stage"]) == ("fp16", "cast", "precision")
    ops = _ops(run_dir / a["path"])
    deq = [o for o in ops if o[0] == "DEQUANTIZE"]
    assert deq and all(i == ["float16"] and out == ["float32"] for _, i, out in deq)  # fp16 weights, widened
    convs = [o for o in ops if o[0] == "CONV_2D"]
    assert convs and all(set(i) == {"float32"} and out == ["float32"] for _, i, out in convs)


def test_dynamic_tflite_has_int8_weights_and_float_activations(precision_run):
    run_dir, manifest, _ = precision_run
    a = manifest["dynamic_tflite"]
    assert a["precision"] == "int8-dynamic"
    convs = [o for o in _ops(run_dir / a["path"]) if o[0] == "CONV_2D"]
    assert any(i[:2] == ["float32", "int8"] for _, i, _ in convs)  # float activation in, int8 kernel
    assert all(out == ["float32"] for _, _, out in convs)


def test_int16x8_tflite_has_int16_activations_and_int8_weights(precision_run):
    run_dir, manifest, _ = precision_run
    a = manifest["int16x8_tflite"]
    assert (a["precision"], a["params"]["representative_images"]) == ("int16x8", 40)  # the INT8 TFLite's images
    convs = [o for o in _ops(run_dir / a["path"]) if o[0] == "CONV_2D"]
    assert convs and all(i[0] == "int16" and i[1] == "int8" and out == ["int16"] for _, i, out in convs)


def test_int16_onnx_has_int16_activations_and_int8_weights(precision_run):
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype as np_type

    run_dir, manifest, _ = precision_run
    a = manifest["int16_onnx"]
    model = onnx.load(str(run_dir / a["path"]))
    inits = {i.name: np_type(i.data_type).name for i in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq_of_weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert q and {inits[n.input[2]] for n in q} == {"int16"}  # activation zero-points: int16
    assert "int8" in {inits[n.input[0]] for n in dq_of_weights}
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21


@pytest.mark.parametrize("name,reference", [("fp16_tflite", "fp32_tflite"), ("dynamic_tflite", "fp32_tflite"),
                                            ("int16x8_tflite", "fp32_tflite"), ("int16_onnx", "fp32_onnx")])
def test_each_variant_is_evaluated_paired_against_fp32_and_host_timed(precision_run, name, reference):
    _, _, report = precision_run
    e = next(e for e in report["artifacts"] if e["name"] == name)
    n = 50 if name == "int16x8_tflite" else report["dataset"]["n_eval"]  # int16x8 on a subset (eval_images)
    assert e["accuracy"]["top1"] is not None and e["accuracy"]["n"] == e["vs_fp32"]["n"] == n
    assert e["vs_fp32"]["reference"] == reference and e["vs_fp32"]["mcnemar"]["p"] is not None
    host = e["latency_ms"]["host"]
    assert host["median"] > 0 and host["median_ci95"] and host["ratio_to_fp32"]["reference"] == reference
    assert e["size_bytes"] > 0 and report["checks"][name]["size_ratio"] > 0


def test_16x8_carries_the_slow_kernel_note_and_is_not_shipped_on_the_host(precision_run):
    _, _, report = precision_run
    e = next(e for e in report["artifacts"] if e["name"] == "int16x8_tflite")
    assert e["notes"]["kernels"] == "reference (no XNNPACK int16x8 kernels): slow on CPUs"
    assert "XNNPACK" in e["notes"]["slow_kernels"]
    fp16 = next(e for e in report["artifacts"] if e["name"] == "fp16_tflite")
    assert "slow_kernels" not in fp16["notes"] and "dequantizes FP16 weights to FP32" in fp16["notes"]["kernels"]
    assert report["ship"]["host"]["artifact"] not in ("int16x8_tflite", "int16_onnx")
    assert report["precision"]["made"] == ["fp16_tflite", "dynamic_tflite", "int16x8_tflite", "int16_onnx"]


def test_int16_onnx_without_an_fp32_onnx_is_not_made_and_says_why(tmp_path):
    from edgeq.run.pipeline import run_pipeline

    _wide_cnn().save(tmp_path / "wide.keras")
    write_image_folder(tmp_path / "images", 60)
    cfg = _config(tmp_path, precision={"enabled": True, "tflite": [], "onnx": ["int16"]})
    cfg.evaluate.enabled = cfg.benchmark.enabled = False
    run_dir = run_pipeline(cfg, tmp_path / "run", log=lambda m: None)
    section = json.loads((run_dir / "report.json").read_text())["precision"]
    assert section["made"] == [] and "enable stages.onnx_ptq" in section["not_made"]["int16_onnx"]


def _entry(name, precision, median, within=True, slow=None):
    e = {"name": name, "format": "tflite", "precision": precision, "method": "ptq", "accuracy": {"top1": 0.9},
         "latency_ms": {"host": {"median": median, "median_ci95": [median * 0.99, median * 1.01]}}}
    if precision != "fp32":
        e["vs_fp32"] = {"reference": "fp32_tflite", "drop_pt": 0.1, "drop_ci95_pt": [-0.2, 0.4],
                        "mcnemar": {"b": 9, "c": 7, "p": 0.8}, "within_budget": within, "images_to_decide": None}
    if slow:
        e["notes"] = {"slow_kernels": slow}
    return e


def test_ship_passes_over_a_slow_kernel_precision_unless_it_is_the_only_one_within_the_budget():
    from edgeq.report.verdicts import ship

    slow = "LiteRT has no XNNPACK int16x8 kernels"
    entries = [_entry("fp32_tflite", "fp32", 1.0), _entry("int16x8_tflite", "int16x8", 0.5, slow=slow)]
    s = ship(entries, "host", 1.0)  # timed faster here (synthetic figures: the rule is under test), still passed over
    assert s["artifact"] == "fp32_tflite" and f"int16x8_tflite passed over: {slow}" in s["why"]
    alone = [_entry("int8_tflite_ptq", "int8", 0.3, within=False), _entry("int16x8_tflite", "int16x8", 0.5, slow=slow)]
    assert ship(alone, "host", 1.0)["artifact"] == "int16x8_tflite"


def test_more_representative_images_than_the_calibration_split_is_refused_before_the_run(tmp_path):
    from edgeq.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"stages.precision.representative_images is 80 but the calibration split "
                                          r"has 40 images"):
        _config(tmp_path, precision={"enabled": True, "representative_images": 80})


def test_an_onnx_input_gets_its_variants_from_the_translated_model_and_the_onnx_itself(precision_run, tmp_path):
    import shutil

    from edgeq.core.config import config_from_dict
    from edgeq.run.pipeline import run_pipeline

    run_dir, manifest, _ = precision_run
    shutil.copyfile(run_dir / manifest["fp32_onnx"]["path"], tmp_path / "wide.onnx")
    write_image_folder(tmp_path / "images", 60)
    cfg = config_from_dict({
        "name": "wide_onnx", "model": {"path": "wide.onnx", "input_shape": [16, 16, 3], "num_classes": 3},
        "data": {"kind": "image_folder", "path": "images", "calibration_size": 40},
        "stages": {"tflite_ptq": {"representative_images": 40},
                   "precision": {"enabled": True, "tflite": ["fp16"], "onnx": ["int16"]}},
        "benchmark": {"enabled": False}}, base_dir=tmp_path)
    rep = json.loads((run_pipeline(cfg, tmp_path / "run", log=lambda m: None) / "report.json").read_text())
    arts = {e["name"]: e for e in rep["artifacts"]}
    assert arts["fp16_tflite"]["vs_fp32"]["reference"] == "fp32_tflite"
    assert arts["int16_onnx"]["vs_fp32"]["reference"] == "fp32_onnx" and arts["int16_onnx"]["parent"] == "fp32_onnx"


def test_a_slow_variant_is_evaluated_and_paired_on_exactly_its_seeded_subset(precision_run):
    from edgeq.core.data import eval_subset

    run_dir, _, report = precision_run
    n_eval = report["dataset"]["n_eval"]
    e = next(e for e in report["artifacts"] if e["name"] == "int16x8_tflite")
    assert (e["accuracy"]["n"], e["accuracy"]["of"]) == (50, n_eval) and n_eval > 50
    assert e["accuracy"]["note"] == f"evaluated on 50 of {n_eval} images (a seeded subset)"
    with np.load(run_dir / "eval" / "int16x8_tflite.npz") as z, np.load(run_dir / "eval" / "fp32_tflite.npz") as f, \
            np.load(run_dir / "eval" / "labels.npz") as lab:
        idx, pred, ref, labels = z["indices"], z["predictions"], f["predictions"], lab["labels"]
    assert idx.tolist() == eval_subset(n_eval, 50, 0).tolist()  # the seeded subset, reproducible
    # the paired test counts discordant pairs on exactly those images, against FP32's predictions there
    ok, ref_ok = pred == labels[idx], ref[idx] == labels[idx]
    v = e["vs_fp32"]
    assert (v["mcnemar"]["b"], v["mcnemar"]["c"]) == (int((ref_ok & ~ok).sum()), int((~ref_ok & ok).sum()))
    assert v["of"] == n_eval and f"paired on 50 of {n_eval} images" in v["verdict"]
    assert report["checks"]["int16x8_tflite"]["top1_drop_points"] == v["drop_pt"]  # paired, not full vs subset
    assert e["accuracy"]["top1"] == round(float(ok.mean()), 5)
    assert e["agreement_with_fp32"]["top1_agreement"] == round(float((pred == ref[idx]).mean()), 5)
    assert report["precision"]["eval_images"] == {"int16x8_tflite": 50}
    assert f"50 of {n_eval}" in (run_dir / "report.md").read_text()
    assert f"n = 50 of {n_eval} (a seeded subset)" in (run_dir / "report.html").read_text()


def test_rounds_over_the_time_cap_get_fewer_runs_but_every_artifact_is_in_every_round(precision_run):
    _, _, report = precision_run
    host = report["conditions"]["host"]
    assert host["runs_per_round"] == 10 and host["max_round_seconds"] == 1e-6
    slow = next(e for e in report["artifacts"] if e["name"] == "int16x8_tflite")["latency_ms"]["host"]
    assert host["capped"]["int16x8_tflite"] == {"runs_per_round": 5, "warmup_per_round": 1}
    assert slow["runs"] == 5 * host["rounds"] and slow["warmup"] == 1 and slow["median_ci95"]
    assert slow["rounds"] == host["rounds"] and slow["ratio_to_fp32"]["rounds"] == host["rounds"]  # per-round ratios


def test_eval_images_below_50_is_refused_with_what_to_give(tmp_path):
    from edgeq.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eval_images.int16x8: 10 images are too few for a paired test"):
        _config(tmp_path, precision={"enabled": True, "eval_images": {"int16x8": 10}})


def _context(run_dir):
    """The RunContext of the precision run (its config rebuilt as the fixture made it)."""
    from edgeq.core.artifacts import Manifest
    from edgeq.run.inputs import load_splits, preprocess_of
    from edgeq.run.pipeline import RunContext

    cfg = _config(run_dir.parent, onnx_ptq={"enabled": True, "calibration_images": 40, "tensorrt_artifact": False},
                  precision={"enabled": True, "eval_images": {"int16x8": 50, "int16": None}})
    header = {k: v for k, v in json.loads((run_dir / "manifest.json").read_text()).items() if k != "artifacts"}
    pre = preprocess_of(cfg)
    return RunContext(cfg, run_dir, Manifest(run_dir, header), pre, load_splits(cfg, pre), lambda m: None)


def test_the_comparison_table_gains_an_fp16_row_from_the_evaluated_artifact(precision_run):
    from edgeq.report.sections import comparison_markdown
    from edgeq.stages.comparison import _other_precision_rows

    run_dir, _, report = precision_run
    arts = {e["name"]: e for e in report["artifacts"]}
    n = report["dataset"]["n_eval"]
    fp32 = arts["fp32_tflite"]["accuracy"]["top1"]
    rows = _other_precision_rows(_context(run_dir), np.arange(n), fp32)
    assert [(r["label"], r["artifact"], r["bits"], r["method"]) for r in rows] == [("FP16", "fp16_tflite", 16,
                                                                                    "ptq_naive")]
    fp16 = arts["fp16_tflite"]
    assert rows[0]["top1"] == fp16["accuracy"]["top1"] and rows[0]["size_bytes"] == fp16["size_bytes"]
    assert rows[0]["drop"] == round((fp32 - fp16["accuracy"]["top1"]) * 100, 3)
    mixed = {**rows[0], "bits": None, "label": "mixed INT4/INT8", "method": "ptq_advanced", "artifact": "mixed_tflite",
             "how": "stages.mixed_precision", "top1": 0.5, "drop": 12.5, "size_bytes": 4000}  # rendering only
    section = {"rows": [{"bits": 32, "method": "fp32", "top1": fp32, "drop": 0.0, "size_bytes": 1}, *rows, mixed],
               "eval_images": n, "advanced_ptq": "-", "verdict_lines": []}
    md = comparison_markdown(section)
    fp16_line = next(ln for ln in md.splitlines() if ln.startswith("| FP16 |"))
    assert f"{fp16['accuracy']['top1'] * 100:.2f} %" in fp16_line
    assert next(ln for ln in md.splitlines() if ln.startswith("| mixed INT4/INT8 |")).count("50.00 % (-12.50") == 1
    assert "FP16 = fp16_tflite (stages.precision: FP16 weights, a cast)" in md


def test_fp16_gets_a_paired_verdict_line_in_the_comparison(precision_run):
    from edgeq.report.verdicts import other_precision_lines

    _, _, report = precision_run
    lines = other_precision_lines(report["artifacts"])
    fp16 = next(e for e in report["artifacts"] if e["name"] == "fp16_tflite")
    assert lines == [f"FP16 (fp16_tflite): {fp16['vs_fp32']['verdict']}"]


def test_keras_baseline_false_still_evaluates_the_keras_model_an_artifact_is_judged_against(tmp_path):
    """No FP32 .tflite in this run (tflite_ptq off): fp16_tflite's reference is the Keras model, so it is evaluated
    although evaluate.keras_baseline is false; with an FP32 .tflite it would be skipped (models/resnet50.yaml)."""
    from edgeq.run.pipeline import run_pipeline

    _wide_cnn().save(tmp_path / "wide.keras")
    write_image_folder(tmp_path / "images", 100)
    cfg = _config(tmp_path, tflite_ptq={"enabled": False, "representative_images": 40}, precision={"enabled": True, "tflite": ["fp16"], "onnx": []})
    cfg.evaluate.keras_baseline = cfg.benchmark.enabled = False
    rep = json.loads((run_pipeline(cfg, tmp_path / "run", log=lambda m: None) / "report.json").read_text())
    arts = {e["name"]: e for e in rep["artifacts"]}
    assert arts["fp32_keras"]["accuracy"]["top1"] is not None
    assert arts["fp16_tflite"]["vs_fp32"]["reference"] == "fp32_keras"
