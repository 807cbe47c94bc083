"""Verdicts that follow from the measurements: accuracy against FP32 and the budget, PTQ vs QAT, and
what to ship on each target. Nothing here is asserted by hand: each sentence is a function of paired
tests (edgeq.core.stats) and the user's budget (`max_accuracy_drop`, points of top-1).
"""
from __future__ import annotations

import numpy as np

from edgeq.core.stats import PairedTest, holm, images_to_decide, paired_test, per_class_paired, wilson_interval

ALPHA = 0.05


def _pt(x: float) -> str:
    return f"{x * 100:.2f}"


def _ci_pt(ci) -> str:
    return f"[{ci[0] * 100:.2f}, {ci[1] * 100:.2f}]"


def _p(p: float) -> str:
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def accuracy_interval(top1: float | None, n: int) -> list[float] | None:
    """95 % Wilson interval of a top-1 measured on n images."""
    if top1 is None or not n:
        return None
    lo, hi = wilson_interval(int(round(top1 * n)), n)
    return [round(lo, 5), round(hi, 5)]


def budget_status(t: PairedTest, budget_pt: float) -> bool | None:
    """True: the whole interval of the drop is within the budget; False: all of it beyond; None: undecided."""
    b = budget_pt / 100
    if t.ci95[1] <= b:
        return True
    if t.ci95[0] > b:
        return False
    return None


def images_needed(t: PairedTest, budget_pt: float) -> int | None:
    """Roughly how many images would decide an undecided budget question (interval width ~ 1/sqrt(n))."""
    margin = abs(budget_pt / 100 - t.drop)
    return images_to_decide(t.n, (t.ci95[1] - t.ci95[0]) / 2, margin)


def drop_verdict(t: PairedTest, budget_pt: float) -> str:
    """One plain sentence: is the loss against the reference real, and is it within the budget?"""
    if t.p >= ALPHA:
        head = f"no significant loss ({_p(t.p)}; {_pt(t.drop)} pt {_ci_pt(t.ci95)})"
    elif t.drop > 0:
        head = f"significant loss of {_pt(t.drop)} pt {_ci_pt(t.ci95)} ({_p(t.p)})"
    else:
        head = f"significant gain of {_pt(-t.drop)} pt {_ci_pt(t.ci95)} ({_p(t.p)})"
    status = budget_status(t, budget_pt)
    if status is True:
        return f"{head}; within the {budget_pt:g} pt budget"
    if status is False:
        return f"{head}; over the {budget_pt:g} pt budget"
    need = images_needed(t, budget_pt)
    more = f"; about {need:,} images would decide" if need else ""
    return f"{head}; {t.n:,} images are too few to tell whether it is within the {budget_pt:g} pt budget{more}"


def vs_reference(ref_name: str, ref_correct: np.ndarray, cand_correct: np.ndarray, budget_pt: float,
                 labels: np.ndarray | None = None, class_names: list[str] | None = None,
                 max_class_drop: float | None = None, of: int | None = None) -> dict:
    """report.json `vs_fp32` of one artifact: paired drop with interval, exact McNemar, verdict; with `labels`, the
    same per class (recall, Holm-corrected across classes), and a class whose significant loss exceeds
    `max_class_drop` takes the artifact out of the budget. `of`: the candidate was evaluated on a subset of that
    many images, and these arrays are both on exactly that subset."""
    t = paired_test(ref_correct, cand_correct)
    status = budget_status(t, budget_pt)
    out = {"reference": ref_name, "n": t.n, "drop_pt": round(t.drop * 100, 3),
           "drop_ci95_pt": [round(t.ci95[0] * 100, 3), round(t.ci95[1] * 100, 3)],
           "mcnemar": {"b": t.b, "c": t.c, "p": round(t.p, 6)}, "within_budget": status,
           "images_to_decide": images_needed(t, budget_pt) if status is None else None,
           "verdict": drop_verdict(t, budget_pt)}
    if of is not None:
        out["of"] = of
        out["verdict"] += f" (paired on {t.n:,} of {of:,} images, a seeded subset)"
    if labels is not None:
        out["per_class"] = class_verdicts(labels, ref_correct, cand_correct, class_names or [], max_class_drop)
        worst = out["per_class"]["collapsed"]
        if worst:
            out["verdict"] += "; but " + "; ".join(worst)
        if out["per_class"]["over_class_budget"]:
            out["within_budget"] = False
            out["verdict"] += f"; over the {max_class_drop:g} pt per-class budget (max_class_drop)"
    return out


