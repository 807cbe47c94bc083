"""NNCF quantisation-aware training of a PyTorch classifier: batch norms folded, `nncf.quantize` range
initialisation on calibration images, and the export of the fine-tuned model as a standard QDQ ONNX.

The quantizers are NNCF's PyTorch ones (8-bit, symmetric per-channel weights, per-tensor activations). Batch
norms are folded into their convolutions *before* quantisation, so the weights that are fine-tuned and
quantised are the ones deployed (a Conv + BatchNormalization left in the QDQ graph keeps ONNX Runtime's
convolutions float). `nncf.strip` is not used: in NNCF 3.4 it imports torchao, which edgeq does not need.
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgeq.core.errors import QuantizationError, RuntimeUnavailable, first_line

NNCF_PIN = "3.4.0"
INSTALL = f"pip install nncf=={NNCF_PIN}"
# NNCF compiles its CPU quantizer kernels on first use (about a minute, cached in ~/.cache/torch_extensions);
# its 60 s default fails on a busy machine, and without a compiler it falls back to plain torch operations
EXTENSION_TIMEOUT_S = "600"


def nncf_module():
    """nncf, or a one-line error saying how to install it."""
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", EXTENSION_TIMEOUT_S)
    try:
        import nncf
    except ImportError as e:
        raise RuntimeUnavailable(f"QAT of a PyTorch model needs NNCF, which is not importable here "
                                 f"({first_line(e)}); {INSTALL}") from None
    return nncf


def fold_batch_norms(module) -> int:
    """Fold every BatchNorm2d whose input is a Conv2d used nowhere else into that Conv2d, in place (eval mode);
    the BatchNorm becomes an Identity. Returns how many. The pairs are found by torch.fx tracing; a model that
    does not trace keeps its batch norms (and says so in the notes). A module rebuilt from a torch.export program
    or TorchScript file (`exported.trainable_module`) is folded in its graph."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from edgeq.loaders.pytorch import exported_graph
    from edgeq.methods.torch.exported import fold_graph_batch_norms

    if exported_graph(module) is not None:
        module.eval()
        return fold_graph_batch_norms(module)

    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception:
        return 0
    mods = dict(gm.named_modules())
    pairs = []
    for n in gm.graph.nodes:
        if n.op != "call_module" or not isinstance(mods.get(n.target), torch.nn.BatchNorm2d):
            continue
        p = n.args[0] if n.args else None
        if (getattr(p, "op", None) == "call_module" and isinstance(mods.get(p.target), torch.nn.Conv2d)
                and len(p.users) == 1 and sum(1 for m in gm.graph.nodes if m.target == p.target) == 1):
            pairs.append((p.target, n.target))
    module.eval()
    for conv, bn in pairs:
        module.set_submodule(conv, fuse_conv_bn_eval(module.get_submodule(conv), module.get_submodule(bn)))
        module.set_submodule(bn, torch.nn.Identity())
    return len(pairs)


def nchw(images_nhwc: np.ndarray):
    """Preprocessed NHWC images as a contiguous float32 NCHW tensor (PyTorch's layout)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2), dtype=np.float32))


def quantize(module, calibration_nhwc: np.ndarray, batch_size: int = 32, scheme: str = "host"):
    """The module with NNCF's INT8 quantizers inserted and their ranges initialised on the calibration images
    (`nncf.quantize`, RANGE_INIT: NNCF's activation ranges, the mean over samples of each sample's min and max;
    no bias correction). Weights: int8 symmetric per output channel; activations: uint8 per tensor with a
    zero-point (NNCF's MIXED preset).

    Why no bias correction (measured on FashionNet, three seeds, docs/qat_pytorch.md; images outside the
    evaluation split): with NNCF's fast bias correction the range-initialised model agreed with FP32 on 86-91 %
    of the images in two seeds of three, where edgeq's PTQ loses nothing; without it 98-99.6 % in all three.
    Min-max over all images instead of NNCF's mean of per-sample min/max did not change that (slightly lower in
    total), so NNCF's range estimator is kept. NNCF's PyTorch backend has no full bias correction.

    Why that activation scheme (measured with ONNX Runtime 1.32's CPU optimiser on a MobileNet-style net):
    NNCF's default mixes uint8 (after ReLU) and int8 activations, and a Conv with a uint8 input and an int8
    output stays a float kernel; symmetric int8 everywhere keeps each Conv -> ReLU6 (Clip) -> Q float, because
    the Clip narrows the Q range and cannot be fused; asymmetric uint8 runs every Conv, Add and Gemm as an
    integer kernel (ONNX Runtime's host scheme, U8S8).

    `scheme="tensorrt"` (SCHEMES): activations signed int8 with zero-point 0 (NNCF's PERFORMANCE preset, then
    `force_signed`), the form TensorRT's explicit quantization takes; everything else as above."""
    nncf = nncf_module()
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, OverflowFix,
                                                       QuantizationParameters)

    x = nchw(calibration_nhwc)
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    # per-tensor activations: NNCF's default quantizes a depthwise conv's input per channel, which neither ONNX
    # Runtime's integer kernels nor TFLite take; no overflow fix: it halves the first layer's weight range for
    # old x86 VNNI, which is not a deployment target here
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r}: one of {sorted(SCHEMES)}")
    trt = scheme == "tensorrt"
    adv = AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE,
                                         activations_quantization_params=QuantizationParameters(per_channel=False),
                                         disable_bias_correction=True)
    preset = nncf.QuantizationPreset.PERFORMANCE if trt else nncf.QuantizationPreset.MIXED
    try:
        qmodel = nncf.quantize(module, nncf.Dataset(batches), subset_size=len(batches), preset=preset,
                               advanced_parameters=adv,
                               ignored_scope=nncf.IgnoredScope(types=list(TENSORRT_FLOAT_OPS), validate=False)
                               if trt else None)
    except Exception as e:
        raise QuantizationError(f"nncf.quantize failed on the PyTorch model ({first_line(e, 300)}); check that "
                                "the model traces with a fixed-size input") from None
    if trt:
        force_signed(qmodel)
    return qmodel


