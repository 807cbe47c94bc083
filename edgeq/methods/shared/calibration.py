"""The calibration images every quantizer takes, from one provider (as ONNX Runtime's CalibrationDataReader and
Ultralytics' shared INT8 loader): `CalibrationImages` knows how many (the count rule, in one place), how they are
preprocessed, in which layout, which images are held back from it, and its cache key. Every stage asks for it the
same way (`ctx.calibration(n, option)`) and fails the same way."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from edgeq.core.data import LabelledImages, Preprocess
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


@dataclass(frozen=True)
class CalibrationImages:
    """The first `n` images of the calibration split, as every quantizer takes them."""

    split: LabelledImages  # the whole calibration split (held-back images come after the first n)
    pre: Preprocess
    n: int
    option: str  # the config key that asked for n (named in errors)

    @classmethod
    def take(cls, split: LabelledImages, pre: Preprocess, n: int, option: str) -> "CalibrationImages":
        """The first `n` (config key `option`); DataError naming both when the split is smaller."""
        return cls(split, pre, calibration_count(split, n, option), option)

    @property
    def key(self) -> dict:
        """What an artifact calibrated on these images depends on: the split's content and the count."""
        return {"calibration": self.split.fingerprint(), "n": self.n}

    def array(self, layout: str = "NHWC") -> np.ndarray:
        """The n images preprocessed, float32, NHWC (or NCHW for an ONNX model that takes it)."""
        x = self.pre(self.split.images[:self.n])
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "NCHW" else x

    def batches(self, size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels) of the n, preprocessed, in batches (NHWC): range statistics, bias correction, GPTQ."""
        return self.split.take(np.arange(self.n)).batches(self.pre, size)

    def one_at_a_time(self) -> Callable[[], Iterator[list[np.ndarray]]]:
        """The TFLite converter's representative dataset: a generator factory, one [1, H, W, C] image per yield."""
        def gen():
            for x, _ in self.batches():
                for img in x:
                    yield [img[None]]
        return gen

    def held_back(self, n: int) -> LabelledImages:
        """Up to `n` images after the calibrated ones, never the evaluation split (see `held_back`)."""
        return held_back(self.split, self.n, n)
