"""The `litert_quant` stage: LiteRT Quantizer recipes over the run's FP32 .tflite -> W8A8 / W4A8 artifacts.

Takes only the FP32 TFLite artifact (made by `tflite_ptq` with export_fp32, or by a converted ONNX input) and
the calibration split, so any input model that reaches .tflite gets these artifacts.
"""
from __future__ import annotations

from ..artifacts import Artifact
from ..config import LitertQuantSpec
from ..errors import EdgeqError
from . import litert_quant
from .calibration import calibration_count

FILE_OF = {"w8a8": "int8_lq.tflite", "w8a8_octav": "int8_lq_octav.tflite", "w8a8_gptq": "int8_lq_gptq.tflite",
           "w4a8": "int4_w4a8.tflite", "w4a8_octav": "int4_w4a8_octav.tflite"}


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
    if fp32 is None and ctx.is_onnx_input:  # until an ONNX input is converted to .tflite too
        ctx.log("  litert_quant skipped: the ONNX input model has no FP32 .tflite")
        ctx.results.sections.setdefault("skipped", {})["litert_quant"] = "ONNX input: no FP32 .tflite"
        return []
    if fp32 is None:
        raise EdgeqError("stages.litert_quant needs the run's FP32 .tflite: enable stages.tflite_ptq with "
                         "export_fp32: true (or disable stages.litert_quant)")
    cal = ctx.splits.calibration
    n = calibration_count(cal, opts.calibration_images, "stages.litert_quant.calibration_images")
    x = ranges = None
    out = []
    for name in opts.recipes:
        recipe = litert_quant.RECIPES[name]
        art = artifact_name(recipe)

        def make(tmp, recipe=recipe, art=art):
            nonlocal x, ranges
            blob = fp32.abspath(ctx.run_dir).read_bytes()
            if ranges is None:  # preprocess and calibrate once, only when something is made
                x = ctx.pre(cal.images[:n])
                ranges = litert_quant.calibrate_ranges(blob, x, name="litert_quant")
            data, notes = litert_quant.quantize_tflite(blob, recipe, x, name=art, ranges=ranges)
            tmp.write_bytes(data)
            notes["size_vs_fp32_tflite"] = round(len(data) / fp32.size_bytes, 4)
            return notes

        params = {"recipe": name, "weight_bits": recipe.weight_bits, "activation_bits": 8,
                  "range_method": recipe.range_method, "rounding": recipe.rounding, "calibration_images": n,
                  "litert_quantizer": litert_quant._version("litert-quantizer")}
        out.append(ctx.produce(art, FILE_OF[name], {"calibration": cal.fingerprint(), "n": n,
                                                    "recipe": litert_quant.recipe_entries(recipe)}, make,
                               fmt="tflite", precision=recipe.precision, method=recipe.method, stage="litert_quant",
                               params=params, parent=fp32.name))
    return out
