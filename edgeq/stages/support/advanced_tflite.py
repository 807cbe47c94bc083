"""The comparison stage's real advanced-PTQ artifacts (the "PTQ advanced" cells that a runtime runs).

- `int8_tflite_ptq_adv`: bias correction on the converter's own grid, with and without cross-layer equalisation,
  the one with the lower output error against FP32 on held-back calibration images kept;
- `int4_tflite_ptq_adv`: GPTQ-rounded Conv2D/Dense kernels made a real W4A8 .tflite by litert-quantizer.
"""
from __future__ import annotations


from edgeq.core.artifacts import Artifact
from edgeq.core.config import ComparisonSpec
from edgeq.core.errors import QuantizationError
from edgeq.methods.keras import bias_correction as advanced
from edgeq.methods.keras import equalize, gptq
from edgeq.methods.tflite import convert as tflite_ptq
from edgeq.methods.tflite import litert as litert_quant
from edgeq.stages.support.inputs import Int8Tflite


def calibration_batches(ctx, opts: ComparisonSpec):
    """The comparison's calibration images in batches of 32 (bias correction, equalisation ranges, GPTQ)."""
    return ctx.calibration(opts.calibration_images, "stages.comparison.calibration_images").batches(32)


def int8_advanced(ctx, opts: ComparisonSpec, conv: Int8Tflite, model) -> Artifact:
    """int8_tflite_ptq_adv: the better of bias correction alone and cross-layer equalisation + bias correction,
    chosen by the INT8 model's measured output error against FP32 on held-back calibration images."""
    rep = ctx.calibration(conv.representative_images, "stages.tflite_ptq.representative_images")
    n_rep = rep.n
    held = ctx.calibration(max(n_rep, opts.calibration_images), "stages.comparison.calibration_images").held_back(
        opts.selection_images)
    params = {"bits": 8, "weights": "bias-corrected, on the converter's per-channel max grid",
              "equalize": opts.equalize, "selection_images": opts.selection_images,
              "calibration_images": opts.calibration_images, "representative_images": n_rep,
              "input_type": conv.input_type, "output_type": conv.output_type}

    def convert(m, label: str) -> bytes:
        return tflite_ptq.convert_int8(m, rep.one_at_a_time(), input_type=conv.input_type,
                                       output_type=conv.output_type, per_channel=True, name=label,
                                       calibration_images=n_rep)

    def make(tmp):
        # No clipping at 8 bits: the converter recomputes each channel's scale from max|w|, so only
        # values already on that grid survive conversion unchanged.
        candidates = {}
        corrected, rep = advanced.quantize_weights_advanced(model, 8, calibration_batches(ctx, opts), clipping=False,
                                                            label="int8_tflite_ptq_adv: advanced PTQ")
        candidates["bias_correction"] = (convert(corrected, "int8_tflite_ptq_adv"), rep.to_dict())
        eq_notes: dict = {"equalized_pairs": 0}
        if opts.equalize and equalize.find_pairs(model):
            eq_model, eq_rep = equalize.equalize(model, calibration_batches(ctx, opts),
                                                 label="int8_tflite_ptq_adv: cross-layer equalisation")
            eq_notes = eq_rep.to_dict()
            corrected, rep = advanced.quantize_weights_advanced(eq_model, 8, calibration_batches(ctx, opts),
                                                                clipping=False,
                                                                label="int8_tflite_ptq_adv: equalised, advanced PTQ")
            candidates["equalization+bias_correction"] = (convert(corrected, "int8_tflite_ptq_adv (equalised)"),
                                                          rep.to_dict())
        x = ctx.pre(held.images)
        errors = advanced.tflite_output_errors(model.predict(x, batch_size=64, verbose=0),
                                               {k: blob for k, (blob, _) in candidates.items()}, x)
        chosen = advanced.lowest_error(errors)
        blob, rep = candidates[chosen]
        tmp.write_bytes(blob)
        notes = {**rep, "route": chosen, "equalization": eq_notes, "candidates": errors,
                 "selection": f"lowest output MSE against FP32 on {len(held)} held-back calibration images "
                              f"({held.source})", **tflite_ptq.int8_notes(blob, model)}
        if ctx.is_onnx_input:  # a translated model holds no Keras kernels: the size floor from the ONNX weights
            from edgeq.methods.onnx.to_tf import param_floor_bytes

            notes["size_floor"] = param_floor_bytes(ctx.fp32.abspath(ctx.run_dir))
        return notes

    return ctx.produce("int8_tflite_ptq_adv", "int8_ptq_adv.tflite", {"calibration": ctx.splits.calibration.fingerprint()}, make,
                       fmt="tflite", precision="int8", method="ptq_advanced", stage="comparison", params=params,
                       parent=ctx.fp32.name)


def int4_gptq(ctx, opts: ComparisonSpec, model) -> Artifact | None:
    """int4_tflite_ptq_adv: GPTQ-rounded Conv2D/Dense kernels on LiteRT's int4 grid, made a real W4A8 .tflite by
    litert-quantizer's min-max recipe, which keeps every GPTQ code (checked); None, with the reason logged, where
    litert-quantizer is not installed (the INT4 advanced cell is then simulated)."""
    calibration = ctx.calibration(opts.calibration_images, "stages.comparison.calibration_images")
    n = calibration.n
    params = {"bits": 4, "rounding": "GPTQ, Conv2D/Dense, per-channel max grid", "recipe": "w4a8",
              "calibration_images": n, "litert_quantizer": litert_quant.quantizer_version()}

    def make(tmp):
        gm, rep = gptq.gptq_model(model, 4, calibration_batches(ctx, opts), label="int4_tflite_ptq_adv: GPTQ")
        fp32 = tflite_ptq.convert_fp32(gm, name="int4_tflite_ptq_adv: FP32 .tflite of the GPTQ model")
        data, notes = litert_quant.quantize_tflite(fp32, litert_quant.RECIPES["w4a8"], calibration.array(),
                                                   name="int4_tflite_ptq_adv")
        kept = gptq.codes_kept(gm, 4, litert_quant.int4_codes(data))
        tmp.write_bytes(data)
        return {**notes, "rounding": "GPTQ (Hessian-based) on Conv2D/Dense kernels; depthwise int8 min-max",
                "gptq": rep.to_dict(), "gptq_codes_kept": kept}

    why = litert_quant.unavailable_reason()
    if why:
        ctx.log(f"  - int4_tflite_ptq_adv: not made ({why}); the INT4 advanced cell is simulated")
        return None
    try:
        return ctx.produce("int4_tflite_ptq_adv", "int4_ptq_adv.tflite", {"calibration": ctx.splits.calibration.fingerprint()}, make,
                           fmt="tflite", precision="int4", method="ptq_advanced", stage="comparison", params=params,
                           parent=ctx.fp32.name)
    except QuantizationError as e:  # e.g. an op litert-quantizer cannot take: the INT4 cell is simulated instead
        ctx.log(f"  - int4_tflite_ptq_adv: not made ({e}); the INT4 advanced cell is simulated")
        return None
