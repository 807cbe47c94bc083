"""The `comparison` stage: PTQ naive vs PTQ advanced vs QAT at each bit width, against FP32.

INT8 cells are real INT8 TFLite artifacts, evaluated by the pipeline like every other artifact and found in
the manifest by format and method: naive PTQ (method `ptq`, the `tflite_ptq` stage), advanced PTQ (made here by
`better_ptq`), QAT (the `qat` stage). Cells below 8 bits are real where a runtime takes them (the GPTQ W4A8,
LiteRT Quantizer's W4A8), else simulated: kernels fake-quantised in the Keras model (activations float), or for a
PyTorch input Conv2d/Linear weights in PyTorch (naive; NNCF QAT with 4-bit weight quantizers: `torch_low_bit`),
evaluated here with their per-image predictions kept (paired against FP32: `low_bit_tests`), and labelled
"simulated". The table is assembled after the evaluation step (`after_evaluate`), so every cell is measured on the
same evaluation images, and the verdict is derived from those numbers.
"""
from __future__ import annotations

import time

import numpy as np

from edgeq.core.artifacts import Artifact, stage_key
from edgeq.core.config import ComparisonSpec, QatSpec
from edgeq.core.data import LabelledImages
from edgeq.methods.keras import bias_correction as advanced
from edgeq.stages.support import advanced_tflite as better_ptq
from edgeq.measure.evaluate import evaluate
from edgeq.measure.predictors import KerasPredictor
from edgeq.methods.keras import fakequant
from edgeq.stages.support.advanced_tflite import calibration_batches
from edgeq.methods.keras.fine_tune import batch_stream, fine_tune_fake_quant, training_split
from edgeq.stages.support.inputs import ComparisonInputs, comparison_inputs
from edgeq.stages.support import low_bit_tests, torch_low_bit
# the method labels and the verdict sentences (their own module: the verdicts are text, not measurement)
from edgeq.stages.support.comparison_verdicts import METHOD_LABELS, METHODS, fallback_verdict, verdict_for

# precisions beside the bit widths, a row each where the run made them: precision -> (row label, the method column
# it sits in, why): FP16 is a cast (no calibration, so naive); mixed is a searched per-layer INT4/INT8 plan (advanced)
OTHER_PRECISION_ROWS = {"fp16": ("FP16", "ptq_naive", "stages.precision: FP16 weights, a cast"),
                        "mixed": ("mixed INT4/INT8", "ptq_advanced",
                                  "stages.mixed_precision: a bit width per layer under max_accuracy_drop")}
# comparison method -> Artifact.method of a real artifact, in order of preference
REAL_METHODS = {"ptq_naive": ("ptq",), "ptq_advanced": ("ptq_advanced",),
                "ptq_litert": ("ptq_auto", "ptq_gptq", "ptq_octav"), "fallback": ("ptq_fallback",), "qat": ("qat",)}
PRECISION_OF_BITS = {8: "int8", 4: "int4"}  # bit widths a runtime takes (TFLite: W4A8 via litert-quantizer)
ADVANCED_DESC = ("INT8 TFLite: cross-layer equalisation (kept where it lowers the measured output error) + empirical "
                 "bias correction on the converter's own grid; INT8 ONNX: per-tensor range method by measured error "
                 "(+ equalisation, same rule); INT4: GPTQ rounding of Conv2D/Dense kernels, a real W4A8 .tflite where "
                 "litert-quantizer is installed, else simulated with MSE-clipped scales + bias correction")
# why no simulated cell: they fake-quantise Keras Conv2D/Dense kernels, which a model translated from ONNX lacks; a
# PyTorch input's naive and QAT cells are simulated in PyTorch, its advanced one only
NO_KERNELS = {"pytorch": torch_low_bit.NO_ADVANCED,
              None: "not available: the model has no Keras Conv2D/Dense kernels to fake-quantise"}