def force_signed(qmodel) -> int:
    """Make every unsigned symmetric quantizer signed, keeping its scale (the range [0, s] becomes [-s, s], 256
    levels): NNCF quantizes a non-negative activation (after ReLU) unsigned, which exports as uint8, and TensorRT
    takes int8 only. NNCF 3.4's `signedness_to_force` cannot do it: the target-device configs it is checked against
    leave signedness open, so the constraint matches none. Returns how many were changed."""
    from nncf.torch.quantization.layers import SymmetricQuantizer

    changed = [q for q in quantizers(qmodel) if isinstance(q, SymmetricQuantizer) and not q.signed]
    for q in changed:
        q.signed = True
    return len(changed)


# what `quantize` does, recorded in the artifact notes (notes.quantizer.range_init)
RANGE_INIT = {"activation_ranges": "NNCF default (mean over calibration samples of each sample's min and max)",
              "bias_correction": "off (NNCF's fast bias correction cut agreement with FP32 by up to 13 pt)",
              "preset": "MIXED", "activations_per_channel": False, "overflow_fix": "off"}
# `quantize`'s activation schemes: host = ONNX Runtime's CPU integer kernels (uint8 with a zero-point, int32 biases
# in the export); tensorrt = TensorRT's explicit quantization (int8, zero-point 0, float biases)
SCHEMES = {"host": {"preset": "MIXED", "activations": "uint8 per-tensor with a zero-point", "biases": "int32"},
           "tensorrt": {"preset": "PERFORMANCE", "activations": "int8 per-tensor symmetric (zero-point 0, signed)",
                        "biases": "float"}}
# NNCF op types whose input NNCF quantizes but TensorRT has no INT8 kernel for (a mean over H, W exports as
# ReduceMean): left unquantized in the TensorRT scheme so they run in float between int8 layers
TENSORRT_FLOAT_OPS = ("mean",)
RANGE_INIT_TENSORRT = {**RANGE_INIT, "preset": "PERFORMANCE", "activations_signed": True}


def quantizers(qmodel) -> list:
    """NNCF's quantizer modules inside a quantized model."""
    from nncf.torch.quantization.layers import BaseQuantizer

    return [m for m in qmodel.modules() if isinstance(m, BaseQuantizer)]


def quantizer_summary(qmodel) -> dict:
    qs = quantizers(qmodel)
    return {"quantizers": len(qs), "weight_quantizers": sum(1 for q in qs if q.per_channel),
            "bits": sorted({int(q.num_bits) for q in qs})}


