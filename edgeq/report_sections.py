"""Markdown of the report sections the stages contribute (ONNX PTQ, QAT, PTQ vs QAT), from their data.

Stages keep data in their sections; these functions turn it into the `markdown` text the report shows.
The ONNX section's TensorRT table comes from the run's compatibility results, so it is rendered again
(`refresh_compatibility`) once the offline checks have run.
"""
from __future__ import annotations

from typing import Any

METHOD_LABELS = {"fp32": "FP32", "ptq_naive": "PTQ naive", "ptq_advanced": "PTQ advanced", "qat": "QAT"}


# ------------------------------------------------------------------ ONNX Runtime PTQ
def onnx_ptq_markdown(section: dict, artifacts: list[Any], compatibility: dict) -> str:
    """The onnx_ptq section: export or input, host scheme and why, ORT kernels per artifact, TensorRT checks.

    `artifacts`: the stage's artifacts (objects with `name` and `notes`); `compatibility`: the run's
    results["compatibility"] (artifact -> target -> result)."""
    h = section["host_scheme"]
    lines = ["## ONNX Runtime PTQ", ""]
    if "export" in section:
        e = section["export"]
        lines.append(f"- export: {e['exporter']}, opset {e['opset']}, {e['input_layout']} input, onnx.checker "
                     f"{e['onnx_checker']}, max |Keras - ORT| {e['max_abs_diff_vs_keras']:.2e}, "
                     f"{e['transposes']} Transpose left, {e['identity_reshapes_removed']} identity Reshape removed")
    else:
        i = section["input"]
        lines.append(f"- input model: {i['source']} (input '{i['input']}', {i['layout']}), quantized as given")
    lines.append(f"- int8_onnx_ptq scheme: {h['activation_type']} activations "
                 f"({'symmetric' if h['activation_symmetric'] else 'with zero-point'}), {h['weight_type']} weights "
                 f"{'per-channel' if h['per_channel'] else 'per-tensor'}, reduce_range={h['reduce_range']}, "
                 f"{h['quant_format'].upper()}. Why: {h['why']}")
    for a in artifacts:
        lines += _ort_lines(a.name, a.notes)
    checks = [(a.name, compatibility.get(a.name, {}).get("tensorrt")) for a in artifacts]
    checks = [(name, c) for name, c in checks if c]
    if checks:
        lines += ["", "| artifact | TensorRT QDQ check | violations |", "|---|---|---|"]
        for name, c in checks:
            more = len(c["problems"]) - 3
            first = "; ".join(c["problems"][:3]) + (f" … (+{more})" if more > 0 else "")
            lines.append(f"| {name} | {'pass' if c['ok'] else 'fail'} | {len(c['problems'])}"
                         f"{': ' + first if first else ''} |")
    return "\n".join(lines)


def _ort_lines(name: str, notes: dict) -> list[str]:
    lines = []
    k = notes.get("ort_kernels")
    if k:
        lines.append(f"- {name} in ORT (optimisation {k['graph_optimization']}): {k['integer_convs']} integer / "
                     f"{k['float_convs']} float Conv, {k['integer_adds']} integer / {k['float_adds']} float Add, "
                     + (f"{k['integer_matmuls']} integer / {k['float_matmuls']} float MatMul/Gemm, "
                        f"{k['batch_norms']} BatchNormalization, " if "float_matmuls" in k else "")
                     + f"{k['transposes']} Transpose")
    if notes.get("graph_optimization"):
        lines.append(f"- {name}: evaluated at ORT graph optimisation '{notes['graph_optimization']}': "
                     f"{notes.get('graph_optimization_why', '')}")
    if notes.get("only_for"):
        lines.append(f"- {name}: made for {', '.join(notes['only_for']['kinds'])} only; host latency not "
                     f"measured: {notes['only_for']['why']}")
    return lines


