"""Per-layer int4 sensitivity without one quantization per layer: the all-int8 (W8A8) model with one layer's weights
replaced by that layer's real int4 weights, taken from the uniform W4A8 model of the same calibration.

Both models come from one litert-quantizer calibration (the same activation ranges), so the W8A8 model with layer
l's weights set to W4A8's int4 values is the model a plan with only l at int4 makes. The int4 value `q4 * s4` is
stored exactly in int8: codes `15 * q4` (in [-120, 105]) at scale `s4 / 15`, and l's bias re-expressed at the new
bias scale (input scale x weight scale, which LiteRT checks). Each substituted model is a byte patch of four
places (weights, their scales, the bias and its scales) in a copy of the W8A8 file: no re-serialisation and no
re-quantization, so on ResNet-50 a layer costs its inference on the held-back images, not a litert-quantizer run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeq.core.errors import QuantizationError

_INT8, _INT4, _INT32 = 9, 17, 2  # TFLite TensorType
STEP = 15  # int8 codes per int4 code: 15 * [-8, 7] = [-120, 105] fits int8 exactly


@dataclass(frozen=True)
class Region:
    """One constant array inside a .tflite file: byte offset, element count, numpy dtype."""

    offset: int
    count: int
    dtype: str

    def read(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, self.dtype, self.count, self.offset)


@dataclass(frozen=True)
class Slot:
    """One weight layer in a .tflite file: its weights (int8 or packed int4; output channels on axis 0), their
    per-channel scales, and its int32 bias and the bias's scales when it has a quantized bias."""

    weights: Region  # packed int4: its bytes, (elements + 1) // 2
    tensor_type: int
    elements: int
    channels: int
    scales: Region
    bias: Region | None
    bias_scales: Region | None


def _data_region(m, buf: bytearray, tensor, dtype: str, count: int, what: str) -> Region:
    import flatbuffers

    b = m.Buffers(tensor.Buffer())
    o = flatbuffers.number_types.UOffsetTFlags.py_type(b._tab.Offset(4))  # Buffer.data
    # litert-quantizer writes constants after the flatbuffer: Buffer.offset/size, from the file's start
    start = b._tab.Vector(o) if o else b.Offset() if b.Offset() > 1 else None
    size = b._tab.VectorLen(o) if o else b.Size()
    need = (count + 1) // 2 if dtype == "int4" else count * np.dtype(dtype).itemsize
    if start is None or size != need or start + size > len(buf):
        raise QuantizationError(f"the constant data of {what} is not where the .tflite says (buffer "
                                f"{tensor.Buffer()}): int4 substitution cannot patch it; use "
                                "stages.mixed_precision.sensitivity: models")
    return Region(int(start), need, "uint8") if dtype == "int4" else Region(int(start), count, dtype)


def _scale_region(tensor) -> Region | None:
    import flatbuffers

    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    o = flatbuffers.number_types.UOffsetTFlags.py_type(q._tab.Offset(8))  # QuantizationParameters.scale
    return Region(int(q._tab.Vector(o)), int(q.ScaleLength()), "<f4")


def weight_slots(data: bytes) -> dict[str, Slot]:
    """Every CONV_2D / FULLY_CONNECTED op (by output tensor name) whose constant weights are quantized per output
    channel (int8 or int4), read from the flatbuffer itself."""
    from ai_edge_litert import schema_py_generated as schema

    from edgeq.methods.tflite.litert import INT4_OPS, _builtin_names

    buf = bytearray(data)
    m = schema.Model.GetRootAs(buf, 0)
    g = m.Subgraphs(0)
    names = _builtin_names()
    out = {}
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        code = m.OperatorCodes(op.OpcodeIndex())
        if names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())) not in INT4_OPS or op.InputsLength() < 2:
            continue
        w = g.Tensors(op.Inputs(1))
        q = w.Quantization()
        if w.Type() not in (_INT8, _INT4) or q is None or q.QuantizedDimension() != 0:
            continue
        name = g.Tensors(op.Outputs(0)).Name().decode(errors="replace")
        shape = w.ShapeAsNumpy()
        weights = _data_region(m, buf, w, "int4" if w.Type() == _INT4 else "int8", int(np.prod(shape)), name)
        bias = bias_scales = None
        if op.InputsLength() > 2 and op.Inputs(2) >= 0:
            b = g.Tensors(op.Inputs(2))
            if b.Type() == _INT32:
                bias = _data_region(m, buf, b, "<i4", int(np.prod(b.ShapeAsNumpy())), f"{name} (bias)")
                bias_scales = _scale_region(b)
        out[name] = Slot(weights, w.Type(), int(np.prod(shape)), int(shape[0]), _scale_region(w), bias, bias_scales)
    return out


