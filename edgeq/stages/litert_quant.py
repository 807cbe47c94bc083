"""The `litert_quant` stage: LiteRT Quantizer recipes over the run's FP32 .tflite -> W8A8 / W4A8 artifacts.

Takes only the FP32 TFLite artifact (made by `tflite_ptq`: with export_fp32 for Keras, always for ONNX input) and
the calibration split, so any input model that reaches .tflite gets these artifacts.
"""
from __future__ import annotations

import tempfile
from pathlib import Path


from edgeq.core.artifacts import Artifact, stage_key
from edgeq.core.config import LitertQuantSpec
from edgeq.core.errors import EdgeqError, QuantizationError
from edgeq.methods.tflite import op_sqnr as litert_ops
from edgeq.methods.tflite import litert as litert_quant
from edgeq.methods.shared import budget as fallback

FILE_OF = {"w8a8": "int8_lq.tflite", "w8a8_octav": "int8_lq_octav.tflite", "w8a8_gptq": "int8_lq_gptq.tflite",
           "w8a8_auto": "int8_lq_auto.tflite", "w4a8": "int4_w4a8.tflite", "w4a8_octav": "int4_w4a8_octav.tflite",
           "w4a8_auto": "int4_w4a8_auto.tflite"}


def artifact_name(recipe: litert_quant.Recipe) -> str:
    """int8_tflite_lq[_octav|_gptq] | int4_tflite_w4a8[_octav]."""
    if recipe.weight_bits == 4:
        return "int4_tflite_" + recipe.name
    return "int8_tflite_lq" + recipe.name.removeprefix("w8a8")


def fp32_tflite_of(ctx) -> Artifact | None:
    return next((a for a in ctx.manifest.artifacts.values() if a.format == "tflite" and a.precision == "fp32"), None)


def run_stage(ctx, opts: LitertQuantSpec) -> list[Artifact]:
    """One fully integer .tflite per recipe in `opts.recipes`, each a child of the FP32 .tflite."""
    fp32 = fp32_tflite_of(ctx)
    if fp32 is None:
        raise EdgeqError("stages.litert_quant needs the run's FP32 .tflite: enable stages.tflite_ptq with "
                         "export_fp32: true (or disable stages.litert_quant)")
    calibration = ctx.calibration(opts.calibration_images, "stages.litert_quant.calibration_images")
    n = calibration.n
    cache: dict = {}

    def calibrated():
        """The preprocessed calibration images and litert-quantizer's ranges: made once, only if needed."""
        if not cache:
            x = calibration.array()
            cache.update(x=x, ranges=litert_quant.calibrate_ranges(fp32.abspath(ctx.run_dir).read_bytes(), x,
                                                                   name="litert_quant"))
        return cache["x"], cache["ranges"]

    # images no recipe calibrates on, for the auto recipes' choice (the fallback's held-back slice)
    held = calibration.held_back(opts.holdout_images)
    out, not_made = [], {}
    for name in opts.recipes:
        recipe = litert_quant.RECIPES[name]
        art = artifact_name(recipe)

        def make(tmp, recipe=recipe, art=art):
            x, ranges = calibrated()
            blob = fp32.abspath(ctx.run_dir).read_bytes()
            if recipe.range_method == "auto":
                data, notes = litert_ops.choose_op_ranges(blob, recipe, x, ranges, x[:16], ctx.pre(held.images),
                                                            name=art)
                notes["selection"] += f" ({held.source})"
            else:
                data, notes = litert_quant.quantize_tflite(blob, recipe, x, name=art, ranges=ranges)
            tmp.write_bytes(data)
            notes["size_vs_fp32_tflite"] = round(len(data) / fp32.size_bytes, 4)
            return notes

        params = {"recipe": name, "weight_bits": recipe.weight_bits, "activation_bits": 8,
                  "range_method": recipe.range_method, "rounding": recipe.rounding, "calibration_images": n,
                  "litert_quantizer": litert_quant.quantizer_version()}
        if recipe.range_method == "auto":
            params["selection"] = held.source
        try:
            out.append(ctx.produce(art, FILE_OF[name], {**calibration.key,
                                                        "recipe": litert_quant.recipe_entries(recipe)}, make,
                                   fmt="tflite", precision=recipe.precision, method=recipe.method,
                                   stage="litert_quant", params=params, parent=fp32.name))
        except QuantizationError as e:  # one recipe the library cannot do on this model; the others stand
            not_made[art] = str(e)
            ctx.log(f"  - {art}: not made: {e}")
    _section(ctx, out, not_made)
    if opts.fallback:
        out += _fallback(ctx, opts, fp32, n, calibrated)
    return out


