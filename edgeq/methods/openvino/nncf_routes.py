"""NNCF's post-training quantization routes: `nncf.quantize` on an OpenVINO model (-> INT8 IR) or on an ONNX model
(-> INT8 QDQ ONNX), and `nncf.quantize_with_accuracy_control` (-> INT8 IR with the layers it reverted named).

Plain functions on files and arrays. Calibration arrays are already in the model's layout (NCHW for an ONNX
exported by edgeq), one image per NNCF sample, so every route sees the same images edgeq gives the others.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeq.core.errors import QuantizationError, first_line
from edgeq.methods.openvino.convert import import_nncf, import_openvino, read_ir, save_ir


@dataclass(frozen=True)
class NncfOptions:
    """What edgeq passes through to NNCF; recorded in the manifest as given."""

    preset: str | None  # performance | mixed | None (NNCF's default for the model type)
    fast_bias_correction: bool
    subset_size: int
    model_type: str | None  # None | transformer

    def kwargs(self, nncf) -> dict:
        kw = {"subset_size": self.subset_size, "fast_bias_correction": self.fast_bias_correction}
        if self.preset:
            kw["preset"] = {"performance": nncf.QuantizationPreset.PERFORMANCE,
                            "mixed": nncf.QuantizationPreset.MIXED}[self.preset]
        if self.model_type:
            kw["model_type"] = {"transformer": nncf.ModelType.TRANSFORMER}[self.model_type]
        return kw

    def to_dict(self) -> dict:
        return asdict(self)


def _samples(x: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(x[i:i + 1], np.float32) for i in range(len(x))]


def _quantize(nncf, model, dataset, opts: NncfOptions, what: str):
    try:
        return nncf.quantize(model, dataset, **opts.kwargs(nncf))
    except Exception as e:  # NNCF raises its own (nncf.InternalError, ValidationError, RuntimeError) on a refused op
        raise QuantizationError(f"nncf.quantize refused the {what} ({first_line(e)})") from None


def quantize_ir(fp32_ir: Path, out_dir: Path, calibration: np.ndarray, opts: NncfOptions) -> dict:
    """nncf.quantize on the FP32 IR -> INT8 IR directory (FakeQuantize nodes OpenVINO compiles to int8 kernels)."""
    nncf = import_nncf()
    q = _quantize(nncf, read_ir(fp32_ir), nncf.Dataset(_samples(calibration)), opts, "OpenVINO model")
    return {"nncf": nncf.__version__, "backend": "openvino", "calibration_samples": min(len(calibration),
                                                                                        opts.subset_size),
            "fake_quantize_nodes": count_ops(q, "FakeQuantize"), **save_ir(q, out_dir)}


def quantize_onnx(fp32_onnx: Path, out_path: Path, calibration: np.ndarray, input_name: str, opts: NncfOptions) -> dict:
    """nncf.quantize on the FP32 ONNX -> INT8 QDQ ONNX file (its Q/DQ placement is made for OpenVINO)."""
    import onnx

    nncf = import_nncf()
    dataset = nncf.Dataset([{input_name: x} for x in _samples(calibration)])
    q = _quantize(nncf, onnx.load(str(fp32_onnx)), dataset, opts, "ONNX model")
    onnx.save(q, str(out_path))
    ops = [n.op_type for n in q.graph.node]
    return {"nncf": nncf.__version__, "backend": "onnx", "calibration_samples": min(len(calibration), opts.subset_size),
            "quantize_linear_nodes": ops.count("QuantizeLinear"), "dequantize_linear_nodes": ops.count("DequantizeLinear")}


def count_ops(model, op_type: str) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() == op_type)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def accuracy_control_log(lines: list[str]) -> dict:
    """What NNCF's accuracy control did, from its log messages (nncf 3.4 returns the model alone; its report is
    only logged): the top-1 it measured before and after quantization, the drop before any revert, the operations it reverted to
    float, and how it ended."""
    out: dict = {"initial_metric": None, "quantized_metric": None, "drop_before_revert": None, "reverted_layers": [],
                 "outcome": "within the budget without reverting any layer"}
    for line in lines:
        head, _, value = line.partition(": ")
        if head == "Metric of initial model":
            out["initial_metric"] = float(value)
        elif head == "Metric of quantized model" and out["quantized_metric"] is None:
            out["quantized_metric"] = float(value)
        elif head == "Accuracy drop":
            out["drop_before_revert"] = float(value.split()[0])
        elif "were reverted back to the floating-point precision" in line:
            out["reverted_layers"] = [s.strip() for s in line.split("\n")[1:] if s.strip()]
        elif line.startswith("Algorithm completed") or "could not achieve" in line:
            out["outcome"] = line.strip()
    return out


def quantize_ir_with_accuracy_control(fp32_ir: Path, out_dir: Path, calibration: np.ndarray, held_x: np.ndarray,
                                      held_y: np.ndarray, max_drop_points: float, opts: NncfOptions) -> dict:
    """nncf.quantize_with_accuracy_control: INT8 IR whose top-1 drop on (held_x, held_y) — held-back calibration
    images, never the evaluation set — is within `max_drop_points`, reverting the most sensitive layers to float.
    NNCF compiles the models it validates with inference precision f32 (its OVPreparedModel), so the drop it
    measures is against true FP32."""
    nncf = import_nncf()
    import_openvino()
    labels = np.asarray(held_y)

    def validate(compiled, items) -> tuple[float, list[float]]:
        out = compiled.output(0)
        hits = [float(np.argmax(compiled(x)[out]) == y) for x, y in items]
        return float(np.mean(hits)), hits

    validation = nncf.Dataset(list(zip(_samples(held_x), labels.tolist())), lambda item: item[0])
    logger, handler = logging.getLogger("nncf"), _Collect()
    logger.addHandler(handler)
    try:
        q = nncf.quantize_with_accuracy_control(
            read_ir(fp32_ir), nncf.Dataset(_samples(calibration)), validation, validate,
            max_drop=max_drop_points / 100.0, drop_type=nncf.DropType.ABSOLUTE, **opts.kwargs(nncf))
    except Exception as e:  # see _quantize
        raise QuantizationError(f"nncf.quantize_with_accuracy_control refused the OpenVINO model "
                                f"({first_line(e)})") from None
    finally:
        logger.removeHandler(handler)
    return {"nncf": nncf.__version__, "backend": "openvino", "accuracy_control": {
                "max_drop_points": max_drop_points, "drop_type": "absolute top-1", "validation_images": len(labels),
                "validation_precision": "f32", **accuracy_control_log(handler.lines)},
            "calibration_samples": min(len(calibration), opts.subset_size),
            "fake_quantize_nodes": count_ops(q, "FakeQuantize"), **save_ir(q, out_dir)}