def holm_across_artifacts(vs: dict[str, dict]) -> None:
    """Add `mcnemar_holm` to every `vs_fp32` of a run: its exact McNemar p Holm-adjusted across all the artifacts
    compared with an FP32 reference in the run, and how many comparisons that was (the tables' * markers use it)."""
    names = list(vs)
    for name, p in zip(names, holm([vs[n]["mcnemar"]["p"] for n in names])):
        vs[name]["mcnemar_holm"] = {"p": round(p, 6), "comparisons": len(names)}


def class_verdicts(labels, ref_correct, cand_correct, class_names: list[str], max_class_drop: float | None) -> dict:
    """Per class: recall of reference and candidate, the paired drop with interval, exact McNemar and the Holm-adjusted
    p across the classes; the classes with a significant loss, named in one line each."""
    tests = per_class_paired(labels, ref_correct, cand_correct)
    rows, collapsed, over = [], [], False
    for c in tests:
        name = class_names[c.label] if c.label < len(class_names) else str(c.label)
        drop = c.test.drop * 100
        rows.append({"class": name, "n": c.test.n, "recall_fp32": round(c.recall_ref, 5),
                     "recall": round(c.recall_cand, 5), "drop_pt": round(drop, 3),
                     "drop_ci95_pt": [round(c.test.ci95[0] * 100, 3), round(c.test.ci95[1] * 100, 3)],
                     "p": round(c.test.p, 6), "p_holm": round(c.p_holm, 6)})
        if c.p_holm < ALPHA and drop > 0:
            collapsed.append(f"class '{name}' {-drop:+.1f} pt {_ci_pt(tuple(-x for x in c.test.ci95[::-1]))}, "
                             f"p = {c.p_holm:.2g} (Holm, {len(tests)} classes)")
            over = over or (max_class_drop is not None and drop > max_class_drop)
    return {"classes": rows, "comparisons": len(tests), "collapsed": collapsed, "over_class_budget": over}


# ------------------------------------------------------------------ PTQ vs QAT, per format
FORMAT_LABEL = {"tflite": "TFLite", "onnx": "ONNX"}


def method_verdict(fmt: str, ptq: tuple[str, PairedTest] | None, qat: tuple[str, PairedTest] | None,
                   qat_vs_ptq: PairedTest | None, budget_pt: float, made_for: str | None = None) -> str:
    """INT8 of one format: is PTQ enough, does QAT help — from the paired tests and the budget. `made_for`: the
    device kinds of artifacts made for those only (notes.only_for), e.g. the TensorRT ones for "jetson"."""
    tag = f"{FORMAT_LABEL.get(fmt, fmt)} INT8" + (f" for {made_for}" if made_for else "")
    if ptq is None:
        return f"{tag}: no PTQ artifact evaluated, no verdict."
    name, t = ptq
    status = budget_status(t, budget_pt)
    parts = [f"{tag}: PTQ ({name}) {drop_verdict(t, budget_pt)}"]
    if status is True:
        parts.append("QAT not needed")
    elif status is False:
        if qat and budget_status(qat[1], budget_pt) is True:
            parts.append(f"QAT needed: {qat[0]} is within the budget")
        elif qat:
            parts.append(f"{qat[0]} is not within the budget either")
        else:
            parts.append("QAT may recover it: enable stages.qat")
    else:
        parts.append("QAT's need is undecided on this evaluation set")
    if qat and qat_vs_ptq is not None:
        g = qat_vs_ptq
        if g.p >= ALPHA:
            parts.append(f"QAT ({qat[0]}) vs PTQ: no significant difference ({_p(g.p)}; QAT − PTQ "
                         f"{g.drop * 100:+.2f} pt {_ci_pt(g.ci95)})")
        else:
            parts.append(f"QAT ({qat[0]}) vs PTQ: {'better' if g.drop > 0 else 'worse'} by {_pt(abs(g.drop))} pt "
                         f"{_ci_pt(g.ci95)} ({_p(g.p)})")
    return "; ".join(parts) + "."


