"""The mixed-precision search's parts: the MILP picks the smallest plan under an error budget with one precision per
layer (checked against every plan of a small instance), and a hand-written plan is what the .tflite file holds."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgeq.core.errors import QuantizationError
from edgeq.methods.shared import mixed_precision as mp


def _instance() -> list[mp.Layer]:
    """Four layers; the big one is cheap to make int4, a small one is very sensitive, one is depthwise (no int4)."""
    return [mp.Layer("big", "CONV_2D", 4000, {"int4": 0.01, "int8": 0.0, "float": -0.001}),
            mp.Layer("sensitive", "CONV_2D", 500, {"int4": 0.5, "int8": 0.0, "float": -0.2}),
            mp.Layer("mid", "FULLY_CONNECTED", 1500, {"int4": 0.05, "int8": 0.0}),
            mp.Layer("dw", "DEPTHWISE_CONV_2D", 300, {"int8": 0.0, "float": -0.05})]


def _brute_force(layers, budget):
    best = None
    for combo in itertools.product(*[sorted(la.error) for la in layers]):
        plan = {la.name: p for la, p in zip(layers, combo)}
        if mp.plan_error(layers, plan) <= budget + 1e-12:
            key = (mp.plan_bytes(layers, plan), mp.plan_error(layers, plan))
            if best is None or key < best[0]:
                best = (key, plan)
    return best


@pytest.mark.parametrize("budget", [-0.25, -0.1, 0.0, 0.01, 0.03, 0.06, 0.2, 0.56, 1.0])
def test_solver_picks_the_smallest_plan_within_the_error_budget(budget):
    layers = _instance()
    plan = mp.solve(layers, budget)
    want = _brute_force(layers, budget)
    assert plan is not None and want is not None
    assert set(plan) == {la.name for la in layers}  # one precision per layer, every layer
    assert all(p in la.error for la, p in zip(layers, (plan[la.name] for la in layers)))
    assert mp.plan_error(layers, plan) <= budget + 1e-9
    assert mp.plan_bytes(layers, plan) == want[0][0]


def test_solver_keeps_the_sensitive_layer_off_int4_and_says_when_no_plan_fits():
    layers = _instance()
    plan = mp.solve(layers, 0.06)
    assert plan["big"] == "int4" and plan["mid"] == "int4" and plan["sensitive"] != "int4"
    assert mp.solve(layers, -10.0) is None  # below the least error any plan has


def test_a_float_layer_needs_its_producer_float():
    layers = [mp.Layer("writer", "CONV_2D", 100, {"int8": 0.0, "float": 0.0}),
              mp.Layer("reader", "DEPTHWISE_CONV_2D", 10, {"int8": 0.0, "float": -1.0}, float_with="writer")]
    assert mp.solve(layers, -0.5) == {"writer": "float", "reader": "float"}
    assert mp.solve(layers, 0.0) == {"writer": "int8", "reader": "int8"}


def test_the_shipped_plan_is_the_smallest_accepted_not_the_last_measured():
    def m(label, size, drop, accepted, kl=0.1):
        return mp.Measured(label, {}, None, None, None, size, 300, kl, drop, (drop - 1, drop + 1), 1.0, 10,
                           accepted=accepted)

    naive = m("int8", 1000, 3.0, False)
    tried = [m("all int4", 700, 9.0, False), m("r1", 800, 0.5, True), m("r2", 750, 0.9, True),
             m("r3", 760, 0.2, True), m("r4", 720, 2.0, False)]
    best, why = mp.choose(tried, naive, 1.0)
    assert best.label == "r2" and why is None
    best, why = mp.choose([t for t in tried if not t.accepted], naive, 1.0)
    assert best is None and "cannot be met" in why and "ship int8" in why


def test_held_back_images_too_few_to_decide_say_how_many_would():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    ref = np.eye(3)[y] * 5.0
    got = ref.copy()
    got[:6] = np.eye(3)[(y[:6] + 1) % 3] * 5.0  # 6 of 300 flipped: 2 pt
    meas = mp.measure("x", ref, y, got, 100)
    assert meas.drop_pt == 2.0
    d = mp.decidable(meas, 1.5)
    assert d["within_budget"] is None and d["images_to_decide"] > 300
    assert mp.predicted_upper_pt(meas, 10000) < mp.predicted_upper_pt(meas, 300)


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    """A small float .tflite with two convolutions, a depthwise and a dense layer, and 40 calibration images."""
    import edgeq  # noqa: F401
    from edgeq.core.tfcompat import keras, set_seed

    set_seed(0)
    k = keras()
    inp = k.Input((16, 16, 3))
    h = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inp)
    h = k.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(h)
    h = k.layers.Conv2D(32, 1, activation="relu", name="c2")(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    model = k.Model(inp, k.layers.Dense(5, name="fc")(h))
    import tensorflow as tf

    blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    x = np.random.default_rng(0).uniform(-1, 1, (40, 16, 16, 3)).astype(np.float32)
    return bytes(blob), x


def test_a_layer_forced_to_int4_by_a_hand_written_plan_is_int4_in_the_file(tiny_tflite):
    from edgeq.methods.tflite import litert

    blob, x = tiny_tflite
    layers = litert.weight_layers(blob)
    types = {o: t for o, (t, _, _) in layers.items()}
    assert sorted(types.values()) == ["CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]
    c2 = next(o for o, t in types.items() if t == "CONV_2D" and "c2" in o)
    dw = next(o for o, t in types.items() if t == "DEPTHWISE_CONV_2D")
    plan = {o: "int8" for o in types} | {c2: "int4", dw: "float"}
    ranges = litert.calibrate_ranges(blob, x, name="plan")
    data, _ = litert.quantize_plan(blob, plan, types, x, range_method="minmax", ranges=ranges, name="plan")
    stored = litert.weight_layers(data)  # read back from the flatbuffer
    assert stored[c2][1] == "int4" and stored[dw][1] == "float32"
    assert all(stored[o][1] == "int8" for o in types if o not in (c2, dw))
    # and LiteRT's own interpreter sees the int4 weights: a packed buffer of half the bytes
    assert litert.weight_bytes(data)["int4"] == -(-layers[c2][2] // 2)
    with pytest.raises(QuantizationError, match="int4 weights only"):
        litert.quantize_plan(blob, plan | {dw: "int4"}, types, x, range_method="minmax", ranges=ranges, name="plan")


def test_expected_drop_follows_the_counted_drop_and_moves_smoothly_with_the_error():
    rng = np.random.default_rng(1)
    n, k = 20000, 10
    y = rng.integers(0, k, n)
    ref = rng.normal(0, 1, (n, k))
    ref[np.arange(n), y] += 2.5  # FP32 right on most images
    noise = rng.normal(0, 1, (n, k))
    def both(scale):
        got = ref + scale * noise
        return mp.expected_drop(ref, got, y)[0], np.mean(ref.argmax(1) == y) - np.mean(got.argmax(1) == y)

    drop, counted = both(0.2)  # small errors (~6 % of answers change): the expectation matches the count
    assert abs(drop - counted) < 0.005
    drop, counted = both(0.5)  # large ones: flips past the runner-up are not counted, so it runs low (acceptance
    assert drop < counted      # then uses the counted drop)
    # on 300 images the counted drop moves in steps of 1/300; the expected one grows smoothly with the error
    small = [mp.expected_drop(ref[:300], ref[:300] + s * noise[:300], y[:300])[0] for s in np.linspace(0.05, 0.3, 6)]
    assert all(b >= a for a, b in zip(small, small[1:])) and len(set(np.round(small, 6))) == 6
