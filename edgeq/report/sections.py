"""Markdown of the report sections the stages contribute, rendered at report time from the data they stored.

Stages keep typed data in their results sections (results.json); the rows of edgeq.stages.registry name the
builder of each section here. Every builder is `f(section, artifacts, compatibility) -> markdown`: the
section's data, the run's artifacts (objects with `name`, `stage`, `notes`) and its compatibility results
(artifact -> target -> result), so a section shows the checks that ran after its stage (TensorRT for ONNX).
"""
from __future__ import annotations

from typing import Any

from edgeq.core.formats import resolve
from edgeq.stages.support.comparison_verdicts import METHOD_LABELS
from edgeq.stages.mixed_precision import short_name


def render_sections(sections: dict, rows: list, artifacts: list[Any], compatibility: dict) -> dict:
    """`sections` with each stage section's `markdown` rendered by its row's builder (other sections as they are)."""
    builders = {key: spec for row in rows for key, spec in row.sections.items()}
    # a section that already has its text was written by an older edgeq (run directories outlive versions): kept
    return {key: ({**value, "markdown": resolve(builders[key])(value, artifacts, compatibility)}
                  if key in builders and isinstance(value, dict) and "markdown" not in value else value)
            for key, value in sections.items()}


# ------------------------------------------------------------------ ONNX Runtime PTQ
def onnx_ptq_markdown(section: dict, artifacts: list[Any], compatibility: dict) -> str:
    """The onnx_ptq section: export or input, host scheme and why, ORT kernels per artifact, TensorRT checks."""
    artifacts = [a for a in artifacts if a.stage == "onnx_ptq"]
    h = section["host_scheme"]
    lines = ["## ONNX Runtime PTQ", ""]
    if "export" in section:
        e = section["export"]
        lines.append(f"- export: {e['exporter']}, opset {e['opset']}, {e['input_layout']} input, onnx.checker "
                     f"{e['onnx_checker']}, max |Keras - ORT| {e['max_abs_diff_vs_keras']:.2e}, "
                     f"{e['transposes']} Transpose left, {e['identity_reshapes_removed']} identity Reshape removed")
    else:
        i = section["input"]
        how = f"exported by {i['exporter']}" if i.get("exporter") else "as given"
        lines.append(f"- input model: {i['source']} (input '{i['input']}', {i['layout']}), quantized {how}")
    lines.append(f"- int8_onnx_ptq scheme: {h['activation_type']} activations "
                 f"({'symmetric' if h['activation_symmetric'] else 'with zero-point'}), {h['weight_type']} weights "
                 f"{'per-channel' if h['per_channel'] else 'per-tensor'}, reduce_range={h['reduce_range']}, "
                 f"{h['quant_format'].upper()}. Why: {h['why']}")
    for a in artifacts:
        lines += _ort_lines(a.name, a.notes)
    lines += [route_line(a.name, a.notes) for a in artifacts if a.notes.get("route")]
    if section.get("advanced_not_made"):
        lines.append(f"- int8_onnx_ptq_adv: not made: {section['advanced_not_made']}")
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


# ------------------------------------------------------------------ ONNX / PyTorch input -> TFLite
def tflite_translation_markdown(section: dict, artifacts: list[Any] = (), compatibility: dict | None = None) -> str:
    """The tflite_ptq section of an ONNX (or PyTorch) input: how it became TensorFlow, and how close it stayed."""
    lines = ["## TFLite from ONNX", ""]
    src = section.get("source") or {}
    if src.get("source_format") == "pytorch":
        lines.append(f"- FP32 ONNX exported from PyTorch ({src['source']}) by {src['exporter']}, opset "
                     f"{src['settings']['opset_version']}, input {src['settings']['input_shape']}; max |PyTorch - "
                     f"ONNX| {src['max_abs_diff_vs_torch']:.2e} on {src['checked_on']}")
    t, v = section.get("translation") or {}, section.get("vs_onnx") or {}
    if t:
        lines.append(f"- translated by {t['translator']} after {t['constant_folding']} constant folding "
                     f"({t['onnx_input_layout']} ONNX input -> NHWC {t['tf_input_shape']}, {t['translate_seconds']} s)")
    if v:
        lines.append(f"- FP32 .tflite vs FP32 ONNX on {v['images']} calibration images: max |Δlogit| "
                     f"{v['max_abs_logit_diff']:.2e} ({v['relative']:.1e} of the largest logit), top-1 agreement "
                     f"{v['top1_agreement']:.1%}")
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