def int8_method_tests(entries: list[dict], correct: dict[str, np.ndarray], budget_pt: float) -> tuple[list[dict], list[str]]:
    """Paired PTQ/QAT tests of every INT8 format in the run, and one verdict sentence per format; artifacts made for
    other device kinds only (notes.only_for: the TensorRT ONNX ones) are compared among themselves, QAT with PTQ on
    the same scheme (int8_onnx_qat_trt with int8_onnx_trt), in a test of their own with `made_for` set."""
    tests, lines = [], []
    groups: dict[tuple[str, str | None], list[dict]] = {}
    for e in entries:
        if e["precision"] == "int8" and e["name"] in correct and e.get("vs_fp32"):
            only = (e.get("notes") or {}).get("only_for")
            groups.setdefault((e["format"], ", ".join(only["kinds"]) if only else None), []).append(e)
    for fmt, made_for in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        int8 = groups[(fmt, made_for)]
        ptqs = [e for e in int8 if e["method"].startswith("ptq")]
        qats = [e for e in int8 if e["method"] == "qat"]
        if not ptqs:
            continue
        # the PTQ artifact a user would ship: the most accurate of this format
        ptq = max(ptqs, key=lambda e: (e["accuracy"]["top1"] or 0))
        ref = ptq["vs_fp32"]["reference"]
        t_ptq = paired_test(correct[ref], correct[ptq["name"]])
        qat = t_qat = g = None
        if qats:
            qat = qats[0]
            t_qat = paired_test(correct[ref], correct[qat["name"]])
            g = paired_test(correct[qat["name"]], correct[ptq["name"]])  # drop = QAT - PTQ: positive = QAT better
        line = method_verdict(fmt, (ptq["name"], t_ptq), (qat["name"], t_qat) if qat else None, g, budget_pt, made_for)
        tests.append({"format": fmt, "reference": ref, "ptq": ptq["name"], "qat": qat["name"] if qat else None,
                      "ptq_vs_fp32": t_ptq.to_dict(), "qat_vs_fp32": t_qat.to_dict() if t_qat else None,
                      "qat_minus_ptq": g.to_dict() if g else None, "verdict": line,
                      **({"made_for": made_for} if made_for else {})})
        lines.append(line)
    return tests, lines


PRECISION_LABEL = {"fp16": "FP16", "mixed": "Mixed INT4/INT8"}  # the comparison table's other-precision rows


def other_precision_lines(entries: list[dict]) -> list[str]:
    """One verdict line per FP16 / mixed-precision TFLite artifact, from its paired test against FP32."""
    return [f"{PRECISION_LABEL[e['precision']]} ({e['name']}): {e['vs_fp32']['verdict']}" for e in entries
            if e["format"] == "tflite" and e["precision"] in PRECISION_LABEL and e.get("vs_fp32")]


# ------------------------------------------------------------------ what to ship
SAME_SPEED = 0.02  # medians this close are the same speed to a user, however narrow their intervals


def _tied(a: dict, b: dict) -> bool:
    """Two latency figures of one target that are as fast: 95 % intervals overlap, or medians within 2 %."""
    if abs(a["median"] - b["median"]) <= SAME_SPEED * min(a["median"], b["median"]):
        return True
    return bool(a.get("median_ci95") and b.get("median_ci95")
                and a["median_ci95"][0] <= b["median_ci95"][1] and b["median_ci95"][0] <= a["median_ci95"][1])


def _on_other_runtimes(entries: list[dict]) -> list[dict]:
    """Each artifact also timed on another runtime as a candidate of its own: the entry with that runtime's figures as
    its latency_ms and `on_runtime` naming the runtime (its accuracy and paired test are the artifact's)."""
    return [{**e, "latency_ms": by_target, "on_runtime": rt} for e in entries
            for rt, by_target in (e.get("latency_ms_other_runtimes") or {}).items()]


