"""What a stage takes from outside its own config section, as typed inputs resolved in one place.

A stage's options are its own section of the config. Settings it shares with another stage (how every INT8
TFLite is converted, the ONNX opset of every export, the fine-tune a comparison repeats) are resolved here
from the whole config, so no stage module reads another stage's section and a caller can pass them directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgeq.core.config import QatSpec, RunConfig


@dataclass(frozen=True)
class Int8Tflite:
    """How an INT8 TFLite artifact is converted: I/O types and representative images (stages.tflite_ptq)."""

    input_type: str
    output_type: str
    representative_images: int


@dataclass(frozen=True)
class OnnxExport:
    """Keras -> ONNX export settings of the run (stages.onnx_ptq)."""

    opset: int


@dataclass(frozen=True)
class QatInputs:
    tflite: Int8Tflite
    onnx: Optional[OnnxExport]  # None: the run makes no ONNX (stages.onnx_ptq disabled)


@dataclass(frozen=True)
class ComparisonInputs:
    tflite: Int8Tflite
    fine_tune: QatSpec  # the qat stage's fine-tune settings, repeated for the low-bit straight-through cells


def int8_tflite(cfg: RunConfig) -> Int8Tflite:
    p = cfg.stages.tflite_ptq
    return Int8Tflite(p.input_type, p.output_type, p.representative_images)


def qat_inputs(cfg: RunConfig) -> QatInputs:
    onnx = cfg.stages.onnx_ptq
    return QatInputs(int8_tflite(cfg), OnnxExport(onnx.opset) if onnx.enabled else None)


def comparison_inputs(cfg: RunConfig) -> ComparisonInputs:
    return ComparisonInputs(int8_tflite(cfg), cfg.stages.qat)


# stage name -> its inputs from the rest of the config (stages not listed take their own options only)
STAGE_INPUTS = {"qat": qat_inputs, "comparison": comparison_inputs}
