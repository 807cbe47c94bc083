"""NNCF QAT in TensorRT's scheme (`quantize(..., scheme="tensorrt")`, `export_qdq_onnx(..., int32_biases=False)`):
a QDQ ONNX that TensorRT's explicit-quantization rules accept with no problem (int8 Q/DQ with zero-point 0,
per-channel weights, float biases, a Q/DQ pair between each zero Pad and its Conv, the global mean left float),
that holds only standard ops and that ONNX Runtime runs to the NNCF model's outputs."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nncf")

import torch_nets  # noqa: E402
from edgeq.core.data import SHIPPED_SAMPLE, Preprocess  # noqa: E402

PRE = Preprocess((28, 28), 1)


def _sample(n: int, part: str = "calibration"):
    return PRE(np.load(SHIPPED_SAMPLE)[f"{part}_images"][:n])


def _export(net, images, hwc, path):
    from edgeq.methods.torch.qat import export_qdq_onnx, fold_batch_norms, quantize

    fold_batch_norms(net)
    q = quantize(net, images, scheme="tensorrt")
    return q, path, export_qdq_onnx(q, path, hwc, 17, int32_biases=False)


@pytest.fixture(scope="module")
def trt(tmp_path_factory):
    """FashionNet (7 Conv + BatchNorm, a residual Add, mean, Linear) in TensorRT's scheme, on 64 sample images."""
    return _export(torch_nets.fashion_net(), _sample(64), (28, 28, 1), tmp_path_factory.mktemp("trt") / "q.onnx")


@pytest.fixture(scope="module")
def trt_padded(tmp_path_factory):
    """The MobileNet-style test net (explicit zero F.pad above each depthwise Conv, four residual Adds)."""
    x = np.random.default_rng(0).standard_normal((64, 32, 32, 3)).astype(np.float32)
    return _export(torch_nets.small_net(classes=3), x, (32, 32, 3), tmp_path_factory.mktemp("trtp") / "q.onnx")


@pytest.mark.parametrize("which", ["trt", "trt_padded"])
def test_tensorrt_scheme_qat_onnx_passes_every_tensorrt_rule(which, request):
    from edgeq.targets.tensorrt_check import check_tensorrt_qdq

    _, path, notes = request.getfixturevalue(which)
    c = check_tensorrt_qdq(path)
    assert c.ok and c.problems == [], c.problems
    ops = notes["op_counts"]
    assert c.details["int8_compute_layers"] == ops["Conv"] + ops["Gemm"] and c.details["float_compute_layers"] == 0


def test_padded_convs_read_their_input_through_a_requantized_pad(trt_padded):
    """TensorRT wants each int8 Conv's input from DequantizeLinear: the pair goes between Pad and Conv (the host
    export keeps it above the Pad for ONNX Runtime's Pad fusion)."""
    notes = trt_padded[2]
    assert len(notes["requantized_after"]) == notes["op_counts"]["Pad"] == 8


def test_tensorrt_scheme_qat_onnx_is_standard_int8_zero_point_0_with_float_biases(trt):
    import onnx
    from onnx import numpy_helper

    _, path, notes = trt
    m = onnx.load(str(path))
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"} and {o.domain for o in m.opset_import} <= {"", "ai.onnx"}
    inits = {i.name: i for i in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(len(n.input) == 3 and n.input[2] in inits for n in qdq)
    for n in qdq:
        zp = inits[n.input[2]]
        assert zp.data_type == onnx.TensorProto.INT8 and not np.any(numpy_helper.to_array(zp)), n.name
    layers = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 8 and notes["int8_weight_tensors"] == 8 and notes["int32_biases_added"] == 0
    for n in layers:  # the bias is a float initializer, not an int32 tensor through DequantizeLinear
        assert inits[n.input[2]].data_type == onnx.TensorProto.FLOAT, n.name
    assert "ReduceMean" in notes["op_counts"] and notes["ort_kernels"]["batch_norms"] == 0


def test_tensorrt_scheme_activations_are_signed_int8_and_weights_per_channel(trt):
    from nncf.torch.quantization.layers import SymmetricQuantizer

    from edgeq.methods.torch.qat import quantizers

    qs = quantizers(trt[0])
    assert qs and all(isinstance(q, SymmetricQuantizer) and q.signed for q in qs)
    assert sum(1 for q in qs if q.per_channel) == 8  # one per Conv/Linear weight


def test_onnx_runtime_computes_what_the_nncf_model_computes(trt):
    """Evaluated as edgeq evaluates the TensorRT artifacts (ORT basic level: Q/DQ as written). Both sides compute the
    same int8 grid in float; they differ only where float accumulation order moves a value across a rounding
    boundary, one step of one code, so the logits agree to a fraction of a step: measured 0.04-0.5 % of the largest
    logit (FashionNet untrained and trained one epoch, the padded test net), asserted within 2 %; decisions agreed
    on every image, asserted on 99 %."""
    import onnxruntime as ort

    from edgeq.methods.torch.qat import nchw

    q, path, _ = trt
    x = _sample(300)[64:]  # calibration images the range init did not see
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"input": nchw(x[i:i + 1]).numpy()})[0] for i in range(len(x))])
    with torch.no_grad():
        ref = q.eval()(nchw(x)).numpy()
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_host_scheme_is_unchanged_by_the_tensorrt_option(tmp_path):
    """The default scheme still quantizes after-ReLU activations unsigned (uint8 with a zero-point): ORT's host
    integer kernels; an unknown scheme is refused."""
    from edgeq.methods.torch.qat import quantize, quantizers

    q = quantize(torch_nets.fashion_net(), _sample(32))
    assert any(not getattr(x, "signed", True) or x.__class__.__name__ == "AsymmetricQuantizer" for x in quantizers(q))
    with pytest.raises(ValueError):
        quantize(torch_nets.fashion_net(), _sample(8), scheme="tflite")
