"""The comparison stage's verdict sentences: what the measured cells of one bit width say (`verdict_for`), and the
ONNX float-fallback line (`fallback_verdict`), from the rows `edgeq.stages.comparison.build_rows` assembles. The
paired-test lines of the low-bit cells are `low_bit_tests`'."""
from __future__ import annotations

METHOD_LABELS = {"fp32": "FP32", "ptq_naive": "PTQ naive", "ptq_advanced": "PTQ advanced",
                 "ptq_litert": "PTQ LiteRT (OCTAV/GPTQ)", "fallback": "float fallback", "qat": "QAT"}
METHODS = ("ptq_naive", "ptq_advanced", "qat")  # the cells simulated below 8 bits when no real artifact exists


def _pt(x: float) -> str:
    return f"{x:.2f}"


def verdict_for(bits: int, cells: dict[str, dict], tolerance: float) -> str:
    """One sentence on what the measured cells of one bit width say."""
    simulated = [m for m, c in cells.items() if c.get("simulated") and c.get("top1") is not None]
    real = [m for m, c in cells.items() if c.get("simulated") is False and c.get("top1") is not None]
    if bits >= 8:
        tag = f"INT{bits}"
    elif not simulated:
        tag = f"INT{bits} (W4A8 TFLite, real)"
    elif not real:
        tag = f"INT{bits} (simulated weights)"
    else:
        tag = (f"INT{bits} (real W4A8 TFLite: {', '.join(METHOD_LABELS[m] for m in real)}; simulated weights: "
               f"{', '.join(METHOD_LABELS[m] for m in simulated)})")
    d = {m: c["drop"] for m, c in cells.items() if c.get("drop") is not None}
    top = {m: c["top1"] for m, c in cells.items() if c.get("top1") is not None}
    if "ptq_naive" not in d:
        return f"{tag}: naive PTQ was not measured, no verdict."
    parts = []
    better = min((m for m in ("ptq_advanced", "ptq_litert") if m in d), key=lambda m: d[m], default=None)
    if d["ptq_naive"] <= tolerance:
        parts.append(f"{tag}: naive PTQ is within {_pt(d['ptq_naive'])} pt of FP32: QAT not needed")
    elif better is not None and d[better] <= tolerance:
        parts.append(f"{tag}: naive PTQ loses {_pt(d['ptq_naive'])} pt, {METHOD_LABELS[better]} only "
                     f"{_pt(d[better])} pt: {METHOD_LABELS[better]} suffices, QAT not needed")
    elif "qat" in d:
        best_ptq = max(top[m] for m in ("ptq_naive", "ptq_advanced", "ptq_litert") if m in top)
        gain = (top["qat"] - top["ptq_naive"]) * 100
        best_m = max((m for m in ("ptq_naive", "ptq_advanced", "ptq_litert") if m in top), key=lambda m: top[m])
        if top["qat"] > best_ptq:
            parts.append(f"{tag}: QAT recovers {_pt(gain)} pt over naive PTQ "
                         f"(drop {_pt(d['ptq_naive'])} -> {_pt(d['qat'])} pt)"
                         + (": QAT needed" if d["qat"] <= tolerance else
                            f", still {_pt(d['qat'])} pt below FP32")
                         + (f"; the best PTQ ({METHOD_LABELS[best_m]}) is {_pt((top['qat'] - best_ptq) * 100)} pt "
                            "below QAT" if best_m != "ptq_naive" else ""))
        else:
            parts.append(f"{tag}: PTQ loses {_pt(min(d[m] for m in ('ptq_naive', 'ptq_advanced', 'ptq_litert') if m in d))} pt and this QAT "
                         f"fine-tune does not beat it (QAT drop {_pt(d['qat'])} pt)")
    else:
        parts.append(f"{tag}: naive PTQ loses {_pt(d['ptq_naive'])} pt"
                     + (f", {METHOD_LABELS[better]} {_pt(d[better])} pt" if better else "") + "; QAT not measured")
    if "qat" in d and d["ptq_naive"] <= tolerance:
        parts.append(f"QAT drop {_pt(d['qat'])} pt")
    if bits < 8 and all(m in top for m in METHODS):
        order = [top["ptq_naive"], top["ptq_advanced"], top["qat"]]
        if not (order[0] <= order[1] <= order[2]):
            parts.append("the expected ordering naive PTQ <= advanced PTQ <= QAT does not hold here ("
                         + ", ".join(f"{METHOD_LABELS[m]} {top[m] * 100:.2f} %" for m in METHODS) + ")")
    return "; ".join(parts) + "."


def fallback_verdict(rows: list[dict], budget: float) -> str:
    """One sentence on the ONNX INT8 cells: naive vs float fallback against the budget (point estimates)."""
    cells = {r["method"]: r for r in rows if r["bits"] == 8 and r["format"] == "onnx"}
    naive, fb = cells.get("ptq_naive", {}), cells.get("fallback", {})
    if naive.get("drop") is None:
        return "INT8 ONNX: naive PTQ was not measured, no fallback verdict."
    if fb.get("drop") is None:
        return (f"INT8 ONNX: naive PTQ loses {_pt(naive['drop'])} pt; no float fallback artifact "
                f"({fb.get('reason', 'not produced')}).")
    within = "within" if fb["drop"] <= budget else "still outside"
    return (f"INT8 ONNX: naive PTQ loses {_pt(naive['drop'])} pt; keeping {', '.join(fb.get('float_nodes', []))} "
            f"float loses {_pt(fb['drop'])} pt, {within} the {budget:g} pt budget (point estimates).")