def _section(ctx, arts: list[Artifact], not_made: dict[str, str]) -> None:
    """The LiteRT Quantizer section's data: per recipe its size against the converter's INT8 and its weight bytes
    (rendered by report.sections.litert_quant_markdown)."""
    int8 = next((a for a in ctx.manifest.artifacts.values()
                 if a.format == "tflite" and a.precision == "int8" and a.stage == "tflite_ptq"), None)
    rows = []
    for a in arts:
        wb = a.notes.get("weight_bytes", {})
        rows.append({"artifact": a.name, "recipe": a.params["recipe"], "range_method": a.params["range_method"],
                     "rounding": a.params["rounding"], "size_bytes": a.size_bytes,
                     "size_vs_int8_tflite_ptq": round(a.size_bytes / int8.size_bytes, 4) if int8 else None,
                     "weight_bytes": wb, "seconds": a.notes.get("seconds")})
    floor = int4_floor(ctx, int8)
    ctx.results.set_section("litert_quant", {"rows": rows, "not_made": not_made, "int4_floor": floor})


def int4_floor(ctx, int8: Artifact | None) -> dict | None:
    """The converter's INT8 file with every int8 weight byte halved: about the smallest a W4A8 file of the model can
    be (scales, zero points, int32 biases, graph and names do not shrink with the weight bits)."""
    if int8 is None:
        return None
    int8_bytes = litert_quant.weight_bytes(int8.abspath(ctx.run_dir).read_bytes()).get("int8", 0)
    smallest = int8.size_bytes - int8_bytes // 2
    return {"bytes": smallest, "ratio": round(smallest / int8.size_bytes, 4), "int8_weight_bytes": int8_bytes,
            "of": int8.name}


def _fallback(ctx, opts: LitertQuantSpec, fp32: Artifact, n: int, calibrated) -> list[Artifact]:
    """int8_tflite_fallback: the w8a8 (min-max) model with its most sensitive ops left float, when it misses the
    budget on the held-back slice; else nothing (the section says why)."""
    name, budget = "int8_tflite_fallback", ctx.cfg.max_accuracy_drop
    calibration = ctx.calibration(n, "stages.litert_quant.calibration_images")
    cal = calibration.split
    held = calibration.held_back(opts.holdout_images)
    params = {"budget_pt": budget, "holdout_images": opts.holdout_images, "candidates": opts.fallback_candidates,
              "max_float_ops": opts.max_float_ops, "base_recipe": "w8a8", "calibration_images": n}
    key_parts = {"calibration": cal.fingerprint()}
    section = {"budget_pt": budget, "artifact": "w8a8 (litert-quantizer, min-max)", "format": "tflite",
               "refused": {"edgetpu": fallback.refusal_reason("edgetpu")}}
    old = ctx.manifest.reusable(name, stage_key(name, fp32.sha256, key_parts, params, ctx.cfg.seed))
    if old is not None:
        ctx.log(f"  = {name}: reused ({old.path}, inputs unchanged)")
        section.update(plan=old.notes.get("plan"), produced=True)
        _finish(ctx, section)
        return [old]
    blob = fp32.abspath(ctx.run_dir).read_bytes()
    x, ranges = calibrated()
    with tempfile.TemporaryDirectory(dir=ctx.artifact_dir(), prefix=".tflite_fallback.") as work:
        best = Path(work) / "best.tflite"
        backend = litert_ops.tflite_backend(blob, litert_quant.RECIPES["w8a8"], x, ranges, ctx.pre(held.images))
        plan = fallback.plan_fallback(backend, held.labels, budget_pt=budget, candidates=opts.fallback_candidates,
                                      max_float_nodes=opts.max_float_ops, base_exclude=[], out=best, workdir=Path(work),
                                      log=ctx.log)
        section["plan"] = plan.to_dict()
        if not best.exists():
            section.update(produced=False, why_not=f"the w8a8 model loses {plan.int8_drop_pt:.2f} pt on the "
                                                   f"{plan.slice_images}-image held-back slice, within the {budget} pt "
                                                   "budget: no op needs to stay float")
            ctx.log(f"  {name}: not needed ({section['why_not']})")
            _finish(ctx, section)
            return []

        def make(tmp):
            data = best.read_bytes()
            tmp.write_bytes(data)
            summary = litert_quant.check_fully_integer(data, name, allowed_float=True)
            return {**summary, "plan": plan.to_dict(), "float_nodes": plan.float_nodes,
                    "budget_met_on_slice": plan.met,
                    "hybrid": "float ops between DEQUANTIZE/QUANTIZE: " + fallback.refusal_reason("edgetpu")}

        art = ctx.produce(name, "int8_fallback.tflite", key_parts, make, fmt="tflite", precision="int8",
                          method="ptq_fallback", stage="litert_quant", params=params, parent=fp32.name)
    section["produced"] = True
    _finish(ctx, section)
    return [art]


def _finish(ctx, section: dict) -> None:
    ctx.results.set_section("tflite_fallback", section)  # rendered by report.sections.tflite_fallback_markdown