def ship(entries: list[dict], target: str, budget_pt: float) -> dict:
    """The fastest artifact on `target` whose loss is within the budget (FP32 references always qualify), on its
    format's own runtime or on another it was timed on (then `runtime` names it)."""
    timed = [e for e in entries + _on_other_runtimes(entries)
             if (e["latency_ms"].get(target) or {}).get("median") is not None and e["accuracy"].get("top1") is not None]
    if not timed:
        return {"artifact": None, "why": f"nothing measured on {target} with both accuracy and latency"}

    def ok(e):
        return e["precision"] == "fp32" or (e.get("vs_fp32") or {}).get("within_budget") is True

    med = lambda e: e["latency_ms"][target]["median"]  # noqa: E731
    eligible = sorted((e for e in timed if ok(e)), key=med)
    if not eligible:
        return {"artifact": None, "why": f"no artifact measured on {target} is shown to be within the "
                                         f"{budget_pt:g} pt budget"}
    # a precision CPU runtimes run on reference kernels (notes.slow_kernels, e.g. 16x8) only if nothing else qualifies
    passed_over = [e for e in eligible if _slow_kernels(e)] if any(not _slow_kernels(e) for e in eligible) else []
    eligible = [e for e in eligible if e not in passed_over]
    tied = [e for e in eligible if _tied(eligible[0]["latency_ms"][target], e["latency_ms"][target])]
    # statistically as fast: the unquantised reference if it is among them (e.g. a Jetson's FP16 engine when the
    # INT8 engine is not faster), else the most accurate of them
    best = max(tied, key=lambda e: (e["precision"] == "fp32", e["accuracy"]["top1"]))
    s = best["latency_ms"][target]
    ci = s.get("median_ci95")
    why = [f"fastest within the {budget_pt:g} pt budget: median {s['median']:.4g} ms"
           + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "") + (f" ({s['runtime']})" if s.get("runtime") else "")]
    r = s.get("ratio_to_fp32")
    if r and r.get("value") is not None:
        why.append(f"{r['value']:.2f}x {r['reference']}" + (f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if r.get("ci95") else ""))
    if best.get("vs_fp32"):
        v, lost = best["vs_fp32"], _classes_lost(best["vs_fp32"])
        why.append(f"loss {v['drop_pt']:.2f} pt [{v['drop_ci95_pt'][0]:.2f}, {v['drop_ci95_pt'][1]:.2f}] "
                   f"(McNemar p = {v['mcnemar']['p']:.2g})" + (f"; but {lost}" if lost else ""))
    others = [_named(e) for e in tied if e is not best]
    if others:
        why.append(f"as fast as {', '.join(others)} (intervals overlap or medians within 2 %); chosen as the "
                   + ("unquantised one: quantisation buys no speed here" if best["precision"] == "fp32"
                      else "most accurate of them"))
    quicker = [e for e in passed_over if med(e) < med(best)]  # said only where it changed the choice
    if quicker:
        why.append(", ".join(_named(e) for e in quicker) + " passed over: " + "; ".join(
            dict.fromkeys(_slow_kernels(e) for e in quicker)))
    faster = [e for e in timed if med(e) < med(best) and not ok(e)]
    if faster:
        f = min(faster, key=med)
        v = f.get("vs_fp32") or {}
        state = ((f"over the per-class budget (max_class_drop): {_classes_lost(v)}"
                  if (v.get("per_class") or {}).get("over_class_budget") else "over the budget")
                 if v.get("within_budget") is False else
                 "not shown to be within the budget" + (f" (about {v['images_to_decide']:,} images would decide)"
                                                        if v.get("images_to_decide") else ""))
        why.append(f"{_named(f)} is faster ({med(f):.4g} ms) but {state}")
    if best["precision"] == "fp32":
        slower = [e for e in eligible[1:] if e["precision"] != "fp32"]
        if slower:
            why.append(f"every INT8 artifact within the budget is slower on this {target} "
                       f"(best: {_named(slower[0])} {med(slower[0]):.4g} ms)")
    if s.get("noisy"):
        why.append(f"caution, noisy: {s.get('noisy_reason')}")
    if s.get("emulated"):
        why.append(f"EMULATED CPU on {target}: these timings say nothing about a real device's speed ({s['emulated']})")
    out = {"artifact": best["name"], "why": "; ".join(why)}
    if best.get("on_runtime"):
        out["runtime"] = best["on_runtime"]
        out["why"] = (f"on {RUNTIME_NAMES.get(best['on_runtime'], best['on_runtime'])}, not its format's own "
                      f"{RUNTIMES.get(best['format'], best['format'])}: " + out["why"])
    return out


def _named(e: dict) -> str:
    """An artifact's name, with the runtime where it is a candidate on a runtime other than its format's own."""
    return e["name"] + (f" on {RUNTIME_NAMES.get(e['on_runtime'], e['on_runtime'])}" if e.get("on_runtime") else "")


# ------------------------------------------------------------------ the referee: toolchains side by side
# artifact stage -> the toolchain whose method made it (the run's FP32 exports are each runtime's baseline)
TOOLCHAINS = {"tflite_ptq": "TFLite converter", "precision": "TFLite converter", "comparison": "edgeq better PTQ",
              "litert_quant": "LiteRT Quantizer", "mixed_precision": "edgeq mixed precision (LiteRT Quantizer)",
              "onnx_ptq": "ONNX Runtime quantizer", "onnx_fallback": "ONNX Runtime quantizer (fallback)",
              "nncf_ptq": "NNCF", "qat": "QAT (tfmot / NNCF)"}
