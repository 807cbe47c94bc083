"""The int4-substitution sensitivity proxy (methods/tflite/int4_substitution): the W8A8 file with one layer's weights
patched to W4A8's int4 values computes what the real single-layer int4 model (a litert-quantizer plan) computes."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import _colour_image, build_tiny_cnn, convert_tflite
from edgeq.methods.shared.mixed_precision import output_kl
from edgeq.methods.tflite import int4_substitution as sub
from edgeq.methods.tflite import litert

pytestmark = pytest.mark.skipif(litert.unavailable_reason() is not None, reason="litert-quantizer not installed")


def _predict(tmp_path, data: bytes, x: np.ndarray) -> np.ndarray:
    from edgeq.measure.predictors import TFLitePredictor

    p = tmp_path / "m.tflite"
    p.write_bytes(data)
    return np.asarray(TFLitePredictor(p).predict(x), np.float32).reshape(len(x), -1)


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(0)
    x = ((np.stack([_colour_image(rng, i % 3) for i in range(96)]).astype(np.float32) - 127.5) / 127.5)
    fp32 = convert_tflite(build_tiny_cnn(train=True), int8=False, x=x[:8])
    op_types = {o: t for o, (t, _, _) in litert.weight_layers(fp32).items()}
    ranges = litert.calibrate_ranges(fp32, x[:48], name="t")

    def plan(p: dict) -> bytes:
        return litert.quantize_plan(fp32, p, op_types, x[:48], range_method="minmax", ranges=ranges, name="t")[0]

    base = {o: "int8" for o in op_types}
    w4 = {o: "int4" if t in litert.INT4_OPS else "int8" for o, t in op_types.items()}
    return fp32, op_types, plan, plan(base), plan(w4), x[48:]


def test_substituted_weights_are_exactly_the_int4_models_values(models):
    _, op_types, _, int8, int4, _ = models
    layers = [o for o, t in op_types.items() if t in litert.INT4_OPS]
    s = sub.substitution(int8, int4, layers)
    assert len(layers) >= 2 and set(s.patches) == set(layers)
    s8, s4 = sub.weight_slots(int8), sub.weight_slots(int4)
    for layer in layers:
        patched = s.model(layer)
        assert len(patched) == len(int8)
        slot = sub.weight_slots(patched)[layer]
        w = sub.values(patched, slot) * slot.scales.read(patched)[:, None].astype(np.float64)
        want = sub.values(int4, s4[layer]) * s4[layer].scales.read(int4)[:, None].astype(np.float64)
        np.testing.assert_allclose(w, want, rtol=1e-6, atol=0)
        # the bias keeps its float value at the new scale (within half of its new step)
        if slot.bias is not None:
            old = s8[layer].bias.read(int8) * s8[layer].bias_scales.read(int8).astype(np.float64)
            new = slot.bias.read(patched) * slot.bias_scales.read(patched).astype(np.float64)
            assert np.all(np.abs(new - old) <= slot.bias_scales.read(patched) * 0.51)
        # every other layer's weights are untouched
        assert all(np.array_equal(sub.values(patched, s8[o]), sub.values(int8, s8[o])) for o in layers if o != layer)


def test_substituted_model_computes_what_the_real_single_layer_int4_model_does(tmp_path, models):
    fp32, op_types, plan, int8, int4, x = models
    ref = _predict(tmp_path, fp32, x)
    s = sub.substitution(int8, int4, [o for o, t in op_types.items() if t in litert.INT4_OPS])
    for layer in s.patches:
        real = _predict(tmp_path, plan({**{o: "int8" for o in op_types}, layer: "int4"}), x)
        proxy = _predict(tmp_path, s.model(layer), x)
        assert (real.argmax(1) == proxy.argmax(1)).mean() >= 0.99
        # the same model up to the bias rounding: its error against FP32 is the real one's within 2 %
        k_real, k_proxy = output_kl(ref, real).mean(), output_kl(ref, proxy).mean()
        assert abs(k_proxy - k_real) <= 0.02 * k_real + 1e-5, (layer, k_real, k_proxy)


def test_a_layer_not_int4_in_the_w4a8_model_is_refused_by_name(models):
    _, op_types, _, int8, _, _ = models
    from edgeq.core.errors import QuantizationError

    layer = next(o for o in op_types)
    with pytest.raises(QuantizationError, match="int4 substitution needs both"):
        sub.substitution(int8, int8, [layer])
