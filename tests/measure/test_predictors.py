import numpy as np

from edgeq.measure.predictors import dequantize_output, is_nchw, quantize_input
from edgeq.core.sysinfo import cpu_info
from edgeq.targets.base import LatencyStats


def test_quantize_roundtrip_int8_and_uint8():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 5.0], np.float32)
    q = quantize_input(x, np.int8, 1 / 127.5, -1)
    assert q.dtype == np.int8 and q[-1] == 127  # clipped
    assert np.allclose(dequantize_output(q[:4], 1 / 127.5, -1), x[:4], atol=1 / 127.5)
    u = quantize_input(x, np.uint8, 1 / 127.5, 127)
    assert u.dtype == np.uint8 and u[0] == 0


def test_nchw_is_told_by_the_channel_axis_even_with_dynamic_dims():
    assert is_nchw([1, 3, 224, 224]) and is_nchw([-1, 3, -1, -1]) and is_nchw([-1, 1, 28, 28])
    assert not is_nchw([1, 224, 224, 3]) and not is_nchw([-1, -1, -1, 3]) and not is_nchw([1, 3, 3])


def test_cpu_info_parses_flags():
    info = cpu_info("model name : Test CPU\nflags : fpu avx2 fma avx512f avx512_vnni\n")
    assert info["model"] == "Test CPU"
    assert {"AVX2", "AVX-512F", "AVX512-VNNI"} <= set(info["simd"]) and info["int8_dot_product"]
    arm = cpu_info("Features : fp asimd asimddp\nCPU part : 0xd0b\n")
    assert {"NEON", "DOTPROD"} <= set(arm["simd"]) and arm["model"]  # no model line: the board or machine


def test_latency_stats_percentiles():
    s = LatencyStats.from_samples(list(range(1, 101)), warmup=5, threads=1, runtime="r", device="d")
    assert s.min == 1 and s.max == 100 and s.median == 50.5 and s.runs == 100 and 90 <= s.p90 <= 91


# ------------------------------------------------------------------- OpenVINO
def _tiny_onnx_and_ir(tmp_path):
    """The tiny CNN as FP32 ONNX (NCHW, as edgeq exports it) and as the OpenVINO IR converted from it."""
    from conftest import build_tiny_cnn
    from edgeq.methods.onnx.from_keras import keras_to_onnx
    from edgeq.methods.openvino.convert import onnx_to_ir

    keras_to_onnx(build_tiny_cnn(train=False), tmp_path / "fp32.onnx", 17)
    onnx_to_ir(tmp_path / "fp32.onnx", tmp_path / "fp32.openvino")
    return tmp_path / "fp32.onnx", tmp_path / "fp32.openvino"


def test_openvino_fp32_ir_agrees_with_the_fp32_onnx_on_every_image_at_true_fp32(tmp_path):
    """Forced f32, the IR matches the ONNX it came from to 1e-4 of the largest output on every image: a silent
    bf16 (OpenVINO's default on CPUs with AVX512-BF16/AMX, ~3 significant digits) cannot pass this."""
    import pytest

    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgeq[openvino]')")
    from edgeq.measure.predictors import OnnxPredictor, OpenVINOPredictor

    onnx_path, ir = _tiny_onnx_and_ir(tmp_path)
    x = np.random.default_rng(1).uniform(-1, 1, (64, 16, 16, 3)).astype(np.float32)
    ov_pred = OpenVINOPredictor(ir, threads=1)
    assert ov_pred.describe()["inference_precision"] == "f32" and ov_pred.describe()["streams"] == "1"
    assert ov_pred.describe()["device"] == "CPU" and "precision=f32" in ov_pred.runtime
    ref = OnnxPredictor(onnx_path, threads=1).predict(x)
    got = np.concatenate([ov_pred.predict(x[i:i + 1]) for i in range(len(x))])  # each image on its own
    rel = np.max(np.abs(got - ref), axis=1) / np.max(np.abs(ref), axis=1)
    assert rel.max() <= 1e-4, rel.max()
    np.testing.assert_allclose(ov_pred.predict(x), got, rtol=0, atol=1e-5)  # batched the same