LITERT_DESC = ("LiteRT Quantizer: range method per op by measured error (auto recipes), else OCTAV ranges (GPTQ "
               "rounding of FULLY_CONNECTED where the recipe asks)")


def _eval_subset(ctx, opts: ComparisonSpec) -> tuple[LabelledImages, np.ndarray]:
    ev = ctx.splits.eval
    idx = np.arange(min(opts.eval_images or len(ev), len(ev)))
    return ev.take(idx), idx


def _cell_key(ctx, opts: ComparisonSpec, fine_tune: QatSpec, bits: int, method: str) -> str:
    parts = {"bits": bits, "method": method, "eval": _eval_subset(ctx, opts)[0].fingerprint(),
             "calibration": ctx.splits.calibration.fingerprint(), "calibration_images": opts.calibration_images,
             **({"simulated_in": "pytorch"} if ctx.cfg.model.format == "pytorch" else {})}
    if method == "qat":
        parts.update(steps=opts.low_bit_qat_steps, lr=opts.low_bit_qat_learning_rate,
                     qat=fine_tune.model_dump(exclude={"enabled", "export_onnx", "device", "tensorrt_artifact"}),
                     train=ctx.splits.train.fingerprint() if ctx.splits.train is not None else None)
    return stage_key("comparison", ctx.fp32.sha256, parts, ctx.cfg.seed)


# ------------------------------------------------------------------ the stage
def run_stage(ctx, opts: ComparisonSpec, inputs: ComparisonInputs | None = None) -> list[Artifact]:
    """The advanced-PTQ INT8 TFLite (at 8 bits) and the simulated low-bit cells, evaluated here.

    `inputs`: the TFLite conversion and fine-tune settings shared with the tflite_ptq and qat stages; by
    default resolved from the run's config (`stage_inputs.comparison_inputs`)."""
    inputs = inputs or comparison_inputs(ctx.cfg)
    ctx.calibration(opts.calibration_images, "stages.comparison.calibration_images")  # the count fits, before any work
    model = ctx.keras_model()
    out = []
    if 8 in opts.bits:
        out.append(better_ptq.int8_advanced(ctx, opts, inputs.tflite, model))
    if 4 in opts.bits and opts.int4_artifact:
        a = better_ptq.int4_gptq(ctx, opts, model)
        out += [a] if a is not None else []
    cells = ctx.results.comparison_cells
    ev, _ = _eval_subset(ctx, opts)
    ev_resized = None
    adv_models: dict = {}  # bits -> advanced-PTQ model, also the low-bit QAT starting point
    for bits in (b for b in opts.bits if b < 8):
        for method in METHODS:
            real = real_artifact(ctx, "tflite", bits, method)
            if real is not None:
                ctx.log(f"  = INT{bits} {METHOD_LABELS[method]}: real artifact {real.name}, nothing to simulate")
                continue
            key = _cell_key(ctx, opts, inputs.fine_tune, bits, method)
            if key in cells:
                ctx.log(f"  = INT{bits} {METHOD_LABELS[method]} (simulated): reused")
                continue
            if ev_resized is None:  # resize once; each simulated model is evaluated on the same pixels
                ev_resized = LabelledImages(ctx.pre.resize(ev.images), ev.labels, ev.source, ev.class_names)
            cells[key] = _simulated_cell(ctx, opts, inputs, model, bits, method, ev_resized, adv_models, key)
            ctx.results.save()
            c = cells[key]
            ctx.log(f"  * INT{bits} {METHOD_LABELS[method]} (simulated): "
                    + (f"top-1 {c['top1']:.4f} ({c['seconds']} s)" if c["top1"] is not None else c["reason"]))
    return out


def _advanced_model(ctx, opts: ComparisonSpec, model, bits: int, cache: dict):
    if bits not in cache:
        cache[bits] = advanced.quantize_weights_advanced(model, bits, calibration_batches(ctx, opts),
                                                         label=f"INT{bits} advanced PTQ (simulated)")
    return cache[bits]


