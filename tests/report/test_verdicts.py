"""Verdicts follow from paired tests and the budget: drops against FP32, PTQ vs QAT, what to ship."""
from __future__ import annotations

import numpy as np
import pytest

from edgeq.core.stats import paired_test
from edgeq.report.verdicts import budget_status, drop_verdict, int8_method_tests, ship, vs_reference


def _pair(n: int, b: int, c: int, base_wrong: int = 0):
    """Reference/candidate right-or-wrong arrays with b images lost and c gained by the candidate."""
    ref = np.ones(n, bool)
    cand = np.ones(n, bool)
    ref[:base_wrong] = cand[:base_wrong] = False
    cand[base_wrong:base_wrong + b] = False
    ref[base_wrong + b:base_wrong + b + c] = False
    return ref, cand


def test_a_large_real_loss_is_significant_and_over_budget():
    ref, cand = _pair(10000, 200, 20)
    v = vs_reference("fp32", ref, cand, budget_pt=1.0)
    assert v["mcnemar"] == {"b": 200, "c": 20, "p": pytest.approx(0, abs=1e-30)}
    assert v["drop_pt"] == pytest.approx(1.8) and v["drop_ci95_pt"][0] > 1.0
    assert v["within_budget"] is False and v["verdict"].startswith("significant loss of 1.80 pt")
    assert "over the 1 pt budget" in v["verdict"]


def test_a_small_drop_on_few_images_is_not_significant_and_says_how_many_images_would_decide():
    ref, cand = _pair(1000, 8, 2)
    v = vs_reference("fp32", ref, cand, budget_pt=0.5)
    assert v["mcnemar"]["p"] > 0.05 and v["within_budget"] is None
    assert v["verdict"].startswith("no significant loss") and "too few" in v["verdict"]
    assert v["images_to_decide"] > 1000 and f"{v['images_to_decide']:,}" in v["verdict"]


def test_no_discordant_pairs_is_within_any_reasonable_budget():
    ref, cand = _pair(10000, 0, 0, base_wrong=1000)
    t = paired_test(ref, cand)
    assert t.p == 1.0 and budget_status(t, 1.0) is True
    assert "within the 1 pt budget" in drop_verdict(t, 1.0)


def test_a_significant_gain_is_called_a_gain():
    ref, cand = _pair(10000, 10, 80)
    assert drop_verdict(paired_test(ref, cand), 1.0).startswith("significant gain of 0.70 pt")


def _entry(name, fmt, precision, method, median, ratio=None, vs=None, top1=0.9):
    lat = {"median": median, "median_ci95": [median * 0.98, median * 1.02], "noisy": False,
           "ratio_to_fp32": ratio}
    e = {"name": name, "format": fmt, "precision": precision, "method": method, "accuracy": {"top1": top1},
         "latency_ms": {"host": lat}}
    if vs is not None:
        e["vs_fp32"] = vs
    return e


def _vs(within: bool | None, drop=0.1):
    return {"reference": "fp32_tflite", "drop_pt": drop, "drop_ci95_pt": [drop - 0.3, drop + 0.3],
            "mcnemar": {"b": 10, "c": 8, "p": 0.8}, "within_budget": within,
            "images_to_decide": 40000 if within is None else None}


def test_ship_names_the_fastest_artifact_within_the_budget():
    entries = [_entry("fp32_tflite", "tflite", "fp32", "none", 1.0),
               _entry("int8_tflite_ptq", "tflite", "int8", "ptq", 0.4, {"value": 0.4, "ci95": [0.39, 0.41],
                                                                         "reference": "fp32_tflite"}, _vs(True)),
               _entry("int8_tflite_bad", "tflite", "int8", "ptq", 0.3, None, _vs(False, 3.0))]
    s = ship(entries, "host", 1.0)
    assert s["artifact"] == "int8_tflite_ptq"
    assert "0.40x fp32_tflite" in s["why"] and "int8_tflite_bad is faster" in s["why"] and "over the budget" in s["why"]


def test_ship_keeps_fp32_where_int8_is_slower_on_this_cpu():
    entries = [_entry("fp32_tflite", "tflite", "fp32", "none", 0.31),
               _entry("int8_tflite_ptq", "tflite", "int8", "ptq", 0.45, None, _vs(True))]
    s = ship(entries, "host", 1.0)
    assert s["artifact"] == "fp32_tflite" and "every INT8 artifact within the budget is slower" in s["why"]


