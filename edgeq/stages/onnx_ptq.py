"""The `onnx_ptq` stage: FP32 ONNX (tf2onnx export, or the run's ONNX input) -> ONNX Runtime static INT8.

Two INT8 models come out of one calibration split (schemes in `ort_int8`):
- `int8_onnx_ptq`: for ONNX Runtime on this host, with the int8 scheme chosen from the CPU's int8 features;
- `int8_onnx_trt`: symmetric int8 QDQ with per-channel weights and float biases, the form TensorRT's explicit
  quantization takes. Its TensorRT readiness is checked after the stages, by `edgeq.targets.offline_checks`.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

from edgeq.core.artifacts import Artifact
from edgeq.core.config import OnnxPtqSpec
from edgeq.core.errors import QuantizationError
from edgeq.core.sysinfo import cpu_info
from edgeq.methods.onnx import advanced as onnx_advanced
from edgeq.methods.onnx import ranges as onnx_ranges
from edgeq.loaders.onnx import OnnxInput
from edgeq.stages.support.fp32_onnx import fp32_onnx
from edgeq.methods.onnx.ort_int8 import (TENSORRT_SCHEME, Int8Scheme, host_op_types, ort_kernel_summary, prepare, quantize_onnx, resolve_host_scheme, tensorrt_op_types)

# evaluate what TensorRT computes (int8 Q/DQ, int32 accumulation), not what ORT's fused CPU kernels make of a
# symmetric int8 graph: at the basic level ORT runs the Q/DQ nodes as written
TENSORRT_NOTES = {
    "graph_optimization": "basic",
    "graph_optimization_why": "TensorRT artifact: ORT runs its Q/DQ nodes as written (basic level), "
                              "the int8 arithmetic TensorRT performs",
    # the device kinds it is made for; the host and device CPUs refuse it with `why`
    "only_for": {"kinds": ["jetson"], "why": "built for TensorRT (Jetson target); ONNX Runtime on a CPU is not "
                                             "where it runs, see int8_onnx_ptq for CPUs"}}


def run_stage(ctx, opts: OnnxPtqSpec) -> list[Artifact]:
    """The FP32 ONNX model (exported, or the input) quantized for this host and, optionally, for TensorRT."""
    calibration = ctx.calibration(opts.calibration_images, "stages.onnx_ptq.calibration_images")
    n = calibration.n
    fp32, info, section = fp32_onnx(ctx, opts.opset)
    out = [] if fp32 is ctx.fp32 else [fp32]
    cal = ctx.splits.calibration
    cal_key = {"calibration": cal.fingerprint(), "n": n, "input": asdict(info)}
    cpu = cpu_info()
    cpu_notes = {k: cpu[k] for k in ("model", "machine", "simd", "int8_dot_product")}
    host, chosen = resolve_host_scheme(opts, cpu)
    with tempfile.TemporaryDirectory(dir=ctx.artifact_dir(), prefix=".onnx_ptq.") as work:
        q = _Quantizer(ctx, opts, fp32, info, calibration.array(), cpu_notes, Path(work))
        host_params = {**opts.model_dump(include={"quant_format", "per_channel", "calibration_method",
                                                  "exclude_nodes", "calibration_images"}),
                       "scheme": host.to_dict(), "chosen_by": chosen}
        make = q.maker("int8_onnx_ptq", host, host_op_types(host.quant_format), True, {})
        out.append(ctx.produce("int8_onnx_ptq", "int8_ptq.onnx", {**cal_key, "level": opts.graph_optimization}, make,
                               fmt="onnx", precision="int8", method="ptq", stage="onnx_ptq", params=host_params,
                               parent=fp32.name))
        if opts.advanced:
            try:
                naive = out[-1] if opts.calibration_method == "minmax" else None  # the min-max candidate, made
                out.append(_advanced(ctx, opts, q, host, fp32, info, n, {**cal_key, "level": opts.graph_optimization},
                                     host_params, naive.abspath(ctx.run_dir) if naive else None))
            except QuantizationError as e:  # the naive and TensorRT models stand; the section says why not
                section["advanced_not_made"] = str(e)
                ctx.log(f"  - int8_onnx_ptq_adv: not made: {e}")
        if opts.tensorrt_artifact:
            trt_params = {**opts.model_dump(include={"calibration_method", "exclude_nodes", "calibration_images"}),
                          "scheme": TENSORRT_SCHEME.to_dict()}
            make = q.maker("int8_onnx_trt", TENSORRT_SCHEME, tensorrt_op_types(), False, TENSORRT_NOTES)
            out.append(ctx.produce("int8_onnx_trt", "int8_trt.onnx", cal_key, make, fmt="onnx", precision="int8",
                                   method="ptq", stage="onnx_ptq", params=trt_params, parent=fp32.name))
    section.update({"host_scheme": {**host.to_dict(), "chosen_by": chosen},
                    "tensorrt_scheme": TENSORRT_SCHEME.to_dict() if opts.tensorrt_artifact else None,
                    "cpu": cpu_notes})
    ctx.results.set_section("onnx_ptq", section)
    return out


def _advanced(ctx, opts: OnnxPtqSpec, q: "_Quantizer", host: Int8Scheme, fp32: Artifact, info: OnnxInput, n: int,
              key: dict, host_params: dict, minmax_model: Path | None = None) -> Artifact:
    """int8_onnx_ptq_adv: per-tensor range methods (and cross-layer equalisation for a Keras input), each kept
    only where the measured output error on held-back calibration images says so (`onnx_advanced`)."""
    held_images = ctx.calibration(n, "stages.onnx_ptq.calibration_images").held_back(opts.selection_images)
    held, where = ctx.pre(held_images.images), held_images.source
    hwc = tuple(ctx.cfg.model.input_shape)

    def make(tmp: Path) -> dict:
        eq = None if ctx.is_onnx_input else onnx_advanced.equalized_onnx(ctx.keras_model(), q.calibration, opts.opset,
                                                                         info, hwc, q.workdir)
        notes = onnx_advanced.quantize_advanced(
            tmp, prepared=q.prepared(), scheme=host, op_types=host_op_types(host.quant_format),
            calibration=q.calibration, held=held, input_name=info.name, nchw=info.layout == "NCHW", batch=info.batch,
            exclude_nodes=opts.exclude_nodes, workdir=q.workdir, equalized_prepared=eq, minmax_model=minmax_model)
        notes["selection"] += f" ({where})"
        notes.update(input_layout=info.layout, cpu=q.cpu_notes,
                     ort_kernels=ort_kernel_summary(tmp, opts.graph_optimization))
        return notes

    return ctx.produce("int8_onnx_ptq_adv", "int8_ptq_adv.onnx", {**key, "held": where}, make, fmt="onnx",
                       precision="int8", method="ptq_advanced", stage="onnx_ptq",
                       params={**host_params, "advanced": True, "selection_images": opts.selection_images,
                               "histogram_images": onnx_ranges.HISTOGRAM_IMAGES},
                       parent=fp32.name)


class _Quantizer:
    """Makes the INT8 models of one FP32 ONNX; ORT's pre-processing runs once, and only if one is made."""

    def __init__(self, ctx, opts: OnnxPtqSpec, fp32: Artifact, info: OnnxInput, calibration, cpu_notes: dict,
                 workdir: Path):
        self.ctx, self.opts, self.fp32, self.info = ctx, opts, fp32, info
        self.calibration, self.cpu_notes, self.workdir = calibration, cpu_notes, workdir
        self._prepared: Path | None = None

    def prepared(self) -> Path:
        if self._prepared is None:
            self._prepared = prepare(self.fp32.abspath(self.ctx.run_dir), self.info,
                                     tuple(self.ctx.cfg.model.input_shape), self.workdir, self.fp32.name)
        return self._prepared

    def maker(self, name: str, scheme: Int8Scheme, op_types: list[str], runs_in_ort: bool, extra_notes: dict):
        """make(tmp) for ctx.produce: quantize with `scheme`; for a host model, what ORT's optimiser makes of it."""
        opts, info = self.opts, self.info

        def make(tmp: Path) -> dict:
            notes = quantize_onnx(self.prepared(), tmp, scheme, self.calibration, input_name=info.name,
                                  nchw=info.layout == "NCHW", batch=info.batch,
                                  calibration_method=opts.calibration_method, exclude_nodes=opts.exclude_nodes,
                                  op_types=op_types, name=name)
            notes.update(input_layout=info.layout, cpu=self.cpu_notes, **extra_notes)
            if runs_in_ort:  # the evidence that every Conv runs as an int8 kernel
                notes["ort_kernels"] = ort_kernel_summary(tmp, opts.graph_optimization)
            return notes
        return make