def _simulated_cell(ctx, opts: ComparisonSpec, inputs: ComparisonInputs, model, bits: int, method: str,
                    ev: LabelledImages, adv_models: dict, key: str) -> dict:
    t = time.perf_counter()
    label = f"evaluate INT{bits} {METHOD_LABELS[method]} (simulated)"
    if ctx.cfg.model.format == "pytorch":  # weights simulated in the user's nn.Module
        cell, r = torch_low_bit.simulated_cell(ctx, opts, inputs.fine_tune, bits, method, ev, label)
        return _with_predictions(ctx, cell, r, key, t)
    cell: dict = {"bits": bits, "method": method}
    if not fakequant.weight_layers(model):
        return {**cell, "top1": None, "reason": NO_KERNELS.get(ctx.cfg.model.format, NO_KERNELS[None])}
    if method == "ptq_naive":
        m = fakequant.quantize_weights_rtn(model, bits)
        cell["how"] = "round-to-nearest, per-channel max scale"
    elif method == "ptq_advanced":
        m, rep = _advanced_model(ctx, opts, model, bits, adv_models)
        cell["how"] = ADVANCED_DESC
        cell["advanced"] = rep.to_dict()
    else:
        if not opts.low_bit_qat:
            return {**cell, "top1": None, "reason": "not run (stages.comparison.low_bit_qat: false)"}
        if ctx.splits.train is None:
            return {**cell, "top1": None, "reason": "no training split to fine-tune on"}
        m = _low_bit_qat(ctx, opts, inputs.fine_tune, model, bits, adv_models, cell)
    r = evaluate(KerasPredictor(m), ev, ctx.pre, ctx.splits.dataset, ctx.cfg.evaluate.batch_size, label=label)
    cell.update(top1=r.top1, n=r.n, kernel_parameters=fakequant.kernel_parameter_count(model))
    return _with_predictions(ctx, cell, r, key, t)


def _with_predictions(ctx, cell: dict, r, key: str, t: float) -> dict:
    """The cell with its time and, where evaluated, its per-image predictions' file (for the paired tests)."""
    if r is None:
        return cell
    return {**cell, "seconds": round(time.perf_counter() - t, 1),
            "predictions_file": low_bit_tests.save_predictions(ctx, key, r.predictions)}


def _low_bit_qat(ctx, opts: ComparisonSpec, q: QatSpec, model, bits: int, adv_models: dict, cell: dict):
    """Straight-through fine-tune of `bits`-bit kernels from the advanced-PTQ model, with QAT's settings `q`."""
    data = training_split(ctx.splits.train, q)
    steps = opts.low_bit_qat_steps or data.steps_per_epoch * max(q.epochs, 1)
    start, _ = _advanced_model(ctx, opts, model, bits, adv_models)
    m = fine_tune_fake_quant(model, bits, batch_stream(data.train, ctx.pre, q.batch_size, q.seed), steps,
                             opts.low_bit_qat_learning_rate, q.seed, start=start)
    cell["how"] = (f"straight-through fine-tune of {bits}-bit kernels, {steps} steps of {q.batch_size}, "
                   "starting from the advanced-PTQ model (same fixed MSE-clipped scales)")
    cell["fine_tune_steps"] = steps
    return m


# ------------------------------------------------------------------ the table, after evaluation
def real_artifact(ctx, fmt: str, bits: int, method: str, made_for_elsewhere: bool = False) -> Artifact | None:
    """The run's real artifact of format `fmt` at `bits` made by comparison method `method`, found by precision
    and Artifact.method (the artifact of the stage named for the format first: tflite_ptq's naive INT8 before
    a litert-quantizer min-max one). `made_for_elsewhere`: among the artifacts made for other device kinds only
    (notes.only_for: the TensorRT ONNX ones), else among the others."""
    prec = PRECISION_OF_BITS.get(bits)
    for m in REAL_METHODS[method]:
        found = [a for a in ctx.manifest.artifacts.values() if a.format == fmt and a.precision == prec and a.method == m
                 and bool(a.notes.get("only_for")) == made_for_elsewhere]
        if found:
            return sorted(found, key=lambda a: a.stage != f"{fmt}_ptq")[0]
    return None


