"""The comparison's simulated low-bit cells for a PyTorch input model, made and evaluated in PyTorch.

INT4 PTQ naive: Conv2d/Linear weights rounded to nearest on a per-channel max grid, activations float.
INT4 QAT: NNCF quantizers with 4-bit weights (per-channel, MSE-initialised clipping) and float activations,
fine-tuned as the qat stage fine-tunes (edgeq.methods.torch.fine_tune: distillation from FP32, best epoch kept
on the validation images) for the comparison's low_bit_qat_steps at low_bit_qat_learning_rate.
INT4 PTQ advanced has no PyTorch simulation: it is the real W4A8 TFLite where the run made one.
The algorithms are in edgeq.methods.torch.low_bit; this module takes the run context (`ctx`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

from edgeq.core.config import ComparisonSpec, QatSpec
from edgeq.core.data import LabelledImages
from edgeq.measure.evaluate import evaluate
from edgeq.methods.keras.fine_tune import training_split
from edgeq.methods.torch import low_bit
from edgeq.methods.torch.distributed import TorchRole
from edgeq.methods.torch.fine_tune import fine_tune

# the comparison section's words for a PyTorch run's simulated cells and QAT (report.md's PTQ-vs-QAT paragraph)
SECTION_HOW = {"simulated_how": "per-channel fake-quantised Conv2d/Linear weights in the PyTorch model",
               "qat_how": "NNCF fine-tune at INT8 (PyTorch); below 8 bits, NNCF fine-tune with 4-bit weight "
                          "quantizers (simulated)"}
NAIVE_HOW = "round-to-nearest, per-channel max scale (PyTorch Conv2d/Linear weights, activations float)"
NO_ADVANCED = ("not simulated for PyTorch input (GPTQ rounding and bias correction work on Keras kernels); the real "
               "W4A8 TFLite (stages.comparison.int4_artifact, needs litert-quantizer) is this cell where made")


def torch_module(ctx):
    """The run's FP32 nn.Module (eval mode)."""
    from edgeq.loaders.pytorch import load_torch_model

    m = ctx.cfg.model
    return load_torch_model(Path(m.path), m.factory, m.factory_base).eval()


def _no_weight_modules(module) -> str:
    """Why a model without nn.Conv2d/nn.Linear modules gets no simulated cell: a torch.export program or TorchScript
    file holds its convolutions as graph calls (its INT8 QAT rebuilds them, `edgeq.methods.torch.exported`), a
    factory module may really have none."""
    import torch

    from edgeq.loaders.pytorch import exported_graph

    if isinstance(module, torch.jit.ScriptModule) or exported_graph(module) is not None:
        return ("not simulated for a torch.export program or TorchScript file: the simulated INT4 cells round the "
                "weights of nn.Conv2d/nn.Linear modules, which such a file holds as graph calls; give the state_dict "
                "with model.factory for these cells (the INT8 QAT artifacts are made from either)")
    return "not available: the PyTorch model has no Conv2d/Linear weights"


def simulated_cell(ctx, opts: ComparisonSpec, q: QatSpec, bits: int, method: str, ev: LabelledImages,
                   label: str) -> tuple[dict, object | None]:
    """(cell, evaluation result or None) of one simulated PyTorch cell: `cell` in the Keras cells' form (top1,
    n, how, kernel_parameters; reason where none)."""
    cell: dict = {"bits": bits, "method": method, "framework": "pytorch"}
    if method == "ptq_advanced":
        return {**cell, "top1": None, "reason": NO_ADVANCED}, None
    if method == "qat" and not opts.low_bit_qat:
        return {**cell, "top1": None, "reason": "not run (stages.comparison.low_bit_qat: false)"}, None
    if method == "qat" and ctx.splits.train is None:
        return {**cell, "top1": None, "reason": "no training split to fine-tune on"}, None
    module = torch_module(ctx)
    if not low_bit.weight_modules(module):
        return {**cell, "top1": None, "reason": _no_weight_modules(module)}, None
    if method == "ptq_naive":
        m = low_bit.quantize_weights_rtn(module, bits)
        cell["how"] = NAIVE_HOW
    else:
        m = _qat(ctx, opts, q, module, bits, cell)
    r = evaluate(low_bit.TorchPredictor(m, ctx.cfg.evaluate.batch_size), ev, ctx.pre, ctx.splits.dataset,
                 ctx.cfg.evaluate.batch_size, label=label)
    cell.update(top1=r.top1, n=r.n, kernel_parameters=low_bit.weight_parameter_count(module))
    return cell, r


def _qat(ctx, opts: ComparisonSpec, q: QatSpec, module, bits: int, cell: dict):
    """NNCF fine-tune of `bits`-bit weights (float activations): the comparison's steps and learning rate, the qat
    stage's other fine-tune options; the steps split into the qat stage's epochs so the best is kept."""
    data = training_split(ctx.splits.train, q)
    steps = opts.low_bit_qat_steps or data.steps_per_epoch * max(q.epochs, 1)
    epochs = max(1, min(q.epochs, steps))
    data = replace(data, steps_per_epoch=math.ceil(steps / epochs))
    spec = q.model_copy(update={"epochs": epochs, "learning_rate": opts.low_bit_qat_learning_rate})
    cal = ctx.calibration(opts.calibration_images, "stages.comparison.calibration_images")
    qmodel, info = low_bit.low_bit_qat_model(module, cal.array(), bits)
    # one process: the comparison is not split among torchrun workers
    r = fine_tune(qmodel, copy.deepcopy(module), data, ctx.pre, spec, ctx.log, checkpoint_dir=None,
                  role=TorchRole(0, 0, 1), device=q.device)
    h = r.history
    cell["how"] = (f"NNCF QAT with {bits}-bit weight quantizers (per-channel, MSE-initialised clipping, trainable) "
                   f"and float activations; {r.steps} steps of {q.batch_size} in {epochs} epoch(s), lr "
                   f"{opts.low_bit_qat_learning_rate:g}, " + ("distilled from FP32" if q.distill else "on the labels")
                   + f", kept epoch {h.get('kept_epoch', epochs)} (0 = range-initialised) by agreement with FP32 "
                   "on the validation images")
    cell.update(fine_tune_steps=r.steps, fine_tune_seconds=r.seconds, quantizers=info,
                validation_agreement=h.get("val_agreement"), validation_agreement_before=h.get("val_agreement_before"))
    return r.model
