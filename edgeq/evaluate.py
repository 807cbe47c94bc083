"""Accuracy of any artifact on the evaluation split, through a Predictor; agreement with FP32."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .data import LabelledImages, Preprocess
from .runtime import Predictor


@dataclass
class EvalResult:
    top1: float
    top5: float | None
    n: int
    dataset: str
    seconds: float
    predictions: np.ndarray  # argmax per image, for agreement

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("predictions")
        return d


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> int:
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def evaluate(predictor: Predictor, data: LabelledImages, pre: Preprocess, dataset: str,
             batch_size: int = 64) -> EvalResult:
    t = time.perf_counter()
    correct1 = correct5 = 0
    preds = []
    for x, y in data.batches(pre, batch_size):
        s = predictor.predict(x)
        s = s.reshape(len(x), -1)
        preds.append(np.argmax(s, axis=1))
        correct1 += int((preds[-1] == y).sum())
        correct5 += topk_correct(s, y, 5)
    n = len(data)
    classes = s.shape[1] if n else 0
    return EvalResult(top1=round(correct1 / n, 5), top5=round(correct5 / n, 5) if classes > 5 else None, n=n,
                      dataset=dataset, seconds=round(time.perf_counter() - t, 2),
                      predictions=np.concatenate(preds).astype(np.int16))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((np.asarray(a) == np.asarray(b)).mean()), 5)
