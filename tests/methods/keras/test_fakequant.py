"""Comparison building blocks: fake quantisation, careful PTQ, and verdicts derived from numbers."""
from __future__ import annotations

import numpy as np
import pytest

from edgeq.methods.keras import fakequant
from edgeq.stages.support.comparison_verdicts import verdict_for


def _cells(fp32: float, **top1: float) -> dict:
    return {m: {"top1": t, "drop": round((fp32 - t) * 100, 3)} for m, t in top1.items()}


def test_fake_quant_uses_at_most_2_pow_bits_minus_1_levels_per_channel():
    w = np.random.default_rng(0).normal(size=(3, 3, 8, 16)).astype(np.float32)
    for bits in (8, 4, 2):
        q = fakequant.fake_quant(w, fakequant.max_scales(w, bits, (0, 1, 2)), bits)
        for c in range(16):
            assert len(np.unique(q[..., c])) <= 2 ** bits - 1


def test_mse_scales_never_increase_the_weight_error():
    w = np.random.default_rng(1).standard_t(3, size=(64, 32)).astype(np.float32)  # heavy tails
    err = {}
    for name, fn in (("max", fakequant.max_scales), ("mse", fakequant.mse_scales)):
        err[name] = np.sum((w - fakequant.fake_quant(w, fn(w, 4, (0,)), 4)) ** 2, axis=0)
    assert np.all(err["mse"] <= err["max"] + 1e-6) and err["mse"].sum() < err["max"].sum()


def test_packed_size_subtracts_the_saved_kernel_bits(tiny_model):
    n = fakequant.kernel_parameter_count(tiny_model)
    assert fakequant.packed_size_bytes(10_000, tiny_model, 4) == 10_000 - n // 2


@pytest.fixture(scope="module")
def tiny_model():
    from conftest import build_tiny_cnn

    return build_tiny_cnn(train=False)


def test_bias_correction_removes_the_mean_output_shift():
    import edgeq  # noqa: F401
    from edgeq.methods.keras.bias_correction import quantize_weights_advanced
    from edgeq.methods.keras.fakequant import quantize_weights_rtn
    from edgeq.core.tfcompat import keras

    k = keras()
    inp = k.Input((8, 8, 3))
    out = k.layers.Conv2D(6, 1)(inp)  # 1x1: every input pixel counts once, so the correction is exact
    m = k.Model(inp, out)
    x = np.random.default_rng(2).uniform(0.2, 1.0, (32, 8, 8, 3)).astype(np.float32)  # non-zero mean
    ref = m.predict(x, verbose=0).mean(axis=(0, 1, 2))
    naive = quantize_weights_rtn(m, 2).predict(x, verbose=0).mean(axis=(0, 1, 2))
    adv, rep = quantize_weights_advanced(m, 2, [(x, None)])
    corrected = adv.predict(x, verbose=0).mean(axis=(0, 1, 2))
    assert rep.corrected == [m.layers[1].name]
    assert np.abs(corrected - ref).max() < 1e-4 < np.abs(naive - ref).max()


def test_bias_free_conv_shift_goes_into_the_following_batch_norm(tiny_model):
    from edgeq.methods.keras.bias_correction import quantize_weights_advanced

    x = np.random.default_rng(3).normal(0.3, 1.0, (16, 16, 16, 3)).astype(np.float32)
    adv, rep = quantize_weights_advanced(tiny_model, 4, [(x, None)])
    assert rep.uncorrected == []
    bn = next(layer for layer in adv.layers if "batch_normalization" in layer.name)
    orig = tiny_model.get_layer(bn.name)
    assert not np.allclose(bn.moving_mean.numpy(), orig.moving_mean.numpy())


def test_verdict_says_qat_not_needed_when_ptq_is_within_tolerance():
    v = verdict_for(8, _cells(0.90, ptq_naive=0.898, ptq_advanced=0.899, qat=0.897), 0.5)
    assert "within 0.20 pt" in v and "QAT not needed" in v


def test_verdict_reports_what_qat_recovers_over_naive_ptq():
    v = verdict_for(4, _cells(0.90, ptq_naive=0.85, ptq_advanced=0.87, qat=0.889), 0.5)
    assert "QAT recovers 3.90 pt over naive PTQ" in v and "ordering" not in v


def test_verdict_says_plainly_when_the_expected_ordering_does_not_hold():
    v = verdict_for(4, _cells(0.90, ptq_naive=0.80, ptq_advanced=0.78, qat=0.85), 0.5)
    assert "does not hold" in v and "PTQ advanced 78.00 %" in v


def test_verdict_when_qat_does_not_beat_ptq():
    v = verdict_for(4, _cells(0.90, ptq_naive=0.80, ptq_advanced=0.86, qat=0.84), 0.5)
    assert "does not beat" in v


def test_comparison_bits_are_validated():
    from edgeq.core.config import ComparisonSpec

    assert ComparisonSpec(bits=[4, 8, 4]).bits == [8, 4]
    with pytest.raises(ValueError):
        ComparisonSpec(bits=[1])
