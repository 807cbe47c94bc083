"""How many calibration images a quantizer takes, and which ones are held back from it: every stage asks the same
way and fails the same way."""
from __future__ import annotations

import numpy as np

from edgeq.core.data import LabelledImages
from edgeq.core.errors import DataError


def calibration_count(split: LabelledImages, n: int, option: str) -> int:
    """`n`, the value of config key `option`; DataError naming both when the calibration split is smaller.

    The same rule and wording as the run's up-front check (`edgeq.core.config.check_consistency`)."""
    if n > len(split):
        short = option.rsplit(".", 1)[1]
        raise DataError(f"{option} is {n} but the calibration split has only {len(split)} images "
                        f"(data.calibration_size); lower {short} or raise data.calibration_size")
    return n


def held_back(split: LabelledImages, start: int, n: int) -> LabelledImages:
    """Up to `n` calibration-split images from index `start` on (images no quantizer calibrated on), to choose among
    candidate artifacts by measured error; never the evaluation split. Where fewer than 16 are left, the split's
    last `n`, overlapping the calibrated ones (its source says so)."""
    idx = np.arange(start, min(len(split), start + n))
    if len(idx) < 16:
        idx = np.arange(max(0, len(split) - n), len(split))
    return split.take(idx, source=f"calibration images {idx[0]}..{idx[-1]}"
                      + (" (overlapping the calibrated ones)" if idx[0] < start else ""))