def _int8_tflite(ctx, method: str) -> Artifact | None:
    return real_artifact(ctx, "tflite", 8, method)


def _artifact_top1(ctx, a: Artifact | None, idx: np.ndarray) -> tuple[float | None, str | None]:
    """Top-1 of an evaluated artifact on the comparison's images, from the evaluation step's predictions."""
    if a is None:
        return None, "artifact not produced"
    r = ctx.results.evaluation(a.sha256, ctx.splits.eval.fingerprint())
    if r is None:
        return None, ("evaluation disabled (evaluate.enabled: false)" if not ctx.cfg.evaluate.enabled
                      else "not evaluated")
    with np.load(ctx.run_dir / r.predictions_file, allow_pickle=False) as z:
        pred = z["predictions"]
    return round(float((pred[idx] == ctx.splits.eval.labels[idx]).mean()), 5), None


def _fp32_top1(ctx, opts: ComparisonSpec, idx: np.ndarray) -> float:
    top1, _ = _artifact_top1(ctx, ctx.fp32, idx)
    if top1 is None:  # Keras baseline not evaluated (evaluate.keras_baseline: false): the FP32 .tflite, the table's
        fp32_tflite = next((a for a in ctx.manifest.artifacts.values()  # FP32 row, converted from the same model
                            if a.format == "tflite" and a.precision == "fp32"), None)
        top1 = _artifact_top1(ctx, fp32_tflite, idx)[0] if fp32_tflite is not None else None
    if top1 is None:  # neither evaluated by the pipeline: measure the Keras model here
        ev, _ = _eval_subset(ctx, opts)
        top1 = evaluate(KerasPredictor(ctx.keras_model()), ev, ctx.pre, ctx.splits.dataset,
                        ctx.cfg.evaluate.batch_size, label=f"evaluate {ctx.fp32.name} (comparison baseline)").top1
    return top1


def table_methods(cfg) -> tuple[str, ...]:
    """The table's columns: the simulated-capable methods, plus LiteRT Quantizer and float fallback when on."""
    lq = cfg.stages.litert_quant
    extra = (("ptq_litert",) if lq.enabled else ()) + \
            (("fallback",) if cfg.stages.onnx_fallback.enabled or (lq.enabled and lq.fallback) else ())
    return ("ptq_naive", "ptq_advanced") + extra + ("qat",)


def _missing_reason(fmt: str, bits: int, method: str) -> str:
    if method == "fallback":
        if bits < 8:
            return "no float fallback of INT4 models"
        return ("not needed, or not produced (see the float fallback section)" if fmt == "onnx" else
                "not needed, or not produced: stages.litert_quant.fallback (see the float fallback section)")
    if method == "ptq_litert":
        return ("LiteRT Quantizer makes .tflite only" if fmt != "tflite" else
                "not produced: add a w8a8_octav/w4a8_octav recipe to stages.litert_quant.recipes")
    if method == "qat":
        return "not produced: enable stages.qat" if fmt == "tflite" else "not produced: enable stages.qat (export_onnx)"
    if method == "ptq_advanced" and fmt == "onnx":
        return "not produced: set stages.onnx_ptq.advanced: true"
    return "artifact not produced"