def test_ship_does_not_take_an_int8_artifact_whose_budget_question_is_undecided():
    entries = [_entry("fp32_tflite", "tflite", "fp32", "none", 1.0),
               _entry("int8_tflite_ptq", "tflite", "int8", "ptq", 0.4, None, _vs(None))]
    s = ship(entries, "host", 1.0)
    assert s["artifact"] == "fp32_tflite" and "40,000 images would decide" in s["why"]


def test_method_verdict_covers_every_int8_format_and_cites_p_values():
    n = 2000
    fp32 = np.ones(n, bool)
    fp32[:100] = False
    ptq_tfl, qat_tfl, ptq_onnx, qat_onnx = (fp32.copy() for _ in range(4))
    ptq_tfl[100:160] = False  # TFLite PTQ loses 3 pt
    qat_tfl[100:105] = False  # QAT recovers nearly all of it
    ptq_onnx[100:102] = False
    correct = {"fp32_tflite": fp32, "fp32_onnx": fp32, "int8_tflite_ptq": ptq_tfl, "int8_tflite_qat": qat_tfl,
               "int8_onnx_ptq": ptq_onnx, "int8_onnx_qat": qat_onnx}
    entries = []
    for name, arr in correct.items():
        fmt = "tflite" if "tflite" in name else "onnx"
        prec = "fp32" if name.startswith("fp32") else "int8"
        e = {"name": name, "format": fmt, "precision": prec, "method": "none" if prec == "fp32" else name.split("_")[-1],
             "accuracy": {"top1": float(arr.mean())}}
        if prec == "int8":
            e["vs_fp32"] = vs_reference(f"fp32_{fmt}", fp32, arr, 1.0)
        entries.append(e)
    tests, lines = int8_method_tests(entries, correct, 1.0)
    assert [t["format"] for t in tests] == ["onnx", "tflite"]
    onnx, tfl = lines
    assert onnx.startswith("ONNX INT8: PTQ (int8_onnx_ptq) no significant loss") and "QAT not needed" in onnx
    assert "p = " in onnx and "p < 0.001" in tfl
    assert "over the 1 pt budget" in tfl and "QAT needed: int8_tflite_qat is within the budget" in tfl
    assert "QAT (int8_tflite_qat) vs PTQ: better by 2.75 pt" in tfl


def test_tensorrt_artifacts_are_paired_among_themselves_qat_with_ptq_on_the_same_scheme():
    """int8_onnx_qat_trt is compared with int8_onnx_trt (both made for jetson only), never with the host pair,
    and the host pair stays int8_onnx_qat vs int8_onnx_ptq."""
    n = 1000
    fp32 = np.ones(n, bool)
    host_ptq, host_qat, trt_ptq, trt_qat = (fp32.copy() for _ in range(4))
    trt_ptq[:40] = False  # the TensorRT PTQ loses 4 pt, its QAT 1 pt
    trt_qat[:10] = False
    correct = {"fp32_onnx": fp32, "int8_onnx_ptq": host_ptq, "int8_onnx_qat": host_qat, "int8_onnx_trt": trt_ptq,
               "int8_onnx_qat_trt": trt_qat}
    jetson = {"only_for": {"kinds": ["jetson"], "why": "TensorRT"}}
    entries = [{"name": "fp32_onnx", "format": "onnx", "precision": "fp32", "method": "none",
                "accuracy": {"top1": 1.0}}]
    for name, method, notes in (("int8_onnx_ptq", "ptq", {}), ("int8_onnx_qat", "qat", {}),
                                ("int8_onnx_trt", "ptq", jetson), ("int8_onnx_qat_trt", "qat", jetson)):
        entries.append({"name": name, "format": "onnx", "precision": "int8", "method": method, "notes": notes,
                        "accuracy": {"top1": float(correct[name].mean())},
                        "vs_fp32": vs_reference("fp32_onnx", fp32, correct[name], 1.0)})
    tests, lines = int8_method_tests(entries, correct, 1.0)
    assert [(t["ptq"], t["qat"], t.get("made_for")) for t in tests] == [
        ("int8_onnx_ptq", "int8_onnx_qat", None), ("int8_onnx_trt", "int8_onnx_qat_trt", "jetson")]
    assert "made_for" not in tests[0]
    assert lines[1].startswith("ONNX INT8 for jetson: PTQ (int8_onnx_trt)")
    assert "QAT (int8_onnx_qat_trt) vs PTQ: better by 3.00 pt" in lines[1]


