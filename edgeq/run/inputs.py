"""A run's inputs from its config: the model's preprocessing, its class map, and the calibration / eval /
train splits (listed and counted before any image is decoded; calibration and eval never overlap)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.core.config import RunConfig
from edgeq.core.data import (LabelledImages, Preprocess, Splits, fashion_mnist_splits, load_npz, split_one, split_sizes)
from edgeq.core.image_folder import FolderListing, decode_image_folder, list_image_folder, read_labels_file
from edgeq.core.errors import DataError


def preprocess_of(cfg: RunConfig) -> Preprocess:
    """The model input transform of a config: resize to H x W, C channels, (pixel - mean) / std."""
    h, w, c = cfg.model.input_shape
    return Preprocess((h, w), c, tuple(cfg.preprocess.mean), tuple(cfg.preprocess.std))


def class_map(cfg: RunConfig) -> list[str] | None:
    """The model's class names in output order (data.classes or data.labels_file), or None."""
    d = cfg.data
    if d.classes is not None:
        return list(d.classes)
    if d.labels_file is None:
        return None
    names = read_labels_file(d.labels_file)
    if len(names) != cfg.model.num_classes:
        raise DataError(f"{d.labels_file}: lists {len(names)} class names but model.num_classes is "
                        f"{cfg.model.num_classes}; list every class of the model, one per line, in output order")
    return names


def load_splits(cfg: RunConfig, pre: Preprocess) -> Splits:
    """The calibration / eval / train splits of a config (counts checked before any image is decoded)."""
    d = cfg.data
    if d.kind == "fashion_mnist":
        return fashion_mnist_splits(d.calibration_size, d.eval_size, d.train_size, d.seed, d.prefer_full_dataset)
    separate = d.calibration_path is not None and d.eval_path is not None
    listings: dict[Path, FolderListing] = {}
    if d.kind == "image_folder":  # list (cheap) and check every count before decoding any image
        classes = class_map(cfg)
        for p in ([d.calibration_path, d.eval_path] if separate else [d.path]) + ([d.train_path] if d.train_path else []):
            listings[p] = list_image_folder(p, classes, cfg.model.num_classes)
        if separate:
            _check_calibration_count(d, len(listings[d.calibration_path]))
        else:
            split_sizes(len(listings[d.path]), d.calibration_size, d.eval_size, str(d.path))

    def load(p: Path) -> LabelledImages:
        if d.kind == "npz":
            return load_npz(p)
        return decode_image_folder(listings[p], pre)

    if separate:
        cal = load(d.calibration_path)
        _check_calibration_count(d, len(cal))
        ev = load(d.eval_path)
        _refuse_overlap(cal, ev, d.calibration_path, d.eval_path, "calibration")
        rng = np.random.default_rng(d.seed)
        cal = cal.take(rng.permutation(len(cal))[:d.calibration_size])
        whole = d.eval_size is None or d.eval_size >= len(ev)
        if not whole:
            ev = ev.take(rng.permutation(len(ev))[:d.eval_size])
        tr = load(d.train_path) if d.train_path else None
        if tr is not None:
            _refuse_overlap(tr, ev, d.train_path, d.eval_path, "training")
        return Splits(cal, ev, tr, f"{d.eval_path} ({len(ev)} images)", full_test_set=whole)
    splits = split_one(load(d.path), d.calibration_size, d.eval_size, d.seed)
    if d.train_path:
        splits.train = load(d.train_path)
    return splits


def _refuse_overlap(a: LabelledImages, ev: LabelledImages, a_path: Path, ev_path: Path, what: str) -> None:
    """Evaluation images must be unseen: none may also be a calibration or training image."""
    if a.fingerprint() == ev.fingerprint():
        raise DataError(f"{a_path} and {ev_path} hold the same images; {what} and evaluation images must not "
                        "overlap")
    shared = len(a.image_hashes() & ev.image_hashes())
    if shared:
        raise DataError(f"{ev_path}: {shared} of its {len(ev)} images are also {what} images ({a_path}); {what} "
                        "and evaluation images must not overlap: remove them from one of the two sets")


def _check_calibration_count(d, have: int) -> None:
    if have < d.calibration_size:
        raise DataError(f"{d.calibration_path}: {d.calibration_size} calibration images asked for "
                        f"(data.calibration_size) but only {have} found; lower it or add images")


def check_classes(cfg: RunConfig, splits: Splits) -> None:
    """Every label of the calibration and eval splits is a class of the model."""
    for part in (splits.calibration, splits.eval):
        if len(part) and part.labels.max() >= cfg.model.num_classes:
            raise DataError(f"{part.source}: label {int(part.labels.max())} but the model has "
                            f"{cfg.model.num_classes} classes (model.num_classes); fix the labels, "
                            "or map class names to the model's indices with data.classes")
