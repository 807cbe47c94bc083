"""GPTQ rounding (edgeq.methods.keras.gptq) on its own: what it promises before any runtime sees the codes."""
from __future__ import annotations

import numpy as np
import pytest

from edgeq.methods.keras.gptq import round_columns


@pytest.fixture(scope="module")
def layer():
    """A 32x64 weight matrix and the Hessian of strongly correlated inputs (where error feedback pays)."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(64, 64)) * np.exp(-np.abs(np.subtract.outer(np.arange(64), np.arange(64))) / 8)
    x = rng.normal(size=(4096, 64)) @ mix
    return rng.normal(size=(32, 64)), 2 * x.T @ x / len(x)


@pytest.mark.parametrize("bits", [4, 8])
def test_codes_stay_on_the_grid_whose_end_is_each_channels_peak(layer, bits):
    w, h = layer
    codes, scale = round_columns(w, h, bits)
    q = 2 ** (bits - 1) - 1
    assert codes.dtype == np.int32 and np.abs(codes).max() <= q
    np.testing.assert_allclose(scale, np.abs(w).max(axis=1) / q)
    # a runtime that recomputes the scale from max|w| finds the same one: every channel keeps a code at +-q
    assert (np.abs(codes).max(axis=1) == q).all()
    peak = np.abs(w).argmax(axis=1)
    assert (codes[np.arange(len(w)), peak] == np.sign(w[np.arange(len(w)), peak]) * q).all()


def test_gptq_output_error_is_below_round_to_nearest(layer):
    w, h = layer
    codes, scale = round_columns(w, h, 4)
    near = np.clip(np.rint(w / scale[:, None]), -7, 7)

    def err(c):  # E||(W - Q) x||^2 under the inputs' second moments
        d = w - c * scale[:, None]
        return float(np.sum((d @ h) * d))

    assert err(codes) < 0.8 * err(near)
