"""Compatibility checks that need no device, run over a run's artifacts once the stages have made them.

Today: TensorRT readiness of every INT8 ONNX artifact (`tensorrt_check`), recorded as
the artifact's "tensorrt" compatibility record, the form device checks use too.
"""
from __future__ import annotations

from edgeq.targets.tensorrt_check import check_tensorrt_qdq


def check_artifacts(ctx, artifacts: list) -> None:
    """Check each INT8 ONNX artifact against TensorRT's explicit-quantization rules and record the result (the
    report shows it in the onnx_ptq section, rendered afterwards)."""
    for a in (a for a in artifacts if a.format == "onnx" and a.precision == "int8"):
        c = check_tensorrt_qdq(a.abspath(ctx.run_dir), a.name)
        ctx.results.put_compatibility(a.name, "tensorrt", c.to_dict())
    ctx.results.save()
