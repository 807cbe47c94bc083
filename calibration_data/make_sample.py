"""Materialise calibration_data/fashion_mnist_sample.npz from Debian's dataset-fashion-mnist.

A fixed, stratified sample so the main job runs without the Debian package:
  calibration_*: 500 images (50 per class) from train[55000:60000], the held-out calibration pool
  eval_*:        1,000 images (100 per class) from the 10,000-image test set
  train_*:       3,000 images (300 per class) from train[:55000], for QAT fine-tuning
The three parts never overlap (disjoint index ranges of the source files). Fashion-MNIST: MIT licence,
(c) Zalando SE. Run: python calibration_data/make_sample.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgeq.core.data import FASHION_MNIST_CLASSES, FASHION_MNIST_TRAIN_END, load_fashion_mnist_full  # noqa: E402


def stratified(labels: np.ndarray, pool: np.ndarray, per_class: int, rng) -> np.ndarray:
    out = []
    for c in range(10):
        idx = pool[labels[pool] == c]
        out.append(rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(out))


def main() -> None:
    rng = np.random.default_rng(20261125)
    train, test = load_fashion_mnist_full()
    cal = stratified(train.labels, np.arange(FASHION_MNIST_TRAIN_END, len(train)), 50, rng)
    tr = stratified(train.labels, np.arange(FASHION_MNIST_TRAIN_END), 300, rng)
    ev = stratified(test.labels, np.arange(len(test)), 100, rng)
    out = Path(__file__).resolve().parent / "fashion_mnist_sample.npz"
    np.savez_compressed(out, class_names=np.array(FASHION_MNIST_CLASSES),
                        calibration_images=train.images[cal, ..., 0], calibration_labels=train.labels[cal].astype(np.uint8),
                        calibration_index=cal.astype(np.int32),
                        eval_images=test.images[ev, ..., 0], eval_labels=test.labels[ev].astype(np.uint8),
                        eval_index=ev.astype(np.int32),
                        train_images=train.images[tr, ..., 0], train_labels=train.labels[tr].astype(np.uint8),
                        train_index=tr.astype(np.int32))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
