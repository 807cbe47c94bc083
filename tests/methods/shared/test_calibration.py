"""The one calibration provider: every quantizer gets the same first n images, in the layout it asks for, with one
count rule and one cache key; held-back images come after the calibrated ones."""
from __future__ import annotations

import numpy as np
import pytest

from edgeq.core.data import LabelledImages, Preprocess
from edgeq.core.errors import DataError
from edgeq.methods.shared.calibration import CalibrationImages


def split(n: int = 100) -> LabelledImages:
    rng = np.random.default_rng(0)
    return LabelledImages(rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 3, "test split")


def test_every_shape_holds_the_same_first_n_images():
    pre = Preprocess((8, 8), 3)
    cal = CalibrationImages.take(split(), pre, 40, "stages.x.calibration_images")
    nhwc = cal.array()
    assert nhwc.shape == (40, 8, 8, 3) and nhwc.dtype == np.float32
    np.testing.assert_array_equal(cal.array("NCHW"), nhwc.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(np.concatenate([x for x, _ in cal.batches(16)]), nhwc)
    one = [x[0] for x in cal.one_at_a_time()()]
    assert len(one) == 40 and all(x.shape == (1, 8, 8, 3) for x in one)
    np.testing.assert_array_equal(np.concatenate(one), nhwc)


def test_count_rule_names_the_option_and_the_split():
    with pytest.raises(DataError, match=r"stages.x.calibration_images is 300 but the calibration split has only 100"):
        CalibrationImages.take(split(), Preprocess((8, 8), 3), 300, "stages.x.calibration_images")


def test_key_follows_content_and_count_and_held_back_images_follow_the_calibrated_ones():
    pre = Preprocess((8, 8), 3)
    a = CalibrationImages.take(split(), pre, 40, "o.p")
    assert a.key == CalibrationImages.take(split(), pre, 40, "o.p").key
    assert a.key != CalibrationImages.take(split(), pre, 41, "o.p").key
    held = a.held_back(30)
    assert len(held) == 30
    np.testing.assert_array_equal(held.images, split().images[40:70])
