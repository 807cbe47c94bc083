"""Cross-layer equalisation (edgeq.methods.keras.equalize): which pairs it takes, and that it changes ranges, not the
float function."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def net():
    """Conv -> BN -> ReLU -> pad -> depthwise (relu) -> conv 1x1 -> ReLU6 -> conv (no pair: capped), a residual
    branch (no pair: two readers) and a GAP -> Dense head; random weights, BN statistics made non-trivial."""
    import edgeq  # noqa: F401
    from edgeq.core.tfcompat import keras, set_seed

    set_seed(0)
    k = keras()
    inp = k.Input((12, 12, 3))
    h = k.layers.Conv2D(8, 3, use_bias=False, name="c1")(inp)
    h = k.layers.BatchNormalization(name="bn1")(h)
    h = k.layers.ReLU(name="r1")(h)
    h = k.layers.ZeroPadding2D(name="pad")(h)
    h = k.layers.DepthwiseConv2D(3, activation="relu", name="dw")(h)
    h = k.layers.Conv2D(8, 1, name="pw")(h)
    h = k.layers.ReLU(6.0, name="relu6")(h)
    r = k.layers.Conv2D(8, 1, activation="relu", name="res_in")(h)
    h = k.layers.Add(name="add")([r, k.layers.Conv2D(8, 1, name="res_branch")(r)])
    h = k.layers.Conv2D(6, 1, activation="relu", name="head_conv")(h)
    h = k.layers.GlobalAveragePooling2D(name="gap")(h)
    m = k.Model(inp, k.layers.Dense(4, name="fc")(h))
    bn = m.get_layer("bn1")
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 0.5, 8), rng.normal(0, 0.3, 8), rng.uniform(0.5, 2, 8)])
    c = m.get_layer("c1")  # unequal channel ranges: what equalisation should undo
    c.set_weights([c.get_weights()[0] * np.float32(np.exp(rng.uniform(-3, 3, 8)))])
    x = rng.normal(0, 1, (64, 12, 12, 3)).astype(np.float32)
    return m, x


def test_pairs_are_those_joined_by_scale_commuting_paths(net):
    from edgeq.methods.keras.equalize import find_pairs

    m, _ = net
    found = {(p.first.name, p.second.name) for p in find_pairs(m)}
    # c1-bn-relu-pad-dw and dw-pw join; pw-relu6 is capped; res_in has two readers; head_conv-gap-fc joins
    assert found == {("c1", "dw"), ("dw", "pw"), ("head_conv", "fc")}


def test_equalisation_keeps_the_float_function_and_evens_the_ranges(net):
    from edgeq.methods.keras.equalize import equalize

    m, x = net
    before = [w.copy() for w in m.get_weights()]
    eq, rep = equalize(m, [(x[i:i + 16], None) for i in range(0, 64, 16)])
    np.testing.assert_allclose(eq.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
    by_pair = {(p["first"], p["second"]): p for p in rep.pairs}
    into_dw = by_pair[("c1", "dw")]  # depthwise second layer: every channel stretched to the widest one
    assert into_dw["range_ratio_before"] > 3 and into_dw["range_ratio_after"] == pytest.approx(1.0, abs=0.01)
    assert all(p["range_ratio_after"] <= p["range_ratio_before"] for p in rep.pairs)
    for a, b in zip(before, m.get_weights()):  # the model passed in is untouched: equalize works on a copy
        np.testing.assert_array_equal(a, b)


def test_a_model_without_homogeneous_pairs_is_left_as_it_is():
    import edgeq  # noqa: F401
    from edgeq.methods.keras.equalize import equalize
    from edgeq.core.tfcompat import keras

    k = keras()
    inp = k.Input((8, 8, 3))
    h = k.layers.ReLU(6.0)(k.layers.Conv2D(4, 3)(inp))
    m = k.Model(inp, k.layers.DepthwiseConv2D(3)(h))
    eq, rep = equalize(m, [(np.ones((2, 8, 8, 3), np.float32), None)])
    assert rep.pairs == []
    for a, b in zip(m.get_weights(), eq.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_grouped_convolution_is_not_the_second_layer_of_a_pair():
    """Its kernel holds cin/groups input channels: per-input-channel scaling would hit the wrong weights."""
    import edgeq  # noqa: F401
    from edgeq.methods.keras.equalize import find_pairs
    from edgeq.core.tfcompat import keras

    k = keras()
    inp = k.Input((8, 8, 4))
    h = k.layers.Conv2D(8, 1, activation="relu", name="a")(inp)
    h = k.layers.Conv2D(8, 3, groups=2, activation="relu", name="grouped")(h)
    m = k.Model(inp, k.layers.Conv2D(4, 1, name="b")(h))
    assert {(p.first.name, p.second.name) for p in find_pairs(m)} == {("grouped", "b")}


def test_a_batch_norm_over_another_axis_than_the_channels_breaks_the_pair():
    """BatchNormalization(axis=1) on an NHWC tensor normalises rows: scaling its gamma would not scale channels."""
    import edgeq  # noqa: F401
    from edgeq.methods.keras.equalize import find_pairs
    from edgeq.core.tfcompat import keras

    k = keras()
    inp = k.Input((8, 8, 4))
    h = k.layers.Conv2D(8, 1, name="a")(inp)
    h = k.layers.ReLU()(k.layers.BatchNormalization(axis=1)(h))
    m = k.Model(inp, k.layers.Conv2D(4, 1, name="b")(h))
    assert find_pairs(m) == []
