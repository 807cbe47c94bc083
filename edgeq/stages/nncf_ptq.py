"""The `nncf_ptq` stage: NNCF + OpenVINO as a toolchain judged beside edgeq's own routes, on the same images.

From the run's FP32 ONNX (the input, or the Keras model exported as `fp32_onnx`, shared with onnx_ptq):
- `fp32_openvino`: the FP32 OpenVINO IR (ov.convert_model, weights not compressed to FP16), run at f32;
- route `openvino` -> `int8_openvino_nncf`: nncf.quantize on the IR, run by OpenVINO;
- route `onnx` -> `int8_onnx_nncf`: nncf.quantize on the ONNX (QDQ), run by ONNX Runtime like every ONNX artifact,
  and host-timed on OpenVINO too (notes.also_timed_on; OpenVINO reads the .onnx at f32), each figure naming its
  runtime: its Q/DQ placement is made for OpenVINO, and a route is judged on the runtime that runs it;
- `precision_variants` -> `bf16_openvino` / `f16_openvino`: the FP32 IR naming its own inference precision, made only
  where OpenVINO reports the CPU has the instructions;
- route `openvino_ac` -> `int8_openvino_nncf_ac`: nncf.quantize_with_accuracy_control within max_accuracy_drop on
  held-back calibration images (never the evaluation split), the layers it reverted to float named in its notes.
Every route sees the first `calibration_images` of the calibration split, preprocessed as for every other route.
A route that cannot be made (openvino/nncf missing, an op NNCF refuses) is recorded as not made with the reason;
the others stand.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.core.artifacts import Artifact
from edgeq.core.options import NncfPtqSpec
from edgeq.core.errors import ModelError, QuantizationError, RuntimeUnavailable
from edgeq.loaders.onnx import OnnxInput, read_onnx_input
from edgeq.methods.openvino import convert as ov_convert
from edgeq.methods.openvino import nncf_routes
from edgeq.stages.support.fp32_onnx import fp32_onnx as export_fp32_onnx

INFERENCE_PRECISION = "f32"  # what every artifact of this stage is evaluated and timed at (OpenVINO's hint)
CHECK_IMAGES = 16  # calibration images the FP32 IR is checked on against the FP32 ONNX
NOT_MADE = (RuntimeUnavailable, QuantizationError, ModelError)
ALSO_TIMED_ON = ("openvino",)  # int8_onnx_nncf's runtimes besides ONNX Runtime (targets.host.also_timed_on)
ROUTE_ARTIFACTS = {"openvino": "int8_openvino_nncf", "onnx": "int8_onnx_nncf", "openvino_ac": "int8_openvino_nncf_ac"}


def run_stage(ctx, opts: NncfPtqSpec) -> list[Artifact]:
    """The FP32 IR and one INT8 artifact per NNCF route; routes that cannot be made are named with the reason."""
    calibration = ctx.calibration(opts.calibration_images, "stages.nncf_ptq.calibration_images")
    n = calibration.n
    fp32_onnx, info = _fp32_onnx_of(ctx)
    out = [] if fp32_onnx is ctx.fp32 else [fp32_onnx]
    nchw = info.layout == "NCHW"
    cal = ctx.splits.calibration
    x = calibration.array("NCHW" if nchw else "NHWC")
    nncf_opts = nncf_routes.NncfOptions(opts.preset, opts.fast_bias_correction, n, opts.model_type)
    params = {**nncf_opts.to_dict(), "calibration_images": n, "inference_precision": INFERENCE_PRECISION}
    key = {"calibration": cal.fingerprint(), "n": n, "nncf": nncf_opts.to_dict()}
    section: dict = {"inference_precision": INFERENCE_PRECISION, "fp32_onnx": fp32_onnx.name, "input_layout": info.layout, "options": params, "not_made": {},
                     "seconds": {}}

    def attempt(name: str, make_artifact):
        try:
            a = make_artifact()
        except NOT_MADE as e:
            section["not_made"][name] = str(e)
            ctx.log(f"  - {name}: not made: {e}")
            return None
        section["seconds"][name] = a.notes.get("seconds")
        out.append(a)
        return a

    fp32_ir = attempt("fp32_openvino", lambda: _fp32_ir(ctx, fp32_onnx, x[:CHECK_IMAGES]))
    for p in opts.precision_variants:
        if fp32_ir is None:
            section["not_made"][f"{p}_openvino"] = f"no FP32 OpenVINO IR ({section['not_made']['fp32_openvino']})"
        else:
            attempt(f"{p}_openvino", lambda: _precision_variant(ctx, fp32_ir, p))
    route = _Route(ctx, x, nchw, key, params, nncf_opts)
    for r in opts.routes:
        name = ROUTE_ARTIFACTS[r]
        if r == "onnx":
            attempt(name, lambda: route.onnx(fp32_onnx, info))
        elif fp32_ir is None:
            section["not_made"][name] = f"no FP32 OpenVINO IR to quantize ({section['not_made']['fp32_openvino']})"
        elif r == "openvino":
            attempt(name, lambda: route.openvino(fp32_ir))
        else:
            attempt(name, lambda: route.accuracy_control(fp32_ir, opts.validation_images))
    ctx.results.set_section("nncf_ptq", section)
    return out


def _layout(x_nhwc: np.ndarray, nchw: bool) -> np.ndarray:
    return np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2) if nchw else x_nhwc, np.float32)


def _fp32_onnx_of(ctx) -> tuple[Artifact, OnnxInput]:
    """The run's FP32 ONNX: its input as given, or the Keras model exported exactly as onnx_ptq exports it (the same
    artifact `fp32_onnx`, reused when onnx_ptq made it)."""
    if ctx.is_onnx_input:
        hwc = tuple(ctx.cfg.model.input_shape)
        return ctx.fp32, read_onnx_input(ctx.fp32.abspath(ctx.run_dir), hwc, where=ctx.cfg.model.path)
    fp32, info, _ = export_fp32_onnx(ctx, ctx.cfg.stages.onnx_ptq.opset)
    return fp32, info


def _fp32_ir(ctx, fp32_onnx: Artifact, check_x: np.ndarray) -> Artifact:
    """fp32_openvino, checked on calibration images against the FP32 ONNX under ONNX Runtime at f32."""
    src = fp32_onnx.abspath(ctx.run_dir)

    def make(tmp: Path) -> dict:
        notes = ov_convert.onnx_to_ir(src, tmp)
        notes["max_rel_diff_vs_onnx"] = ov_convert.max_rel_diff_vs_onnx(tmp, src, check_x)
        notes["checked_on"] = f"{len(check_x)} calibration images, inference precision {INFERENCE_PRECISION}"
        return notes

    return ctx.produce("fp32_openvino", "fp32.openvino", {"onnx": fp32_onnx.sha256}, make, fmt="openvino",
                       precision="fp32", method="none", stage="nncf_ptq",
                       params={"converter": "ov.convert_model", "compress_to_fp16": False,
                               "inference_precision": INFERENCE_PRECISION}, parent=fp32_onnx.name)


def _precision_variant(ctx, fp32_ir: Artifact, precision: str) -> Artifact:
    """bf16_openvino / f16_openvino: the FP32 IR naming its own inference precision (its own artifact and hash), made
    only where OpenVINO says this CPU has the instructions; paired with fp32_openvino like any other artifact."""
    why = ov_convert.cpu_runs(precision)
    if why:
        raise RuntimeUnavailable(why)
    src = fp32_ir.abspath(ctx.run_dir)
    return ctx.produce(f"{precision}_openvino", f"{precision}.openvino", {"precision": precision},
                       lambda tmp: ov_convert.precision_variant(src, tmp, precision), fmt="openvino",
                       precision=precision, method="inference_precision", stage="nncf_ptq",
                       params={"inference_precision": precision, "converter": "rt_info runtime_options"},
                       parent=fp32_ir.name)


class _Route:
    """Makes one NNCF route's artifact from the shared calibration images, key and parameters."""

    def __init__(self, ctx, x: np.ndarray, nchw: bool, key: dict, params: dict, nncf_opts):
        self.ctx, self.x, self.nchw, self.key, self.params, self.nncf_opts = ctx, x, nchw, key, params, nncf_opts

    def openvino(self, fp32_ir: Artifact) -> Artifact:
        """int8_openvino_nncf: nncf.quantize on the FP32 IR, run by OpenVINO at f32."""
        src = fp32_ir.abspath(self.ctx.run_dir)
        return self.ctx.produce(
            ROUTE_ARTIFACTS["openvino"], "int8_nncf.openvino", self.key,
            lambda tmp: nncf_routes.quantize_ir(src, tmp, self.x, self.nncf_opts), fmt="openvino", precision="int8",
            method="nncf_ptq", stage="nncf_ptq", params={**self.params, "route": "nncf.quantize(openvino)"},
            parent=fp32_ir.name)

    def onnx(self, fp32_onnx: Artifact, info: OnnxInput) -> Artifact:
        """int8_onnx_nncf: nncf.quantize on the FP32 ONNX -> QDQ ONNX, run by ONNX Runtime like every ONNX artifact and
        host-timed on OpenVINO as well."""
        src = fp32_onnx.abspath(self.ctx.run_dir)

        def make(tmp: Path) -> dict:
            notes = nncf_routes.quantize_onnx(src, tmp, self.x, info.name, self.nncf_opts)
            return {**notes, "runs_on": "onnxruntime (its Q/DQ placement is NNCF's, made for OpenVINO)",
                    "also_timed_on": list(ALSO_TIMED_ON), "input_layout": info.layout}

        params = {k: v for k, v in self.params.items() if k != "inference_precision"}  # not an OpenVINO artifact
        key = {**self.key, "input": info.name, "also_timed_on": list(ALSO_TIMED_ON)}
        return self.ctx.produce(ROUTE_ARTIFACTS["onnx"], "int8_nncf.onnx", key, make,
                                fmt="onnx", precision="int8", method="nncf_ptq", stage="nncf_ptq",
                                params={**params, "route": "nncf.quantize(onnx)"}, parent=fp32_onnx.name)

    def accuracy_control(self, fp32_ir: Artifact, validation_images: int) -> Artifact:
        """int8_openvino_nncf_ac: within max_accuracy_drop on held-back calibration images (never the eval split)."""
        ctx, n = self.ctx, self.nncf_opts.subset_size
        held = self.ctx.calibration(n, "stages.nncf_ptq.calibration_images").held_back(validation_images)
        held_x = _layout(ctx.pre(held.images), self.nchw)
        budget = ctx.cfg.max_accuracy_drop
        src = fp32_ir.abspath(ctx.run_dir)

        def make(tmp: Path) -> dict:
            notes = nncf_routes.quantize_ir_with_accuracy_control(src, tmp, self.x, held_x, held.labels, budget,
                                                                  self.nncf_opts)
            notes["accuracy_control"]["validated_on"] = held.source
            return notes

        return ctx.produce(ROUTE_ARTIFACTS["openvino_ac"], "int8_nncf_ac.openvino",
                           {**self.key, "held": held.source, "budget": budget}, make, fmt="openvino", precision="int8",
                           method="nncf_ptq_accuracy_control", stage="nncf_ptq",
                           params={**self.params, "route": "nncf.quantize_with_accuracy_control(openvino)",
                                   "max_accuracy_drop": budget, "validation_images": len(held)},
                           parent=fp32_ir.name)
