"""Per-layer int4 sensitivity without one quantization per layer: the all-int8 (W8A8) model with one layer's weights
replaced by that layer's real int4 weights, taken from the uniform W4A8 model of the same calibration.

Both models come from one litert-quantizer calibration (the same activation ranges), so the W8A8 model with layer
l's weights set to W4A8's int4 codes x scales is, up to the int8 grid that represents them, the model a plan with only
l at int4 makes. The int4 value `q4 * s4` is stored on l's own int8 grid (`round(q4 * s4 / s8)`): an error of at most
half an int8 step, ~1/18 of an int4 step, so the substituted model carries the int4 rounding error and nothing else.
Each substituted model is a byte patch of one buffer in a copy of the W8A8 file (no re-serialisation, no
re-quantization): on ResNet-50 a model costs its inference on the held-back images, not a litert-quantizer run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeq.core.errors import QuantizationError

_INT8, _INT4 = 9, 17  # TFLite TensorType


@dataclass(frozen=True)
class Slot:
    """Where one layer's weights live in a .tflite file: byte offset of its buffer, element count, per-channel
    scales (along axis 0, the output channels of CONV_2D / FULLY_CONNECTED weights) and stored type."""

    offset: int
    count: int
    scales: np.ndarray
    channels: int
    tensor_type: int


def weight_slots(data: bytes) -> dict[str, Slot]:
    """Every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op (by output tensor name) with a quantized constant
    weight tensor (int8 or int4), read from the flatbuffer itself."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from edgeq.methods.tflite.litert import WEIGHT_OPS, _builtin_names

    buf = bytearray(data) if not isinstance(data, bytearray) else data
    m = schema.Model.GetRootAs(buf, 0)
    g = m.Subgraphs(0)
    names = _builtin_names()
    out = {}
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex())
        if names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())) not in WEIGHT_OPS or op.InputsLength() < 2:
            continue
        w = g.Tensors(op.Inputs(1))
        if w.Type() not in (_INT8, _INT4):
            continue
        q = w.Quantization()
        if q is None or q.QuantizedDimension() != 0:
            continue
        shape = w.ShapeAsNumpy()
        count = int(np.prod(shape))
        b = m.Buffers(w.Buffer())
        o = flatbuffers.number_types.UOffsetTFlags.py_type(b._tab.Offset(4))  # Buffer.data
        # litert-quantizer writes constants after the flatbuffer: Buffer.offset/size, from the file's start
        start = b._tab.Vector(o) if o else b.Offset() if b.Offset() > 1 else None
        size = b._tab.VectorLen(o) if o else b.Size()
        name = g.Tensors(op.Outputs(0)).Name().decode(errors="replace")
        if start is None or size != (count if w.Type() == _INT8 else (count + 1) // 2) or start + size > len(buf):
            raise QuantizationError(f"the weights of {name} are not where the .tflite says (buffer {w.Buffer()}): "
                                    "int4 substitution cannot patch them; use stages.mixed_precision.sensitivity: "
                                    "models")
        out[name] = Slot(start, count, np.asarray(q.ScaleAsNumpy(), np.float64), int(shape[0]), w.Type())
    return out


def _values(data: bytes, slot: Slot) -> np.ndarray:
    """The stored codes of one slot as int8, shaped (channels, rest); int4 unpacked low nibble first."""
    if slot.tensor_type == _INT8:
        v = np.frombuffer(data, np.int8, slot.count, slot.offset)
    else:
        b = np.frombuffer(data, np.uint8, (slot.count + 1) // 2, slot.offset)
        v = np.stack([b & 0x0F, b >> 4], 1).ravel().astype(np.int8)[:slot.count]
        v[v > 7] -= 16
    return v.reshape(slot.channels, -1)


@dataclass
class Substitution:
    """The W8A8 file and, per int4-capable layer, its int8 codes that represent W4A8's int4 weights."""

    int8_model: bytes
    slots: dict[str, Slot]
    codes: dict[str, np.ndarray]
    grid_error: dict[str, float]  # largest |int8 representation - int4 value| / int4 step, per layer (<= ~0.03)

    def model(self, layer: str) -> bytes:
        """The W8A8 file with `layer`'s weights at their int4 values (a byte patch of one buffer)."""
        s = self.slots[layer]
        out = bytearray(self.int8_model)
        out[s.offset:s.offset + s.count] = self.codes[layer].tobytes()
        return bytes(out)


def substitution(int8_model: bytes, int4_model: bytes, layers: list[str]) -> Substitution:
    """Prepare the substituted models of `layers` (each int8 in `int8_model` and int4 in `int4_model`, both made
    from one calibration of the same FP32 file)."""
    s8, s4 = weight_slots(int8_model), weight_slots(int4_model)
    codes, grid = {}, {}
    for name in layers:
        a, b = s8.get(name), s4.get(name)
        if a is None or b is None or a.tensor_type != _INT8 or b.tensor_type != _INT4:
            raise QuantizationError(f"layer {name} is not int8 in the W8A8 model and int4 in the W4A8 model "
                                    "(int4 substitution needs both): use stages.mixed_precision.sensitivity: models")
        if a.count != b.count or a.channels != b.channels:
            raise QuantizationError(f"layer {name}: its weights differ in shape between the W8A8 and W4A8 models")
        sc8 = np.broadcast_to(a.scales, (a.channels,))[:, None]
        sc4 = np.broadcast_to(b.scales, (b.channels,))[:, None]
        value = _values(int4_model, b).astype(np.float64) * sc4
        q8 = np.clip(np.round(value / sc8), -127, 127)
        codes[name] = q8.astype(np.int8)
        grid[name] = float(np.max(np.abs(q8 * sc8 - value) / sc4)) if value.size else 0.0
    return Substitution(bytes(int8_model), s8, codes, grid)