# ------------------------------------------------------------------ LiteRT Quantizer
def litert_quant_markdown(section: dict, artifacts: list[Any] = (), compatibility: dict | None = None) -> str:
    """The litert_quant section: per recipe its size against the converter's INT8 and its weight bytes; how each
    auto-recipe artifact was chosen; the recipes not made and why."""
    floor = section.get("int4_floor")
    int8_name = floor["of"] if floor else None
    md = ["## LiteRT Quantizer", "",
          "Fully integer .tflite per recipe (litert-quantizer over fp32.tflite; one calibration for all). Size against "
          f"the converter's INT8 ({int8_name or 'not made'}); weight bytes as stored (int4: two per byte); "
          "per-channel scales and zero points (12 bytes per output channel of every weight and bias) do not shrink "
          "with the weight bits." + (f" {int8_name} with every int8 weight at 4 bits and nothing else changed would be "
                                  f"{floor['bytes']:,} bytes = {floor['ratio']:.3f}× the INT8 file: about as small as "
                                  "int4 weights can make this model." if floor else ""), "",
          "| artifact | recipe | ranges | rounding | bytes | × INT8 file | weight bytes by type | s |",
          "|---|---|---|---|---|---|---|---|"]
    for r in section.get("rows", []):
        ratio = f"{r['size_vs_int8_tflite_ptq']:.3f}" if r["size_vs_int8_tflite_ptq"] else "—"
        wb = ", ".join(f"{k} {v:,}" for k, v in sorted(r["weight_bytes"].items()))
        md.append(f"| {r['artifact']} | {r['recipe']} | {r['range_method']} | {r['rounding']} | {r['size_bytes']:,} | "
                  f"{ratio} | {wb} | {r['seconds']} |")
    made = {r["artifact"] for r in section.get("rows", [])}
    md += [""] + [route_line(a.name, a.notes) for a in artifacts if a.name in made and a.notes.get("route")]
    md += [f"\n{art}: not made: {why}" for art, why in (section.get("not_made") or {}).items()]
    return "\n".join(md)


# ------------------------------------------------------------------ QAT
def qat_markdown(section: dict, artifacts: list[Any] = (), compatibility: dict | None = None) -> str:
    """The qat section: how the fine-tune ran and what it changed; the ORT kernel summary of the QAT INT8 ONNX
    (whether it runs as integer kernels), when one was made."""
    n = section
    how = "distilled from the FP32 outputs" if n.get("distill") else "on the labels"
    how += f", Adam lr {n.get('learning_rate'):g}, "
    how += (f"activation ranges calibrated on {n.get('calibration_images')} images" if n.get("calibrate_ranges")
            else "tfmot's initial ranges")
    text = (f"tfmot quantize_model ({how}), fine-tuned {n.get('epochs_run')} epoch(s) / {n.get('steps')} steps "
            f"on {n.get('train_images')} training images in {n.get('fine_tune_seconds')} s (conversion "
            f"{n.get('convert_seconds')} s); validation top-1 {n.get('validation_top1_before_fine_tune')} before "
            f"fine-tuning, {n.get('validation_top1_after_fine_tune')} after")
    if not n.get("fine_tune_kept", True):
        text += " (fine-tuning did not lower the validation loss, so the range-calibrated weights were exported)"
    onnx = next((a for a in artifacts if a.name == "int8_onnx_qat" and a.name in (n.get("artifacts") or [])), None)
    ort = _ort_lines(onnx.name, onnx.notes) if onnx is not None and onnx.notes else []
    onnx_note = n.get("onnx")
    return "\n".join(["## QAT", "", text + "."] + (["", *ort] if ort else []) + (["", onnx_note] if onnx_note else []))


# ------------------------------------------------------------------ PTQ vs QAT
def _size(b: int | None, estimated: bool) -> str:
    if not b:
        return "size ?"
    text = f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"
    return text + ("*" if estimated else "")