def build_rows(ctx, opts: ComparisonSpec, fine_tune: QatSpec) -> tuple[list[dict], int]:
    """The table's rows (FP32, then each bit width x format x method) and the number of evaluation images.

    A cell is a real artifact where the run made one (INT8; INT4 = LiteRT W4A8), else simulated (marked), else
    empty with the reason. ONNX INT8 cells (naive, advanced, fallback) appear when stages.onnx_fallback or
    stages.onnx_ptq.advanced is on; their drop is against the FP32 ONNX model."""
    ev, idx = _eval_subset(ctx, opts)
    fp32 = _fp32_top1(ctx, opts, idx)
    arts = ctx.manifest.artifacts
    fp32_art = next((a for a in arts.values() if a.format == "tflite" and a.precision == "fp32"), ctx.fp32)
    rows = [{"bits": 32, "method": "fp32", "format": fp32_art.format, "simulated": False, "top1": fp32, "drop": 0.0,
             "size_bytes": fp32_art.size_bytes, "artifact": fp32_art.name}]
    naive8 = _int8_tflite(ctx, "ptq_naive")
    methods = table_methods(ctx.cfg)
    onnx_ref = next((a for a in arts.values() if a.format == "onnx" and a.precision == "fp32"), None)
    for bits in opts.bits:
        onnx_row = ctx.cfg.stages.onnx_fallback.enabled or (ctx.cfg.stages.onnx_ptq.enabled and
                                                            ctx.cfg.stages.onnx_ptq.advanced)
        formats = ["tflite"] + (["onnx"] if bits == 8 and onnx_row else [])
        for fmt in formats:
            ref = fp32
            if fmt == "onnx" and onnx_ref is not None:
                ref = _artifact_top1(ctx, onnx_ref, idx)[0] or fp32
            for method in methods:
                a = real_artifact(ctx, fmt, bits, method)
                if a is not None or bits == 8 or fmt != "tflite" or method not in METHODS:
                    top1, reason = _artifact_top1(ctx, a, idx) if a is not None else (None, _missing_reason(fmt, bits, method))
                    row = {"bits": bits, "method": method, "format": fmt, "simulated": False, "top1": top1,
                           "size_bytes": a.size_bytes if a else None, "artifact": a.name if a else None}
                    if a is not None and a.notes.get("float_nodes"):
                        row["float_nodes"] = a.notes["float_nodes"]
                else:
                    c = ctx.results.comparison_cells.get(_cell_key(ctx, opts, fine_tune, bits, method), {})
                    top1, reason = c.get("top1"), c.get("reason", None if c else "not measured")
                    kp = c.get("kernel_parameters")  # counted when made: Keras kernels or PyTorch Conv2d/Linear
                    size = (None if naive8 is None else int(round(naive8.size_bytes - kp * (8 - bits) / 8))
                            if kp is not None else
                            fakequant.packed_size_bytes(naive8.size_bytes, ctx.keras_model(), bits))
                    row = {"bits": bits, "method": method, "format": fmt, "simulated": True, "top1": top1,
                           "size_bytes": size, "size_estimated": True, "how": c.get("how"),
                           **{k: c[k] for k in ("predictions_file", "framework") if c.get(k)}}
                row["drop"] = round((ref - top1) * 100, 3) if top1 is not None else None
                if reason:
                    row["reason"] = reason
                rows.append(row)
    onnx_fp32 = (_artifact_top1(ctx, onnx_ref, idx)[0] if onnx_ref is not None else None) or fp32
    return rows + _tensorrt_rows(ctx, idx, onnx_fp32) + _other_precision_rows(ctx, idx, fp32), len(ev)


def _tensorrt_rows(ctx, idx: np.ndarray, onnx_fp32: float) -> list[dict]:
    """The INT8 ONNX made for TensorRT, PTQ (onnx_ptq's int8_onnx_trt) beside QAT on the same scheme (the PyTorch
    qat stage's int8_onnx_qat_trt), as one labelled row (drop against the FP32 ONNX), when the run made the PTQ one
    and ran QAT."""
    if not ctx.cfg.stages.qat.enabled or real_artifact(ctx, "onnx", 8, "ptq_naive", True) is None:
        return []
    rows = []
    for method in ("ptq_naive", "qat"):
        a = real_artifact(ctx, "onnx", 8, method, True)
        top1, reason = _artifact_top1(ctx, a, idx) if a is not None else (None, TENSORRT_QAT_MISSING)
        row = {"bits": 8, "label": TENSORRT_LABEL, "method": method, "format": "onnx", "simulated": False,
               "top1": top1, "size_bytes": a.size_bytes if a else None, "artifact": a.name if a else None,
               "how": TENSORRT_HOW, "drop": round((onnx_fp32 - top1) * 100, 3) if top1 is not None else None}
        rows.append({**row, "reason": reason} if reason else row)
    return rows