def refresh_compatibility(sections: dict, artifacts: list[Any], compatibility: dict) -> None:
    """Render again the sections that show compatibility results (the onnx_ptq one), now that they exist."""
    onnx = [a for a in artifacts if a.stage == "onnx_ptq"]
    if onnx and isinstance(sections.get("onnx_ptq"), dict) and "host_scheme" in sections["onnx_ptq"]:
        sections["onnx_ptq"]["markdown"] = onnx_ptq_markdown(sections["onnx_ptq"], onnx, compatibility)


# ------------------------------------------------------------------ QAT
def qat_markdown(notes: dict, opts: Any, calibration_images: int, onnx_note: str | None,
                 onnx_notes: dict | None = None) -> str:
    """The qat section from the QAT artifact's notes and the stage's options (a `QatSpec`); `onnx_notes`: those of
    the QAT INT8 ONNX, whose ORT kernel summary shows whether it runs as integer kernels."""
    n = notes
    how = "distilled from the FP32 outputs" if opts.distill else "on the labels"
    how += f", Adam lr {opts.learning_rate:g}, "
    how += (f"activation ranges calibrated on {calibration_images} images" if opts.calibrate_ranges
            else "tfmot's initial ranges")
    text = (f"tfmot quantize_model ({how}), fine-tuned {n.get('epochs_run')} epoch(s) / {n.get('steps')} steps "
            f"on {n.get('train_images')} training images in {n.get('fine_tune_seconds')} s (conversion "
            f"{n.get('convert_seconds')} s); validation top-1 {n.get('validation_top1_before_fine_tune')} before "
            f"fine-tuning, {n.get('validation_top1_after_fine_tune')} after")
    if not n.get("fine_tune_kept", True):
        text += " (fine-tuning did not lower the validation loss, so the range-calibrated weights were exported)"
    ort = _ort_lines("int8_onnx_qat", onnx_notes) if onnx_notes else []
    return "\n".join(["## QAT", "", text + "."] + (["", *ort] if ort else []) + (["", onnx_note] if onnx_note else []))


# ------------------------------------------------------------------ PTQ vs QAT
def _size(b: int | None, estimated: bool) -> str:
    if not b:
        return "size ?"
    text = f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"
    return text + ("*" if estimated else "")


def comparison_markdown(section: dict) -> str:
    """The comparison table (rows of bits x method against FP32) and its verdict lines."""
    rows, n = section["rows"], section["eval_images"]
    fp32 = rows[0]
    methods = list(dict.fromkeys(r["method"] for r in rows[1:]))
    bits = sorted({r["bits"] for r in rows if r["bits"] != 32}, reverse=True)
    head = ["bits", "FP32"] + [METHOD_LABELS.get(m, m) for m in methods]
    lines = ["## PTQ vs QAT", "",
             f"Top-1 on {n} evaluation images (drop from FP32 in points; size). INT8: real INT8 TFLite "
             f"artifacts. Fewer bits: simulated = per-channel fake-quantised kernels in Keras, float "
             f"activations, size estimated. PTQ advanced = {section['advanced_ptq']} (at INT8 bias correction "
             f"only, on the converter's own grid). QAT = tfmot fine-tune at INT8; straight-through fine-tune of "
             f"the simulated kernels below 8 bits.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in bits:
        cells = [f"INT{b}" + (" (simulated)" if b < 8 else ""), f"{fp32['top1'] * 100:.2f} %"]
        for m in methods:
            r = next(x for x in rows if x["bits"] == b and x["method"] == m)
            if r["top1"] is None:
                cells.append(f"— ({r.get('reason', 'not measured')})")
            else:
                cells.append(f"{r['top1'] * 100:.2f} % ({0 - r['drop']:+.2f}; "
                             f"{_size(r['size_bytes'], r.get('size_estimated', False))})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "\\* estimated packed size.", ""] + [f"- {v}" for v in section["verdict_lines"]]
    return "\n".join(lines)
