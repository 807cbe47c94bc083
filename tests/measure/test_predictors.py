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