def _counts(d: dict) -> str:
    """{"mse": 3, "minmax": 1} -> "mse 3, minmax 1" (most first)."""
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def route_line(name: str, notes: dict) -> str:
    """How an advanced-PTQ artifact was chosen: every candidate's measured output error, the one kept (or, for a
    GPTQ artifact, what GPTQ did and that the export kept its codes)."""
    if notes.get("gptq") and not notes.get("route"):
        g, kept = notes["gptq"], notes.get("gptq_codes_kept") or {}
        return (f"- {name}: GPTQ rounding of {g['gptq_layers']} Conv2D/Dense kernels at INT{g['bits']}; median "
                f"layer output error {g['median_error_vs_nearest']} × that of round-to-nearest (under the "
                f"calibration inputs); codes kept by the export: {kept.get('unchanged', 0):,} of "
                f"{kept.get('codes', 0):,}.")
    c = notes.get("candidates", {})
    n = next(iter(c.values()), {}).get("n", "?")
    errs = "; ".join(f"{k}: MSE {v['output_mse']:.3g}, top-1 agreement {v['top1_agreement'] * 100:.1f} %"
                     for k, v in c.items())
    more = ""
    if notes.get("ranges"):
        more += f" Per-tensor range methods: {_counts(notes['ranges']['method_counts'])} tensors."
    if notes.get("op_range_methods"):
        more += f" Range method per op: {_counts(notes['op_range_methods'])} ops."
    if notes.get("equalization") is not None:
        more += f" Equalisable layer pairs: {notes['equalization'].get('equalized_pairs', 0)}."
    return (f"- {name}: route **{notes['route']}**, chosen by output error against FP32 on n = {n} held-back "
            f"calibration images ({errs}).{more}")


