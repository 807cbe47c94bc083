"""The `mixed_precision` stage: a weight precision per layer of the run's FP32 .tflite (int4 / int8 / float), the
smallest plan whose measured drop on held-back calibration images is within max_accuracy_drop -> `mixed_tflite`.

Sensitivity comes from two uniform models (W4A8 and W8A8, litert-quantizer, one calibration): per weight op, the
noise-to-signal ratio it adds at each precision against the FP32 tensors. The search (methods/shared/mixed_precision)
solves a multiple-choice knapsack per error budget and measures every plan as a real .tflite on all held-back
images; this stage ships the smallest one accepted, or says why it ships nothing.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgeq.core.artifacts import Artifact, stage_key
from edgeq.core.options import MixedPrecisionSpec
from edgeq.core.errors import EdgeqError
from edgeq.methods.shared import mixed_precision as mp
from edgeq.methods.shared.budget import refusal_reason
from edgeq.methods.shared.calibration import calibration_count, held_back
from edgeq.methods.tflite import int4_substitution, litert, op_sqnr

NAME, FILE = "mixed_tflite", "mixed.tflite"
SENSITIVITY = ("per weight layer and candidate precision, one real model with only that layer changed from all-int8: "
               "its output KL against FP32 minus the all-int8 model's, on {n} held-back calibration images (one "
               "model per layer and precision, affordable because each is a selective litert-quantizer recipe over "
               "one shared calibration; per-op SQNR of two uniform models was tried first and blamed the layer "
               "that reads an outlier activation instead of the one that writes it). Per-layer SQNR lost (table) "
               "from one uniform W4A8 and one W8A8 model. Costs are summed, and every plan is then measured")
SUBSTITUTED = ("per int4-capable layer, the all-int8 (W8A8) model with only that layer's weights replaced by its real "
               "int4 weights from the uniform W4A8 model of the same calibration (a byte patch, no quantization per "
               "layer): its output KL against FP32 minus the all-int8 model's, on {n} held-back calibration images"
               "{float_note}. Per-layer SQNR lost (table) from the two uniform models. Costs are summed, and every "
               "plan is then measured")


def _sensitivity_text(opts: MixedPrecisionSpec, n: int) -> str:
    if opts.sensitivity == "models":
        return SENSITIVITY.format(n=n)
    return SUBSTITUTED.format(n=n, float_note="; float candidates by one real model each" if opts.allow_float else "")


def run_stage(ctx, opts: MixedPrecisionSpec) -> list[Artifact]:
    """mixed_tflite: the smallest per-layer int4/int8(/float) plan within the budget, or nothing (the section says
    why)."""
    fp32 = next((a for a in ctx.manifest.artifacts.values() if a.format == "tflite" and a.precision == "fp32"), None)
    if fp32 is None:
        raise EdgeqError("stages.mixed_precision needs the run's FP32 .tflite: enable stages.tflite_ptq with "
                         "export_fp32: true (or disable stages.mixed_precision)")
    cal = ctx.splits.calibration
    n = calibration_count(cal, opts.calibration_images, "stages.mixed_precision.calibration_images")
    held = held_back(cal, n, opts.holdout_images)
    naive_art = next((a for a in ctx.manifest.artifacts.values()
                      if a.format == "tflite" and a.precision == "int8" and a.stage == "tflite_ptq"), None)
    budget = ctx.cfg.max_accuracy_drop
    params = {"objective": opts.objective, "allow_float": opts.allow_float, "calibration_images": n,
              "holdout_images": len(held), "sensitivity_images": min(opts.sensitivity_images, len(held)),
              "range_method": opts.range_method, "search_rounds": opts.search_rounds, "budget_pt": budget,
              "sensitivity": opts.sensitivity,
              "naive": naive_art.name if naive_art else "all-int8 plan", "litert_quantizer": litert.quantizer_version()}
    key_parts = {"calibration": cal.fingerprint(), "naive": naive_art.sha256 if naive_art else None,
                 "eval_images": len(ctx.splits.eval)}
    old = ctx.manifest.reusable(NAME, stage_key(NAME, fp32.sha256, key_parts, params, ctx.cfg.seed))
    if old is not None:
        ctx.log(f"  = {NAME}: reused ({old.path}, inputs unchanged)")
        _section(ctx, old.notes.get("section", {}))
        return [old]
    blob = fp32.abspath(ctx.run_dir).read_bytes()
    x, hx = ctx.pre(cal.images[:n]), ctx.pre(held.images)
    ranges = litert.calibrate_ranges(blob, x, name=NAME)
    stored = litert.weight_layers(blob)
    op_types = {o: t for o, (t, _, _) in stored.items()}
    with tempfile.TemporaryDirectory(dir=ctx.artifact_dir(), prefix=".mixed.") as work:
        work = Path(work)
        uniform = {p: litert.quantize_plan(blob, {o: p if (p == "int8" or t in litert.INT4_OPS) else "int8"
                                                  for o, t in op_types.items()}, op_types, x,
                                           range_method=opts.range_method, ranges=ranges, name=f"{NAME}:{p}")[0]
                   for p in ("int4", "int8")}
        ns = params["sensitivity_images"]
        ref = _predict(work / "fp32.tflite", blob, hx)
        files: dict[str, bytes] = {}

        def make(plan: mp.Plan, label: str) -> tuple[np.ndarray, int]:
            data, _ = litert.quantize_plan(blob, plan, op_types, x, range_method=opts.range_method, ranges=ranges,
                                           name=f"{NAME} ({label})")
            files[label] = data
            return _predict(work / "plan.tflite", data, hx), len(data)

        def kl(plan: mp.Plan) -> float:
            data, _ = litert.quantize_plan(blob, plan, op_types, x, range_method=opts.range_method, ranges=ranges,
                                           name=NAME)
            return float(mp.output_kl(ref[:ns], _predict(work / "one.tflite", data, hx[:ns])).mean())

        int4_kl = None
        if opts.sensitivity == "substitution":
            sub = int4_substitution.substitution(uniform["int8"], uniform["int4"],
                                                 [o for o, t in op_types.items() if t in litert.INT4_OPS])

            def int4_kl(layer: str) -> float:
                return float(mp.output_kl(ref[:ns], _predict(work / "sub.tflite", sub.model(layer), hx[:ns])).mean())

        layers, sens_seconds = _layers(stored, litert.layer_inputs(blob), op_sqnr.layer_errors(blob, uniform, hx[:32]),
                                       opts.allow_float, kl, int4_kl)
        ctx.log(f"  sensitivity ({opts.sensitivity}): {sum(len(la.error) - 1 for la in layers)} single-layer models "
                f"on {ns} held-back images ({sens_seconds:.1f} s)")
        if naive_art is not None:
            naive_bytes = naive_art.abspath(ctx.run_dir).read_bytes()
            naive = mp.measure(naive_art.name, ref, held.labels, _predict(work / "naive.tflite", naive_bytes, hx),
                               len(naive_bytes))
        else:
            out, size = make(mp.uniform_plan(layers, "int8"), "naive all-int8")
            naive = mp.measure("all-int8 plan", ref, held.labels, out, size)
        naive.accepted = mp.acceptable(naive, budget, len(ctx.splits.eval))
        ctx.log(f"  {len(layers)} weight layers; naive {naive.label}: held-back drop {naive.drop_pt:+.2f} pt "
                f"[{naive.drop_ci95_pt[0]:+.2f}, {naive.drop_ci95_pt[1]:+.2f}] (n={naive.n}, {held.source}), "
                f"expected {naive.expected_drop_pt:+.2f} pt, KL {naive.kl_mean:.4f}; budget {budget} pt")
        result = mp.search(layers, make, ref, held.labels, naive, budget_pt=budget, eval_images=len(ctx.splits.eval),
                           rounds=opts.search_rounds, log=ctx.log)
        section = _section_data(ctx, result, layers, held.source, ns, opts, naive_art)
        section["sensitivity_seconds"] = round(sens_seconds, 1)
        if result.best is None:
            ctx.log(f"  {NAME}: not made: {result.why_not}")
            _section(ctx, section)
            return []
        data = files[result.best.label]

        def write(tmp: Path) -> dict:
            tmp.write_bytes(data)
            table = plan_table(data, layers, result.best.plan)
            summary = litert.check_fully_integer(data, NAME, allowed_float=opts.allow_float)
            return {**summary, "plan": table, "section": section, "sensitivity": _sensitivity_text(opts, ns),
                    "budget_met_on_held_back": result.best.accepted, "held_back": held.source,
                    "held_back_decides": result.held_back_decides,
                    **({"hybrid": refusal_reason("edgetpu")} if "float" in result.best.plan.values() else {})}

        art = ctx.produce(NAME, FILE, key_parts, write, fmt="tflite", precision="mixed", method="ptq_mixed",
                          stage="mixed_precision", params=params, parent=fp32.name)
    section["plan"] = art.notes["plan"]
    art.notes["section"] = section
    ctx.manifest.save()
    _section(ctx, section)
    return [art]


def _layers(stored: dict, inputs: dict[str, str], sqnr: dict, allow_float: bool, kl,
            int4_kl=None) -> tuple[list[mp.Layer], float]:
    """The search's layers: per weight op its candidates (int4 where LiteRT takes it, int8, float if allowed), each
    costed by `kl(plan)` of the all-int8 model with only that layer changed, minus the all-int8 model's (int4: by
    `int4_kl(layer)`, the W8A8 model with that layer's int4 weights substituted, when given). A float
    layer whose input a weight layer writes is costed with that producer float too (minus the producer alone), and
    the solver may only choose it with its producer float."""
    import time

    t0 = time.perf_counter()
    base = {o: "int8" for o in stored}
    kl8 = float(kl(base))
    float_alone = {o: float(kl({**base, o: "float"})) - kl8 for o in stored} if allow_float else {}
    out = []
    for o, (op_type, _, weights) in stored.items():
        error = {"int8": 0.0}
        if op_type in litert.INT4_OPS:  # int4 never helps: a negative figure is noise
            k4 = int4_kl(o) if int4_kl is not None else kl({**base, o: "int4"})
            error["int4"] = round(max(0.0, float(k4) - kl8), 8)
        producer = inputs.get(o) if inputs.get(o) in stored else None
        if allow_float:
            error["float"] = round(float(kl({**base, o: "float", producer: "float"})) - kl8 - float_alone[producer]
                                   if producer else float_alone[o], 8)
        loss = {p: sqnr[o][p][2] for p in ("int4", "int8") if p in sqnr.get(o, {})}
        out.append(mp.Layer(o, op_type, weights, error, {**loss, **({"float": 0.0} if allow_float else {})},
                            float_with=producer if allow_float else None))
    return out, time.perf_counter() - t0


def plan_table(data: bytes, layers: list[mp.Layer], plan: mp.Plan) -> list[dict]:
    """The shipped plan per layer, its precision READ BACK from the file (so the table cannot drift from it)."""
    stored = litert.weight_layers(data)
    back = {"int4": "int4", "int8": "int8", "float32": "float"}
    rows = []
    for la in layers:
        p = back.get(stored[la.name][1], stored[la.name][1])
        rows.append({"layer": la.name, "op_type": la.op_type, "precision": p, "planned": plan[la.name],
                     "sqnr_loss_db": la.sqnr_loss_db.get(p), "weights": la.weights, "bytes": la.bytes_at(p)
                     if p in mp.BYTES_PER_WEIGHT else None})
    return rows


def _predict(path: Path, data: bytes, x: np.ndarray) -> np.ndarray:
    from edgeq.measure.predictors import TFLitePredictor

    path.write_bytes(data)
    return np.asarray(TFLitePredictor(path).predict(x), np.float32).reshape(len(x), -1)


def _section_data(ctx, result: mp.SearchResult, layers: list[mp.Layer], source: str, ns: int,
                  opts: MixedPrecisionSpec, naive_art: Artifact | None) -> dict:
    d = result.to_dict()
    int8 = naive_art.size_bytes if naive_art else None
    d.update(artifact=NAME if result.best else None, held_back=source, sensitivity=_sensitivity_text(opts, ns),
             layers=len(layers), allow_float=opts.allow_float, naive_size_bytes=int8,
             size_vs_naive=round(result.best.file_bytes / int8, 4) if result.best and int8 else None,
             budget_met_on_held_back=bool(result.best and result.best.accepted),
             float_refused=None if opts.allow_float else "allow_float is false (full-integer plans only: "
                                                         + refusal_reason("edgetpu") + ")")
    hb = result.held_back_decides or {}
    d["too_few_held_back"] = (f"{hb['n']} held-back images are too few to decide the {result.budget_pt:g} pt budget "
                              f"for the chosen model (its drop interval straddles it); about "
                              f"{hb['images_to_decide'] or '?'} would decide"
                              if hb.get("within_budget") is None else None)
    return d


def short_name(tensor: str) -> str:
    """An op's name for a table: its output tensor's first scope without the model's name (`block_3_expand_relu`)."""
    head = tensor.split(";")[0]
    parts = head.split("/")
    return "/".join(parts[1:-1] or parts) if len(parts) > 2 else head


def _section(ctx, section: dict) -> None:
    ctx.results.set_section("mixed_precision", section)