def _other_precision_rows(ctx, idx: np.ndarray, fp32: float) -> list[dict]:
    """The FP16 and mixed-precision TFLite artifacts the run made, as rows on the same images (bits: 16 for FP16,
    None for mixed, whose bit width is per layer; `label` names the row)."""
    rows = []
    for precision, (label, method, how) in OTHER_PRECISION_ROWS.items():
        for a in (a for a in ctx.manifest.artifacts.values() if a.format == "tflite" and a.precision == precision):
            top1, reason = _artifact_top1(ctx, a, idx)
            row = {"bits": 16 if precision == "fp16" else None, "label": label, "method": method, "format": "tflite",
                   "simulated": False, "top1": top1, "size_bytes": a.size_bytes, "artifact": a.name, "how": how,
                   "drop": round((fp32 - top1) * 100, 3) if top1 is not None else None}
            rows.append({**row, "reason": reason} if reason else row)
    return rows


TENSORRT_LABEL = "INT8 ONNX for TensorRT"
TENSORRT_HOW = ("TensorRT's scheme: int8 Q/DQ with zero-point 0, per-channel weights, float biases; evaluated as "
                "written (ORT basic level), drop against the FP32 ONNX")
TENSORRT_QAT_MISSING = ("not produced: int8_onnx_qat_trt is made by the qat stage for PyTorch models "
                        "(stages.qat.tensorrt_artifact)")


def after_evaluate(ctx, inputs: ComparisonInputs | None = None) -> None:
    """Assemble the comparison table from the evaluated INT8 artifacts and the simulated cells."""
    opts = ctx.cfg.stages.comparison
    inputs = inputs or comparison_inputs(ctx.cfg)
    rows, n = build_rows(ctx, opts, inputs.fine_tune)
    verdict = [verdict_for(b, {r["method"]: r for r in rows if r["bits"] == b and r["format"] == "tflite"},
                           opts.tolerance_points) for b in opts.bits]
    low_bit, paired = low_bit_tests.pair_low_bit(ctx, rows, _eval_subset(ctx, opts)[1])  # adds n/ci95/vs_fp32 to rows
    verdict += paired
    verdict += [fallback_verdict(rows, ctx.cfg.max_accuracy_drop)] if ctx.cfg.stages.onnx_fallback.enabled else []
    trt = {r["method"]: r for r in rows if r.get("label") == TENSORRT_LABEL}
    if trt:  # "INT8 ONNX for TensorRT: ..."; the report replaces INT8 point estimates with its paired tests
        verdict.append(TENSORRT_LABEL + verdict_for(8, trt, opts.tolerance_points).removeprefix("INT8"))
    section = {"rows": rows, "verdict": " ".join(verdict), "verdict_lines": verdict, "eval_images": n,
               "low_bit_tests": low_bit,
               **(torch_low_bit.SECTION_HOW if ctx.cfg.model.format == "pytorch" else {}),
               "drop_unit": "percentage points of top-1 below FP32", "tolerance_points": opts.tolerance_points,
               "advanced_ptq": ADVANCED_DESC, "litert_ptq": LITERT_DESC,
               "routes": {a.name: {k: a.notes[k] for k in ("route", "candidates", "ranges", "equalization", "gptq",
                                                        "gptq_codes_kept") if k in a.notes}
                          for a in ctx.manifest.artifacts.values()
                          if a.method == "ptq_advanced" and (a.notes.get("route") or a.notes.get("gptq"))}}
    ctx.results.set_section("comparison", section)
    for v in verdict:
        ctx.log(f"  {v}")
