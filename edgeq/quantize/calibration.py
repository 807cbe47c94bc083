"""How many calibration images a quantizer takes: every stage asks the same way and fails the same way."""
from __future__ import annotations

from ..data import LabelledImages
from ..errors import DataError


def calibration_count(split: LabelledImages, n: int, option: str) -> int:
    """`n`, the value of config key `option`; DataError naming both when the calibration split is smaller.

    The same rule and wording as the run's up-front check (`edgeq.config.check_consistency`)."""
    if n > len(split):
        short = option.rsplit(".", 1)[1]
        raise DataError(f"{option} is {n} but the calibration split has only {len(split)} images "
                        f"(data.calibration_size); lower {short} or raise data.calibration_size")
    return n
