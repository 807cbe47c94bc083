"""Simulated low-bit (INT4) weights of a PyTorch classifier: naive round-to-nearest, and NNCF QAT with its
weight quantizers set to 4 bits.

The same cells the Keras path simulates (edgeq.methods.keras.fakequant): symmetric per-output-channel weights of
Conv2d and Linear on a narrow grid (codes -7..7 at 4 bits), activations float, evaluated in PyTorch.

NNCF's `nncf.quantize` refuses 4-bit weights on its hardware config ("incompatible with HW capabilities"), but its
PyTorch quantizer modules take a new `num_bits`: setting it recomputes their levels (`set_levels`: -7..7 for a
narrow-range signed 4-bit quantizer) and keeps the scale, which in NNCF's symmetric quantizer is the clipping
value (the grid step is scale / level_high). So the model is quantized at 8 bits as the qat stage does it, each
weight quantizer is set to 4 bits and its per-channel clipping value re-initialised for 4 bits (the MSE-optimal
clipped max, as the Keras simulated QAT's fixed scales), and the activation quantizers are disabled (float
activations, as in the Keras simulated cells). NNCF's scales stay trainable during the fine-tune.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from edgeq.core.errors import QuantizationError
from edgeq.methods.torch import qat as torch_qat

MSE_ALPHAS = np.linspace(0.30, 1.0, 36)  # clipping ratios searched (as edgeq.methods.keras.fakequant)


def qmax(bits: int) -> int:
    """Largest code of a symmetric narrow-range grid: 127 at 8 bits, 7 at 4 bits."""
    return 2 ** (bits - 1) - 1


def weight_modules(module) -> list:
    """(name, module) of every Conv2d and Linear: the layers whose weights are quantised."""
    import torch

    return [(n, m) for n, m in module.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def weight_parameter_count(module) -> int:
    return sum(int(m.weight.numel()) for _, m in weight_modules(module))


def _fake_quant(w, clip, bits: int):
    """w on the symmetric narrow grid with per-output-channel clipping values `clip` (shape [out, 1, ...])."""
    import torch

    step = clip / qmax(bits)
    return torch.clamp(torch.round(w / step), -qmax(bits), qmax(bits)) * step


def _channel_max(w):
    """max|w| per output channel (1 for an all-zero channel), shaped to broadcast against w."""
    import torch

    m = w.detach().abs().reshape(len(w), -1).amax(1)
    return torch.where(m > 0, m, torch.ones_like(m)).reshape((-1,) + (1,) * (w.dim() - 1))


def mse_clip(w, bits: int):
    """Per-output-channel clipping value (a fraction of max|w|) minimising the squared rounding + clipping error."""
    import torch

    w = w.detach()
    base = _channel_max(w)
    best, best_err = base.clone(), None
    for a in MSE_ALPHAS[::-1]:  # 1.0 first: ties keep the unclipped max
        c = base * float(a)
        err = ((w - _fake_quant(w, c, bits)) ** 2).reshape(len(w), -1).sum(1).reshape(base.shape)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best = torch.where(better, c, best)
        best_err = torch.where(better, err, best_err)
    return best


def quantize_weights_rtn(module, bits: int):
    """Naive PTQ: a copy of `module` with every Conv2d/Linear weight rounded to nearest on a per-output-channel
    max grid (activations float)."""
    import torch

    m = copy.deepcopy(module).eval()
    with torch.no_grad():
        for _, layer in weight_modules(m):
            layer.weight.copy_(_fake_quant(layer.weight, _channel_max(layer.weight), bits))
    return m


@dataclass
class LowBitQuantizers:
    """What `set_weight_bits` did to an NNCF-quantized model."""

    weight_quantizers: int
    activation_quantizers_disabled: int
    bits: int
    range_init: str

    def to_dict(self) -> dict:
        return {"weight_quantizers": self.weight_quantizers, "weight_bits": self.bits,
                "activation_quantizers_disabled": self.activation_quantizers_disabled, "range_init": self.range_init}


def _quantizer_inputs(qmodel, sample) -> dict:
    """quantizer -> the tensor it quantizes in one forward pass of `sample` (NCHW)."""
    import torch

    seen, hooks = {}, []
    for q in torch_qat.quantizers(qmodel):
        hooks.append(q.register_forward_pre_hook(lambda mod, args: seen.setdefault(mod, args[0])))
    try:
        with torch.no_grad():
            qmodel.eval()(sample)
    finally:
        for h in hooks:
            h.remove()
    return seen


def set_weight_bits(qmodel, bits: int, sample) -> LowBitQuantizers:
    """In place: every NNCF weight quantizer of `qmodel` (one whose input is a parameter of the model) at `bits`
    bits with its per-channel clipping value MSE-initialised on its weight; every other quantizer disabled.
    `sample`: one NCHW batch, to find which tensor each quantizer sees."""
    import torch

    params = {id(p) for p in qmodel.parameters()}
    n_w = n_a = 0
    for q, x in _quantizer_inputs(qmodel, sample).items():
        if id(x) not in params:
            q.disable_quantization()
            n_a += 1
            continue
        if not q.per_channel or not q.signed:
            raise QuantizationError(f"NNCF quantized a weight with a {q} quantizer, not signed per channel; the "
                                    "simulated INT4 QAT cell needs per-channel weights: set stages.comparison."
                                    "low_bit_qat: false")
        q.num_bits = bits  # recomputes level_low / level_high; the scale (clipping value) is set next
        clip = mse_clip(x, bits).reshape(q.scale.shape)
        with torch.no_grad():
            if q.is_using_log_scale_storage:
                q._scale_param_storage.copy_(clip.log())
            else:
                q._scale_param_storage.copy_(clip)
        n_w += 1
    return LowBitQuantizers(n_w, n_a, bits, "per-output-channel MSE-optimal clipped max (fraction 0.30-1.00 of "
                                            "max|w|), NNCF scale trainable in the fine-tune")


def low_bit_qat_model(module, calibration_nhwc: np.ndarray, bits: int):
    """(NNCF model with `bits`-bit weight quantizers and float activations, what was set): batch norms folded,
    `nncf.quantize` at 8 bits on the calibration images (edgeq.methods.torch.qat.quantize), then `set_weight_bits`."""
    student = copy.deepcopy(module).eval()
    folded = torch_qat.fold_batch_norms(student)
    qmodel = torch_qat.quantize(student, calibration_nhwc)
    info = set_weight_bits(qmodel, bits, torch_qat.nchw(calibration_nhwc[:1]))
    return qmodel, {**info.to_dict(), "batch_norms_folded": folded}


def weight_grids(qmodel, sample) -> list[tuple[int, int]]:
    """(largest number of distinct values in one output channel, channels) of each enabled weight quantizer's
    output in a forward pass: the check that the weights the model computes with are on the low-bit grid."""
    import torch

    params = {id(p) for p in qmodel.parameters()}
    out = []
    with torch.no_grad():
        for q, x in _quantizer_inputs(qmodel, sample).items():
            if id(x) in params and q.is_enabled_quantization():
                y = q(x).reshape(len(x), -1)
                out.append((max(len(torch.unique(r)) for r in y), len(y)))
    return out


class TorchPredictor:
    """NHWC float batches in, the module's outputs out (edgeq.measure.predictors.Predictor's `predict`)."""

    fmt = "pytorch"

    def __init__(self, module, batch_size: int = 64):
        import torch

        self.module = module.eval()
        self.batch_size = batch_size
        self.runtime = f"torch {torch.__version__}"

    def predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.concatenate([self.module(torch_qat.nchw(x[i:i + self.batch_size])).numpy()
                                   for i in range(0, len(x), self.batch_size)]).astype(np.float32)