RUNTIMES = {"tflite": "LiteRT", "onnx": "ONNX Runtime", "openvino": "OpenVINO", "keras": "TensorFlow"}
RUNTIME_NAMES = {"tflite": "LiteRT", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tf-keras": "TensorFlow"}


def timings(e: dict, target: str):
    """(runtime, figure) of an artifact on `target`: on its format's own runtime, then on each other runtime it was
    also timed on (report.json `latency_ms_other_runtimes`, e.g. NNCF's QDQ ONNX on OpenVINO)."""
    yield RUNTIMES.get(e["format"], e["format"]), e["latency_ms"].get(target) or {}
    for rt, by_target in (e.get("latency_ms_other_runtimes") or {}).items():
        yield RUNTIME_NAMES.get(rt, rt), by_target.get(target) or {}


METHOD_TOOLCHAINS = {"inference_precision": "OpenVINO precision hint"}  # bf16_openvino: no quantizer made it


def toolchain_of(e: dict) -> str:
    return METHOD_TOOLCHAINS.get(e.get("method")) or TOOLCHAINS.get(
        e.get("stage"), "FP32 baseline" if e["precision"] == "fp32" else str(e.get("stage")))


def referee(entries: list[dict], target: str, budget_pt: float) -> dict:
    """Every route as a candidate on `target`: per (toolchain, runtime), its fastest artifact within the budget, with
    its latency interval and its ratio to the overall fastest; routes whose intervals overlap are indistinguishable."""
    rows = {}
    for e in entries:
        if e["precision"] == "fp32" or (e.get("vs_fp32") or {}).get("within_budget") is not True:
            continue
        for runtime, s in timings(e, target):
            key = (toolchain_of(e), runtime, e["format"])
            if s.get("median") is not None and (key not in rows or s["median"] < rows[key]["median"]):
                rows[key] = {"toolchain": key[0], "runtime": runtime, "format": e["format"], "artifact": e["name"],
                             "method": e["method"], "precision": e["precision"], "median": s["median"],
                             "median_ci95": s.get("median_ci95"), "runtime_version": s.get("runtime"),
                             "drop_pt": e["vs_fp32"]["drop_pt"], "drop_ci95_pt": e["vs_fp32"]["drop_ci95_pt"]}
    if not rows:
        return {"routes": [], "verdict": f"no route's artifact is shown to be within the {budget_pt:g} pt budget "
                                         f"and timed on {target}"}
    ranked = sorted(rows.values(), key=lambda r: r["median"])
    best = ranked[0]
    for r in ranked:
        r["x_best"] = round(r["median"] / best["median"], 3)
        r["indistinguishable_from_best"] = r is best or _tied(best, r)
    tied = [r for r in ranked[1:] if r["indistinguishable_from_best"]]
    # a toolchain with two formats on one runtime (NNCF's IR and QDQ ONNX on OpenVINO) names the format
    shared = {k[:2] for k in rows if sum(j[:2] == k[:2] for j in rows) > 1}
    label = lambda r: (f"{r['toolchain']} {r['format']} on {r['runtime']}" if (r["toolchain"], r["runtime"]) in shared  # noqa: E731
                       else f"{r['toolchain']} on {r['runtime']}")
    verdict = (f"on {target}, {label(best)} ({best['artifact']}) is the fastest route "
               f"within the {budget_pt:g} pt budget: {best['median']:.4g} ms")
    if tied:
        verdict += "; indistinguishable from it: " + ", ".join(label(r) for r in tied)
    rest = [r for r in ranked[1:] if not r["indistinguishable_from_best"]]
    if rest:
        verdict += "; slower: " + ", ".join(f"{label(r)} {r['x_best']:.2f}x" for r in rest)
    return {"routes": ranked, "verdict": verdict}


def _classes_lost(v: dict) -> str:
    """"class 'shirt' -47.0 pt [...], p = ... (Holm, 10 classes)": the classes of a vs_fp32 that lost significantly,
    or ''."""
    return "; ".join((v.get("per_class") or {}).get("collapsed") or [])


def _slow_kernels(e: dict) -> str | None:
    """Why the CPU runtimes run this artifact's precision on slow (reference) kernels, if they do."""
    return (e.get("notes") or {}).get("slow_kernels")