def values(data: bytes, slot: Slot) -> np.ndarray:
    """The stored weight codes of one slot as int8, shaped (channels, rest); int4 unpacked low nibble first."""
    v = slot.weights.read(data)
    if slot.tensor_type == _INT4:
        v = np.stack([v & 0x0F, v >> 4], 1).ravel().astype(np.int8)[:slot.elements]
        v[v > 7] -= 16
    return v.astype(np.int8).reshape(slot.channels, -1)


def _per_channel(data: bytes, r: Region, channels: int) -> np.ndarray:
    return np.broadcast_to(r.read(data).astype(np.float64), (channels,))


@dataclass
class Substitution:
    """The W8A8 file and, per int4-capable layer, the patches that put W4A8's int4 weights into it."""

    int8_model: bytes
    patches: dict[str, list[tuple[int, bytes]]]  # layer -> (byte offset, new bytes)

    def model(self, layer: str) -> bytes:
        """The W8A8 file with `layer`'s weights at their int4 values (a byte patch, same length)."""
        out = bytearray(self.int8_model)
        for offset, data in self.patches[layer]:
            out[offset:offset + len(data)] = data
        return bytes(out)


def substitution(int8_model: bytes, int4_model: bytes, layers: list[str]) -> Substitution:
    """Prepare the substituted models of `layers` (each int8 in `int8_model` and int4 in `int4_model`, both made
    from one calibration of the same FP32 file)."""
    s8, s4 = weight_slots(int8_model), weight_slots(int4_model)
    patches = {}
    for name in layers:
        a, b = s8.get(name), s4.get(name)
        if a is None or b is None or a.tensor_type != _INT8 or b.tensor_type != _INT4:
            raise QuantizationError(f"layer {name} is not int8 in the W8A8 model and int4 in the W4A8 model "
                                    "(int4 substitution needs both): use stages.mixed_precision.sensitivity: models")
        if a.elements != b.elements or a.channels != b.channels or a.scales.count != b.scales.count:
            raise QuantizationError(f"layer {name}: its weights differ in shape between the W8A8 and W4A8 models")
        old = _per_channel(int8_model, a.scales, a.channels)
        new = (_per_channel(int4_model, b.scales, b.channels) / STEP).astype("<f4")
        codes = (values(int4_model, b).astype(np.int16) * STEP).astype(np.int8)
        p = [(a.weights.offset, codes.tobytes()), (a.scales.offset, new[:a.scales.count].tobytes())]
        if a.bias is not None and a.bias_scales is None:
            raise QuantizationError(f"layer {name}: its int32 bias has no scale in the W8A8 model, so it cannot be "
                                    "re-expressed at the int4 weights' scale: use stages.mixed_precision.sensitivity: "
                                    "models")
        if a.bias is not None:
            ratio = old / new.astype(np.float64)  # bias codes at the new bias scale (input scale x new weight scale)
            bias = np.round(a.bias.read(int8_model).astype(np.float64) * np.broadcast_to(ratio, (a.bias.count,)))
            bias_scale = _per_channel(int8_model, a.bias_scales, a.channels) / ratio
            p += [(a.bias.offset, np.clip(bias, -2**31, 2**31 - 1).astype("<i4").tobytes()),
                  (a.bias_scales.offset, bias_scale[:a.bias_scales.count].astype("<f4").tobytes())]
        patches[name] = p
    return Substitution(bytes(int8_model), patches)