# ------------------------------------------------------------------ the referee across toolchains
def _route(name, stage, fmt, median, ci, within=True, precision="int8"):
    return {"name": name, "stage": stage, "format": fmt, "precision": precision, "method": "ptq",
            "accuracy": {"top1": 0.9},
            "vs_fp32": {"within_budget": within, "drop_pt": 0.1, "drop_ci95_pt": [-0.1, 0.3]},
            "latency_ms": {"host": {"median": median, "median_ci95": ci}}}


def test_referee_ranks_each_toolchains_best_route_and_names_ties():
    from edgeq.report.verdicts import referee

    entries = [_route("int8_tflite_ptq", "tflite_ptq", "tflite", 0.21, [0.20, 0.22]),
               _route("int8_tflite_lq", "litert_quant", "tflite", 0.215, [0.21, 0.23]),
               _route("int8_openvino_nncf", "nncf_ptq", "openvino", 0.30, [0.29, 0.31]),
               _route("int8_onnx_nncf", "nncf_ptq", "onnx", 2.8, [2.7, 2.9]),
               _route("int8_onnx_ptq", "onnx_ptq", "onnx", 0.50, [0.48, 0.52], within=False),  # over budget: out
               _route("fp32_tflite", "tflite_export", "tflite", 0.3, [0.29, 0.31], precision="fp32")]
    r = referee(entries, "host", 1.0)
    names = [x["artifact"] for x in r["routes"]]
    assert names == ["int8_tflite_ptq", "int8_tflite_lq", "int8_openvino_nncf", "int8_onnx_nncf"]
    by = {x["artifact"]: x for x in r["routes"]}
    assert by["int8_tflite_lq"]["indistinguishable_from_best"] and not by["int8_openvino_nncf"]["indistinguishable_from_best"]
    assert by["int8_onnx_nncf"]["x_best"] == pytest.approx(2.8 / 0.21, rel=1e-3)
    assert "TFLite converter on LiteRT (int8_tflite_ptq) is the fastest" in r["verdict"]
    assert "indistinguishable from it: LiteRT Quantizer on LiteRT" in r["verdict"]
    assert "NNCF on ONNX Runtime 13.33x" in r["verdict"]


def test_referee_judges_an_artifact_also_timed_on_another_runtime_as_a_route_of_that_runtime():
    """NNCF's QDQ ONNX timed on ORT and on OpenVINO: two candidates, each named by runtime and format, beside NNCF's
    IR on OpenVINO; the fastest of them wins whatever runtime its format calls its own."""
    from edgeq.report.verdicts import referee

    qdq = _route("int8_onnx_nncf", "nncf_ptq", "onnx", 2.8, [2.7, 2.9])
    qdq["latency_ms_other_runtimes"] = {"openvino": {"host": {"median": 0.25, "median_ci95": [0.24, 0.26],
                                                              "runtime": "openvino 2026.4.1 (CPU, precision=f32)"}}}
    entries = [qdq, _route("int8_openvino_nncf", "nncf_ptq", "openvino", 0.30, [0.29, 0.31]),
               _route("int8_tflite_ptq", "tflite_ptq", "tflite", 0.40, [0.39, 0.41])]
    r = referee(entries, "host", 1.0)
    got = [(x["artifact"], x["runtime"], x["format"]) for x in r["routes"]]
    assert got == [("int8_onnx_nncf", "OpenVINO", "onnx"), ("int8_openvino_nncf", "OpenVINO", "openvino"),
                   ("int8_tflite_ptq", "LiteRT", "tflite"), ("int8_onnx_nncf", "ONNX Runtime", "onnx")]
    assert r["routes"][0]["runtime_version"].startswith("openvino 2026")
    assert r["verdict"].startswith("on host, NNCF onnx on OpenVINO (int8_onnx_nncf) is the fastest route")
    assert "NNCF openvino on OpenVINO 1.20x" in r["verdict"] and "NNCF on ONNX Runtime 11.20x" in r["verdict"]


def test_what_to_ship_can_be_an_artifact_on_a_runtime_other_than_its_formats_own():
    from edgeq.report.verdicts import ship

    qdq = _route("int8_onnx_nncf", "nncf_ptq", "onnx", 2.8, [2.7, 2.9])
    qdq["latency_ms_other_runtimes"] = {"openvino": {"host": {"median": 0.25, "median_ci95": [0.24, 0.26],
                                                              "runtime": "openvino 2026.4.1 (CPU, precision=f32)"}}}
    entries = [qdq, _route("int8_tflite_ptq", "tflite_ptq", "tflite", 0.40, [0.39, 0.41])]
    for e in entries:
        e["vs_fp32"]["mcnemar"] = {"p": 0.5}
    s = ship(entries, "host", 1.0)
    assert s["artifact"] == "int8_onnx_nncf" and s["runtime"] == "openvino", s
    assert s["why"].startswith("on OpenVINO, not its format's own ONNX Runtime: fastest within the 1 pt budget: "
                               "median 0.25 ms [0.24, 0.26] (openvino 2026.4.1")
    qdq["latency_ms_other_runtimes"]["openvino"]["host"].update(median=0.5, median_ci95=[0.49, 0.51])
    assert ship(entries, "host", 1.0) == {"artifact": "int8_tflite_ptq", "why": ship(entries, "host", 1.0)["why"]}