def export_qdq_onnx(qmodel, out: Path, input_shape_hwc, opset: int, int32_biases: bool = True) -> dict:
    """The fine-tuned NNCF model as a standard QDQ ONNX (QuantizeLinear/DequantizeLinear pairs, int8 weights);
    returns notes with the op counts and what ONNX Runtime's CPU optimiser makes of it (`ort_kernels`).

    The quantizers export as ONNX Q/DQ pairs (NNCF's default writes OpenVINO FakeQuantize, which ONNX Runtime
    refuses); ONNX Runtime's basic optimiser (standard ops only) then folds the constant subgraphs and stores the
    quantized weights as int8, and a Q/DQ pair is added after grid-keeping ops (a zero Pad) above a Conv.
    `int32_biases=False` (the TensorRT export) keeps the biases float (TensorRT takes int8 Q/DQ only) and puts the
    Q/DQ pair between a zero Pad and its Conv (TensorRT wants each int8 Conv's input from DequantizeLinear; ONNX
    Runtime's Pad fusion, for which the host export keeps it above the Pad, is no concern there)."""
    import onnx
    import torch
    from nncf.torch.quantization.layers import QuantizerExportMode

    from edgeq.loaders.pytorch import export_settings
    from edgeq.methods.onnx.from_keras import requantize_grid_ops
    from edgeq.methods.onnx.ort_int8 import ort_kernel_summary
    from edgeq.methods.onnx.to_tf import fold_constants

    s = export_settings(input_shape_hwc, opset)
    x = torch.zeros(s.pop("input_shape"))
    for q in quantizers(qmodel):
        q.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    qmodel = qmodel.cpu().eval()
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "qdq_raw.onnx"
        try:
            import warnings

            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(qmodel, (x,), str(raw), **s)
        except Exception as e:
            raise QuantizationError(f"exporting the QAT model to QDQ ONNX failed ({first_line(e, 300)})") from None
        if int32_biases:
            fold_constants(raw, out)
        else:
            _fold_keeping_float_biases(raw, out)
    m = onnx.load(str(out))
    requantized = requantize_grid_ops(m.graph, pads_into_convs=int32_biases)  # TensorRT: Q/DQ between Pad and Conv
    biases = quantize_biases(m.graph) if int32_biases else 0
    # ONNX Runtime's optimiser writes an opset import for every domain it knows; keep the ones the graph uses
    used = {n.domain for n in m.graph.node} | {""}
    keep = [o for o in m.opset_import if o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    domains = sorted(used - {"", "ai.onnx"})
    if domains:
        raise QuantizationError(f"the QAT ONNX export holds non-standard ops (domains {domains}); edgeq writes "
                                "standard QDQ ONNX only")
    ops = Counter(n.op_type for n in m.graph.node)
    int8_weights = sum(1 for i in m.graph.initializer if len(i.dims) >= 2 and i.data_type == onnx.TensorProto.INT8)
    return {"exporter": f"torch.onnx.export {torch.__version__} (NNCF quantizers as ONNX Q/DQ pairs)",
            "opset": opset, "op_counts": dict(sorted(ops.items())), "int8_weight_tensors": int8_weights,
            "requantized_after": requantized, "int32_biases_added": biases, "ort_kernels": ort_kernel_summary(out, "all")}


def _fold_keeping_float_biases(src: Path, out: Path) -> None:
    """`fold_constants` without ONNX Runtime's WeightBiasQuantization, which at the basic level stores a Conv bias
    as int32 + DequantizeLinear when its input and weight come through DequantizeLinear (TensorRT: int8 Q/DQ only)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out)
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["WeightBiasQuantization"])
    except Exception as e:
        raise QuantizationError(f"onnxruntime cannot load the exported QAT ONNX ({first_line(e)})") from None


def quantize_biases(g) -> int:
    """Store the float bias of a Gemm/Conv whose input and weight come through DequantizeLinear as int32 on the
    grid input scale x weight scale (+ DequantizeLinear), the form ONNX Runtime fuses into an integer kernel
    (its optimiser does this for a Conv followed by QuantizeLinear, not for the classifier's last Gemm)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    added = []
    for n in g.node:
        if n.op_type not in ("Gemm", "Conv") or len(n.input) < 3 or n.input[2] not in inits:
            continue
        dx, dw = prod.get(n.input[0]), prod.get(n.input[1])
        if not (dx and dw and dx.op_type == dw.op_type == "DequantizeLinear") or \
                not all(t in inits for t in (dx.input[1], dw.input[1])):
            continue
        sx = numpy_helper.to_array(inits[dx.input[1]]).astype(np.float64)
        sw = numpy_helper.to_array(inits[dw.input[1]]).astype(np.float64).reshape(-1)
        if sx.size != 1 or (n.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in n.attribute)):
            continue
        b = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
        scale = (sx.reshape(()) * sw) * np.ones_like(b)
        q = np.clip(np.rint(b / scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        name = n.input[2]
        g.initializer.extend([numpy_helper.from_array(q, name + "_int32"),
                              numpy_helper.from_array(scale.astype(np.float32), name + "_int32_scale")])
        added.append(helper.make_node("DequantizeLinear", [name + "_int32", name + "_int32_scale"],
                                      [name + "_int32_dq"], name=name + "_DequantizeLinear", axis=0))
        n.input[2] = added[-1].output[0]
    if added:
        nodes = added + list(g.node)  # the new nodes read only initializers
        del g.node[:]
        g.node.extend(nodes)
        used = {i for n in g.node for i in n.input}
        for i in list(g.initializer):
            if i.name not in used:
                g.initializer.remove(i)
    return len(added)
