"""The `onnx_fallback` stage: when the host INT8 ONNX (int8_onnx_ptq) misses `max_accuracy_drop` on a held-back
slice of the calibration split, keep its most sensitive nodes float until it does -> `int8_onnx_fallback`.

The slice is the calibration images after the ones ORT calibrated on: never the evaluation split, so the
evaluation of the result stays an honest test. The TensorRT artifact is full-integer by contract and is
refused, with the reason, as is every full-integer target (`fallback.FULL_INTEGER_TARGETS`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path


from edgeq.core.artifacts import Artifact, stage_key
from edgeq.core.config import OnnxFallbackSpec
from edgeq.core.errors import EdgeqError
from edgeq.methods.shared import budget as fallback
from edgeq.methods.onnx.from_keras import INPUT_NAME
from edgeq.loaders.onnx import OnnxInput, read_onnx_input
from edgeq.methods.onnx.ort_int8 import Int8Scheme, host_op_types, prepare, quantize_onnx

NAME = "int8_onnx_fallback"


def _inputs(ctx, host: Artifact) -> tuple[Artifact, OnnxInput]:
    fp32 = ctx.manifest.artifacts.get(host.parent)
    if fp32 is None:
        raise EdgeqError(f"stages.onnx_fallback: {host.name}'s FP32 parent {host.parent} is not in the manifest; "
                         "rerun with stages.onnx_ptq enabled")
    hwc = tuple(ctx.cfg.model.input_shape)
    if ctx.is_onnx_input:
        return fp32, read_onnx_input(fp32.abspath(ctx.run_dir), hwc, where=str(ctx.cfg.model.path))
    return fp32, OnnxInput(INPUT_NAME, [None, hwc[2], hwc[0], hwc[1]], "NCHW", None)


def run_stage(ctx, opts: OnnxFallbackSpec) -> list[Artifact]:
    """int8_onnx_fallback when int8_onnx_ptq misses the budget on the held-back slice; else nothing (and why)."""
    host = ctx.manifest.artifacts.get("int8_onnx_ptq")
    if host is None:
        raise EdgeqError("stages.onnx_fallback needs the host INT8 ONNX (int8_onnx_ptq): enable stages.onnx_ptq")
    budget = ctx.cfg.max_accuracy_drop
    section: dict = {"budget_pt": budget, "artifact": host.name,
                     "refused": {a: fallback.refusal_reason(kind) for a, kind in (("int8_onnx_trt", "jetson"),
                                                                                  ("int8_tflite_ptq", "edgetpu"))}}
    fp32, info = _inputs(ctx, host)
    cal = ctx.splits.calibration
    n = int(host.params["calibration_images"])
    if n + opts.holdout_images > len(cal):
        raise EdgeqError(f"stages.onnx_fallback.holdout_images ({opts.holdout_images}) come after the {n} images ORT "
                         f"calibrated on, but the calibration split has {len(cal)}; raise data.calibration_size or "
                         "lower holdout_images")
    held = ctx.calibration(n, "stages.onnx_ptq.calibration_images").held_back(opts.holdout_images)
    scheme = Int8Scheme(**host.params["scheme"])
    params = {"budget_pt": budget, "holdout_images": opts.holdout_images, "candidates": opts.candidates,
              "max_float_nodes": opts.max_float_nodes, "base": host.name}
    key_parts = {"calibration": cal.fingerprint(), "host": host.sha256}
    key = stage_key(NAME, fp32.sha256, key_parts, params, ctx.cfg.seed)
    old = ctx.manifest.reusable(NAME, key)
    if old is not None:
        ctx.log(f"  = {NAME}: reused ({old.path}, inputs unchanged)")
        section.update(plan=old.notes.get("plan"), produced=True)
        _finish(ctx, section)
        return [old]
    with tempfile.TemporaryDirectory(dir=ctx.artifact_dir(), prefix=".onnx_fallback.") as work:
        work = Path(work)
        prepared = prepare(fp32.abspath(ctx.run_dir), info, tuple(ctx.cfg.model.input_shape), work, fp32.name)
        calibration = ctx.pre(cal.images[:n])
        base_exclude = list(host.params.get("exclude_nodes") or [])

        def quantize(exclude: list[str], out: Path) -> None:
            quantize_onnx(prepared, out, scheme, calibration, input_name=info.name, nchw=info.layout == "NCHW",
                          batch=info.batch, calibration_method=host.params["calibration_method"],
                          exclude_nodes=exclude, op_types=host_op_types(scheme.quant_format), name=NAME,
                          calibration_cache=work / "ranges.json")

        best = work / "best.onnx"
        backend = fallback.onnx_backend(prepared, quantize, ctx.pre(held.images), input_name=info.name,
                                        nchw=info.layout == "NCHW", batch=info.batch, workdir=work)
        plan = fallback.plan_fallback(backend, held.labels, budget_pt=budget, candidates=opts.candidates,
                                      max_float_nodes=opts.max_float_nodes, base_exclude=base_exclude, out=best,
                                      workdir=work, log=ctx.log)
        section["plan"] = plan.to_dict()
        if not best.exists():
            section["produced"] = False
            section["why_not"] = (f"{host.name} loses {plan.int8_drop_pt:.2f} pt on the {plan.slice_images}-image "
                                  f"held-back slice, within the {budget} pt budget: no node needs to stay float")
            ctx.log(f"  {NAME}: not needed ({section['why_not']})")
            _finish(ctx, section)
            return []

        def make(tmp: Path) -> dict:
            tmp.write_bytes(best.read_bytes())
            return {"plan": plan.to_dict(), "float_nodes": plan.float_nodes, "budget_met_on_slice": plan.met,
                    "size_vs_int8": round(best.stat().st_size / host.size_bytes, 4),
                    "size_cost_bytes": best.stat().st_size - host.size_bytes,
                    "latency_cost": "measured by the host benchmark (interleaved with int8_onnx_ptq)",
                    "scheme": scheme.to_dict(), "graph_optimization": host.notes.get("graph_optimization")}

        art = ctx.produce(NAME, "int8_fallback.onnx", key_parts, make, fmt="onnx", precision="int8",
                          method="ptq_fallback", stage="onnx_fallback", params=params, parent=fp32.name)
    section["produced"] = True
    _finish(ctx, section)
    return [art]


def _finish(ctx, section: dict) -> None:
    ctx.results.set_section("onnx_fallback", section)  # rendered by report.sections.onnx_fallback_markdown