# ------------------------------------------------------------------ a class that collapses inside a small overall drop
def test_a_collapsed_class_is_named_and_max_class_drop_takes_the_artifact_out_of_the_budget():
    from edgeq.report.verdicts import ship, vs_reference

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 300)
    ref = rng.random(labels.size) < 0.92
    cand = ref.copy()
    cand[np.flatnonzero((labels == 6) & ref)[:45]] = False  # 'shirt' loses 45 of ~276: 1.5 pt overall
    names = [f"c{i}" for i in range(10)]
    names[6] = "shirt"
    loose = vs_reference("fp32", ref, cand, 2.0, labels=labels, class_names=names)
    assert loose["within_budget"] is True  # 1.5 pt overall, interval inside the 2 pt budget
    assert "class 'shirt' -15.0 pt" in loose["verdict"] and "Holm, 10 classes" in loose["verdict"]
    shirt = next(c for c in loose["per_class"]["classes"] if c["class"] == "shirt")
    assert shirt["drop_pt"] == pytest.approx(15.0) and shirt["p_holm"] < 1e-6
    strict = vs_reference("fp32", ref, cand, 2.0, labels=labels, class_names=names, max_class_drop=5.0)
    assert strict["within_budget"] is False and "max_class_drop" in strict["verdict"]

    def entry(name, precision, vs, median):
        return {"name": name, "format": "tflite", "precision": precision, "method": "ptq", "stage": "s",
                "accuracy": {"top1": 0.9}, "latency_ms": {"host": {"median": median, "median_ci95": [median, median]}},
                **({"vs_fp32": vs} if vs else {})}
    shipped = ship([entry("fp32", "fp32", None, 1.0), entry("int8", "int8", loose, 0.5)], "host", 2.0)
    assert shipped["artifact"] == "int8" and "but class 'shirt' -15.0 pt" in shipped["why"]  # named in the ship line
    refused = ship([entry("fp32", "fp32", None, 1.0), entry("int8", "int8", strict, 0.5)], "host", 2.0)
    assert refused["artifact"] == "fp32"
    assert "int8 is faster (0.5 ms) but over the per-class budget (max_class_drop): class 'shirt'" in refused["why"]


# ------------------------------------------------------------------ significance across the artifacts of one run
def _vs_p(p: float) -> dict:
    return {"drop_pt": 1.0, "drop_ci95_pt": [0.2, 1.8], "mcnemar": {"b": 30, "c": 10, "p": p}}


def test_the_significance_markers_are_holm_adjusted_across_the_artifacts_of_a_run():
    from edgeq.report.build import artifact_cells, significance_legend
    from edgeq.report.verdicts import holm_across_artifacts

    vs = {"a": _vs_p(0.01), "b": _vs_p(0.04), "c": _vs_p(0.03)}
    holm_across_artifacts(vs)
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04): only "a" stays significant
    assert {n: v["mcnemar_holm"] for n, v in vs.items()} == {
        "a": {"p": 0.03, "comparisons": 3}, "b": {"p": 0.06, "comparisons": 3}, "c": {"p": 0.06, "comparisons": 3}}
    assert vs["b"]["mcnemar"]["p"] == 0.04  # the unadjusted p is kept
    arts = [{"name": n, "format": "tflite", "precision": "int8", "method": "ptq", "size_bytes": 1000,
             "accuracy": {"top1": 0.9, "ci95": [0.88, 0.92], "n": 1000}, "latency_ms": {}, "vs_fp32": v}
            for n, v in vs.items()]
    rep = {"artifacts": arts, "checks": {}}
    cells = {e["name"]: artifact_cells(rep, e) for e in arts}
    assert cells["a"]["drop pt [CI]"].endswith("*") and cells["a"]["McNemar p (Holm)"] == "0.03"
    assert not cells["b"]["drop pt [CI]"].endswith("*") and cells["b"]["McNemar p (Holm)"] == "0.06"
    assert "Holm's correction across the 3 artifacts compared with FP32" in significance_legend(rep)