def test_openvino_predictor_names_the_precision_it_runs_not_the_one_asked_for(tmp_path):
    """A bf16 hint is read back from the compiled model: bf16 where this CPU has it, f32 where OpenVINO falls back."""
    import pytest

    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgeq[openvino]')")
    from edgeq.measure.predictors import OpenVINOPredictor

    _, ir = _tiny_onnx_and_ir(tmp_path)
    bf16 = OpenVINOPredictor(ir, threads=1, inference_precision="bf16")
    has_bf16 = {"AVX512-BF16", "AMX"} & set(cpu_info()["simd"]) or "avx512_bf16" in open("/proc/cpuinfo").read()
    assert bf16.inference_precision == ("bf16" if has_bf16 else "f32")
    assert f"precision={bf16.inference_precision}" in bf16.runtime


def test_openvino_predictor_refuses_a_directory_without_an_ir(tmp_path):
    import pytest

    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgeq[openvino]')")
    from edgeq.core.errors import ModelError
    from edgeq.measure.predictors import OpenVINOPredictor

    (tmp_path / "empty.openvino").mkdir()
    with pytest.raises(ModelError, match="not an OpenVINO IR"):
        OpenVINOPredictor(tmp_path / "empty.openvino")


def test_openvino_reads_an_onnx_artifact_directly_at_true_fp32_and_agrees_with_onnx_runtime(tmp_path):
    """An .onnx timed on OpenVINO as well as on ORT (formats.Format.other_runtimes): the same predictor reads the ONNX,
    f32 forced and named, and its scores match ORT's to 1e-4 of the largest output on every image."""
    import pytest

    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgeq[openvino]')")
    from edgeq.measure.predictors import OnnxPredictor, OpenVINOPredictor, open_predictor

    onnx_path, _ = _tiny_onnx_and_ir(tmp_path)
    x = np.random.default_rng(2).uniform(-1, 1, (32, 16, 16, 3)).astype(np.float32)
    on_ov = open_predictor(onnx_path, "onnx", threads=1, runtime="openvino")
    assert isinstance(on_ov, OpenVINOPredictor) and on_ov.inference_precision == "f32"
    assert on_ov.runtime.startswith("openvino ") and "precision=f32" in on_ov.runtime
    ref = OnnxPredictor(onnx_path, threads=1).predict(x)
    got = np.concatenate([on_ov.predict(x[i:i + 1]) for i in range(len(x))])
    rel = np.max(np.abs(got - ref), axis=1) / np.max(np.abs(ref), axis=1)
    assert rel.max() <= 1e-4, rel.max()
    assert len(on_ov.time_runs(x[:1], runs=3, warmup=1)) == 3


def test_a_runtime_that_does_not_read_the_format_is_refused_by_name(tmp_path):
    import pytest

    from edgeq.core.errors import ModelError
    from edgeq.measure.predictors import open_predictor

    with pytest.raises(ModelError, match="no predictor for format 'tflite' on runtime 'openvino'"):
        open_predictor(tmp_path / "m.tflite", "tflite", runtime="openvino")


def test_an_ir_that_names_its_own_precision_runs_at_it_where_the_cpu_has_it(tmp_path):
    """bf16_openvino: the FP32 IR naming bf16 in its rt_info is its own artifact (another hash) and runs at bf16
    wherever OpenVINO reports BF16 for this CPU; an explicit precision still wins."""
    import pytest

    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgeq[openvino]')")
    from edgeq.core.artifacts import sha256_of
    from edgeq.measure.predictors import OpenVINOPredictor
    from edgeq.methods.openvino.convert import cpu_runs, precision_variant

    _, ir = _tiny_onnx_and_ir(tmp_path)
    precision_variant(ir, tmp_path / "bf16.openvino", "bf16")
    assert sha256_of(tmp_path / "bf16.openvino") != sha256_of(ir)
    has_bf16 = cpu_runs("bf16") is None
    variant = OpenVINOPredictor(tmp_path / "bf16.openvino", threads=1)
    assert variant.inference_precision == ("bf16" if has_bf16 else "f32") and OpenVINOPredictor(ir).inference_precision == "f32"
    assert OpenVINOPredictor(tmp_path / "bf16.openvino", inference_precision="f32").inference_precision == "f32"