def comparison_markdown(section: dict, artifacts: list[Any] = (), compatibility: dict | None = None) -> str:
    """The comparison table (rows of bits x format x method against FP32) and its verdict lines."""
    rows, n = section["rows"], section["eval_images"]
    fp32 = rows[0]
    methods = list(dict.fromkeys(r["method"] for r in rows[1:]))
    groups = list(dict.fromkeys((r["bits"], r.get("format", "tflite"), r.get("label")) for r in rows[1:]))
    head = ["bits", "FP32"] + [METHOD_LABELS.get(m, m) for m in methods]
    litert = (f" PTQ LiteRT = {section['litert_ptq']}; INT4 there = real W4A8 .tflite (int4 CONV_2D/FULLY_CONNECTED "
              "weights, int8 activations) run by LiteRT." if "ptq_litert" in methods else "")
    fallback = (" Float fallback = the host INT8 ONNX with its most sensitive nodes left float (ONNX row, drop "
                "against the FP32 ONNX)." if "fallback" in methods else "")
    labelled: dict[tuple[str, str], list[str]] = {}  # (label, how) -> artifacts: a row of several cells named once
    for r in rows:
        if r.get("label") and r.get("artifact"):
            labelled.setdefault((r["label"], r["how"]), []).append(r["artifact"])
    others = "".join(f" {label} = {', '.join(arts)} ({how})." for (label, how), arts in labelled.items())
    qat_how = section.get("qat_how", "tfmot fine-tune at INT8; straight-through fine-tune of the simulated kernels "
                                     "below 8 bits")  # a PyTorch run's section names NNCF's
    lines = ["## PTQ vs QAT", "",
             f"Top-1 on {n} evaluation images (drop from FP32 in points; size). INT8: real INT8 artifacts. Fewer "
             f"bits: real artifacts where a runtime takes them, else simulated = "
             f"{section.get('simulated_how', 'per-channel fake-quantised kernels in Keras')}, float activations, size "
             f"estimated (marked). PTQ advanced = {section['advanced_ptq']}. QAT = {qat_how}.{litert}{fallback}{others}",
             "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, fmt, row_label in groups:
        cells_b = [x for x in rows
                   if x["bits"] == b and x.get("format", "tflite") == fmt and x.get("label") == row_label]
        label = row_label or f"INT{b}" + (" ONNX" if fmt == "onnx" else "")
        cells = [label, f"{fp32['top1'] * 100:.2f} %"]
        for m in methods:
            r = next((x for x in cells_b if x["method"] == m), None)
            if r is None:
                cells.append("—")
            elif r["top1"] is None:
                cells.append(f"— ({r.get('reason', 'not measured')})")
            else:
                sim = " simulated" if r.get("simulated") else ""
                cells.append(f"{r['top1'] * 100:.2f} %{sim} ({0 - r['drop']:+.2f}; "
                             f"{_size(r['size_bytes'], r.get('size_estimated', False))})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "\\* estimated packed size."]
    if section.get("routes"):  # kept with the table: report.py replaces everything from the verdicts on
        lines += ["", "How each PTQ advanced artifact was chosen:"]
        lines += [route_line(name, notes) for name, notes in section["routes"].items()]
    lines += [""] + [f"- {v}" for v in section["verdict_lines"]]
    return "\n".join(lines)


# ------------------------------------------------------------------ accuracy on the devices
def device_accuracy_markdown(section: dict | None) -> str:
    """accuracy_on_device (device -> artifact -> entry) as a table: on-device top-1 against the host's run of
    the same artifact on the same images, with the paired test."""
    if not section:
        return ""
    lines = ["## Accuracy on the devices", "",
             "Each device ran the eval images through its own runtime; the host ran the same artifact on the same "
             "images. Intervals 95 % (Wilson; Newcombe paired for the difference, exact McNemar p).", "",
             "| artifact | device | n | device top-1 % [CI] | host top-1 % [CI] | agreement | device − host pt [CI] | p |",
             "|---|---|---|---|---|---|---|---|"]
    for device, entries in section.items():
        for name, e in (entries.items() if isinstance(entries, dict) else ()):
            if not isinstance(e, dict):
                continue
            if not e.get("n") or not isinstance(e.get("paired_vs_host"), dict):
                lines.append(f"| {name} | {device} | 0 | {e.get('reason', 'not measured')} | | | | |")
                continue
            t = e["paired_vs_host"]
            lo, hi = t["ci95"]
            lines.append(f"| {name} | {device} | {e['n']} | {100 * e['top1']:.2f} [{100 * e['top1_ci95'][0]:.2f}, "
                         f"{100 * e['top1_ci95'][1]:.2f}] | {100 * e['host_top1']:.2f} [{100 * e['host_top1_ci95'][0]:.2f}, "
                         f"{100 * e['host_top1_ci95'][1]:.2f}] | {e['top1_agreement_with_host']:.1%} | "
                         f"{-100 * t['drop']:+.2f} [{-100 * hi:.2f}, {-100 * lo:.2f}] | {t['p']:.2g} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ float fallback
def fallback_markdown(section: dict, fmt: str) -> str:
    """A float-fallback section: the slice figures, the nodes kept float, the measured ranking, refusals."""
    plan = section.get("plan") or {}
    lines = [f"## Accuracy budget: float fallback ({fmt})", ""]
    if plan:
        lines.append(f"On {plan['slice_images']} held-back calibration images (not the evaluation set): FP32 top-1 "
                     f"{plan['fp32_top1'] * 100:.2f} %, {section['artifact']} {plan['int8_top1'] * 100:.2f} % "
                     f"(drop {plan['int8_drop_pt']:.2f} pt; budget {section['budget_pt']} pt).")
    if section.get("why_not"):
        lines += ["", f"No fallback: {section['why_not']}."]
    if plan.get("steps"):
        verdict = "meets" if plan["met"] else "does NOT meet"
        lines += ["", f"Kept float: **{', '.join(plan['float_nodes'])}** — {verdict} the budget on the slice "
                      f"(drop {plan['final_drop_pt']:.2f} pt); the evaluation table has its measured accuracy, size "
                      f"and latency (`int8_{fmt.lower()}_fallback`).", "",
                  "| rank | node | op | SQNR lost dB | solo-float slice top-1 | gain pt |", "|---|---|---|---|---|---|"]
        for i, e in enumerate(r for r in plan["ranking"] if r.get("solo_top1") is not None):
            lines.append(f"| {i + 1} | {e['node']} | {e['op_type']} | {e['sqnr_loss_db']:.1f} | "
                         f"{e['solo_top1'] * 100:.2f} % | {e['solo_gain_pt']:+.2f} |")
    for a, why in (section.get("refused") or {}).items():
        if why:
            lines.append(f"\n{a}: {why}.")
    return "\n".join(lines)


def onnx_fallback_markdown(section: dict, artifacts: list[Any] = (), compatibility: dict | None = None) -> str:
    """The onnx_fallback section (float fallback of the host INT8 ONNX)."""
    return fallback_markdown(section, "ONNX")


def tflite_fallback_markdown(section: dict, artifacts: list[Any] = (), compatibility: dict | None = None) -> str:
    """The tflite_fallback section (litert_quant's float fallback of the w8a8 model)."""
    return fallback_markdown(section, "TFLite")


def precision_markdown(section: dict, artifacts=None, compatibility=None) -> str:
    """The report's `precision` section: what was made, what CPUs make of each precision, what was not made."""
    lines = ["## Other precisions", "",
             f"Calibrated variants use the first {section['calibration_images']} calibration images (those of the "
             "INT8 TFLite). Accuracy, paired test, size and latency: the artifact table.", ""]
    subset = section.get("eval_images") or {}
    lines += [f"- **{name}**: {kernels}" + (f"; evaluated on a seeded subset of {subset[name]:,} evaluation images "
                                            "(stages.precision.eval_images), paired against FP32 on exactly those"
                                            if name in subset else "")
              for name, kernels in section["kernels"].items()]
    lines += [f"- **{name}**: not made: {why}" for name, why in section["not_made"].items()]
    return "\n".join(lines)


def nncf_ptq_markdown(section: dict, artifacts=(), compatibility=None) -> str:
    """The report's nncf_ptq section: the OpenVINO precision every figure ran at, each route's artifact, what was not made."""
    made = list(artifacts)
    lines = ["## NNCF + OpenVINO routes",
             f"Every OpenVINO artifact runs with inference precision {section.get('inference_precision', 'f32')} unless named "
             "otherwise below (INFERENCE_PRECISION_HINT set explicitly: OpenVINO's default runs bfloat16 on CPUs that "
             "have it). NNCF options: "
             + ", ".join(f"{k}={v}" for k, v in section["options"].items()) + ".", ""]
    for a in made:
        if a.stage != "nncf_ptq":
            continue
        run_at = a.params.get("inference_precision")
        line = (f"- `{a.name}` ({a.format}, {a.precision}" + (f", run at {run_at}" if run_at else ", run by ONNX Runtime"
                                                     + (", timed on OpenVINO too" if a.notes.get("also_timed_on") else ""))
                + f"): {a.notes.get('seconds')} s to make")
        ac = a.notes.get("accuracy_control")
        if ac:
            reverted = ac["reverted_layers"]
            line += (f"; accuracy control within {ac['max_drop_points']} pt on {ac['validated_on']} (top-1 "
                     f"{ac['initial_metric']} FP32, {ac['quantized_metric']} INT8 before any revert): "
                     f"{len(reverted)} layer(s) reverted to float" + (f" ({', '.join(reverted)})" if reverted else ""))
        lines.append(line)
    lines += [f"- `{name}`: not made: {why}" for name, why in section["not_made"].items()]
    return "\n".join(lines)


def mixed_precision_markdown(s: dict, artifacts=(), compatibility=None) -> str:
    """The report's mixed_precision section: every plan measured, the one shipped, its per-layer table."""
    def row(m: dict) -> str:
        c = m.get("plan_counts") or {}
        counts = ", ".join(f"{k} {v}" for k, v in c.items() if v) or "—"
        return (f"| {m['label']} | {counts} | {m['file_bytes']:,} | {m['drop_pt']:+.2f} "
                f"[{m['drop_ci95_pt'][0]:+.2f}, {m['drop_ci95_pt'][1]:+.2f}] | {m['expected_drop_pt']:+.2f} | {m['kl_mean']:.4f} | "
                f"{'yes' if m['accepted'] else 'no'} |")

    md = ["## Mixed precision", "",
          f"A weight precision per layer, smallest file within the {s['budget_pt']:g} pt budget. Sensitivity: "
          f"{s['sensitivity']}. Search: scipy MILP (one precision per layer, least weight bytes under an error "
          f"budget), bisected over the error budget; every plan made for real and measured on all {s['naive']['n']} "
          f"held-back images ({s['held_back']}); accepted when the drop expected from the continuous output error "
          f"(per image, the FP32 top-two margin against the distribution of the plan's margin errors; the counted "
          f"drop where larger) plus the interval half-width the {s['eval_images']:,}-image evaluation will have is "
          f"within the budget. Search {s['seconds']} s after {s.get('sensitivity_seconds', 0):.1f} s of "
          f"sensitivity models.", "",
          "| model | layers by precision | bytes | held-back drop pt [95 %] | expected drop pt | KL | accepted |",
          "|---|---|---|---|---|---|---|",
          row(s["naive"])] + [row(m) for m in s["tried"]]
    best = s.get("best")
    if best:
        ratio = f" = {s['size_vs_naive']:.3f}× {s['naive']['label']}" if s.get("size_vs_naive") else ""
        md += ["", f"Shipped: {s['artifact']} ({best['label']}, {best['file_bytes']:,} bytes{ratio})"
               + ("" if s["budget_met_on_held_back"] else "; NOT within the budget on the held-back images, "
                  "but measured no worse than the naive artifact") + "."]
    else:
        md += ["", f"Nothing made: {s['why_not']}"]
    if s.get("too_few_held_back"):
        md += ["", s["too_few_held_back"] + "."]
    if s.get("plan"):
        md += ["", "| layer | op | precision | SQNR lost dB | weight bytes |", "|---|---|---|---|---|"]
        md += [f"| {short_name(r['layer'])} | {r['op_type']} | {r['precision']} | {r['sqnr_loss_db']} | "
               f"{r['bytes']:,} |" for r in s["plan"]]
    return "\n".join(md)
