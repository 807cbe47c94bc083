"""Labelled image sets, model-family preprocessing, deterministic splits.

Images are kept as uint8 (N, H, W, C) at their stored resolution and turned into the model's float
input batch by batch, so a 10,000-image evaluation set at 96x96x3 never sits in memory as float32.
Calibration, evaluation and training images never overlap: every split is a disjoint slice of one
permutation (or of disjoint source files).
"""
from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgeq.core.errors import DataError

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MNIST_CLASSES = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]
# Fashion-MNIST train indices [0, TRAIN_END) may be used for training; [TRAIN_END, 60000) are held
# out for calibration; the 10,000 test images are the evaluation set.
FASHION_MNIST_TRAIN_END = 55_000
# the shipped 1,000-image sample, package data (in a checkout: a link to calibration_data/, where its script lives)
SHIPPED_SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist_sample.npz"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Preprocess:
    """How raw uint8 pixels become the model's float input."""

    size: tuple[int, int]  # (height, width)
    channels: int = 3
    mean: tuple[float, ...] = (127.5,)
    std: tuple[float, ...] = (127.5,)

    def resize(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N,h,w,c) -> uint8 (N,H,W,channels), bilinear, grey<->RGB as needed."""
        images = _as_nhwc(images)
        h, w = self.size
        if images.shape[1:3] != (h, w):
            from PIL import Image

            out = np.empty((len(images), h, w, images.shape[3]), np.uint8)
            for i, img in enumerate(images):
                mode_img = img[..., 0] if img.shape[2] == 1 else img
                pil = Image.fromarray(mode_img).resize((w, h), Image.BILINEAR)
                out[i] = np.asarray(pil).reshape(h, w, -1)
            images = out
        c = images.shape[3]
        if c == self.channels:
            return images
        if c == 1:
            return np.repeat(images, self.channels, axis=3)
        if self.channels == 1 and c == 3:
            grey = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]
        raise DataError(f"cannot convert {c}-channel images to the model's {self.channels} channels")

    def normalize(self, images_u8: np.ndarray) -> np.ndarray:
        x = images_u8.astype(np.float32)
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.normalize(self.resize(images))


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"images must be uint8 pixels, got {images.dtype}")
    if images.ndim == 3:
        return images[..., None]
    if images.ndim != 4:
        raise DataError(f"images must be (N,H,W) or (N,H,W,C), got shape {images.shape}")
    return images


@dataclass
class LabelledImages:
    images: np.ndarray  # uint8 (N,H,W[,C]) at stored resolution
    labels: np.ndarray  # int64 (N,)
    source: str
    class_names: list[str] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.images = _as_nhwc(self.images)
        self.labels = np.asarray(self.labels, np.int64)
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.source}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: Sequence[int] | np.ndarray, source: str | None = None) -> "LabelledImages":
        idx = np.asarray(idx, np.int64)
        return LabelledImages(self.images[idx], self.labels[idx], source or self.source, self.class_names)

    def batches(self, pre: Preprocess, batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, len(self), batch_size):
            yield pre(self.images[s:s + batch_size]), self.labels[s:s + batch_size]

    def image_hashes(self) -> set[bytes]:
        """One content hash per image: what two sets have in common, whatever their order."""
        return set(self.image_hash_list())

    def image_hash_list(self) -> list[bytes]:
        """The content hash of each image, in order (duplicates kept)."""
        return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest() for im in self.images]

    def fingerprint(self) -> str:
        """Content hash of images and labels (cache keys of evaluations); computed once per set."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(np.ascontiguousarray(self.images).tobytes())
            h.update(self.labels.tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def eval_subset(n_total: int, n: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a fixed, seeded subset of `n` of `n_total` evaluation images; None when `n` is None or
    covers them all. The same (n_total, n, seed) always gives the same images, so a rerun pairs the same ones."""
    if n is None or n >= n_total:
        return None
    return np.sort(np.random.default_rng([seed, n_total, n]).choice(n_total, n, replace=False)).astype(np.int64)


@dataclass
class Splits:
    calibration: LabelledImages
    eval: LabelledImages
    train: LabelledImages | None
    dataset: str  # what the evaluation set is, for the report
    full_test_set: bool = False  # the evaluation set is a whole test set, not a split or a sample of one
    same_pool: bool = False  # calibration and evaluation images are disjoint random draws from one labelled set


# ---------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_dir() -> Path | None:
    for d in FASHION_MNIST_DIRS:
        if (d / "t10k-images-idx3-ubyte.gz").exists() and (d / "train-images-idx3-ubyte.gz").exists():
            return d
    return None


def load_fashion_mnist_full() -> tuple[LabelledImages, LabelledImages]:
    d = fashion_mnist_dir()
    if d is None:
        raise DataError("Fashion-MNIST not found in /usr/share/datasets/fashion-mnist: "
                        "install it with `apt-get install dataset-fashion-mnist`")
    train = LabelledImages(_read_idx(d / "train-images-idx3-ubyte.gz"),
                           _read_idx(d / "train-labels-idx1-ubyte.gz"),
                           "fashion-mnist train", FASHION_MNIST_CLASSES)
    test = LabelledImages(_read_idx(d / "t10k-images-idx3-ubyte.gz"),
                          _read_idx(d / "t10k-labels-idx1-ubyte.gz"),
                          "fashion-mnist test", FASHION_MNIST_CLASSES)
    return train, test


def load_npz(path: Path, prefix: str = "") -> LabelledImages:
    """uint8 images (N,H,W[,C]) and integer labels (N,) from an .npz; every refusal names the file."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a directory, a named pipe, a device: never opened for reading
        raise DataError(f"{path}: not a readable .npz (not a regular file: a directory, pipe or device); write one "
                        f"with np.savez(path, {prefix}images=uint8_array, {prefix}labels=int_array), or give an "
                        "image folder with data.kind: image_folder")
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z[prefix + "images"], z[prefix + "labels"]
            names = [str(n) for n in z["class_names"]] if "class_names" in z.files else []
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except KeyError as e:
        raise DataError(f"{path}: missing array {e}; expected '{prefix}images' and '{prefix}labels'") from None
    except Exception as e:  # BadZipFile, zlib.error, EOFError, pickled arrays (ValueError), ...: one line
        why = " ".join(str(e).split())[:120] or e.__class__.__name__
        raise DataError(f"{path}: not a readable .npz of arrays ({why}); write it with "
                        f"np.savez(path, {prefix}images=uint8_array, {prefix}labels=int_array)") from None
    check_arrays(images, labels, str(path), prefix)
    return LabelledImages(images, labels, f"{path.name}:{prefix or 'all'}", names)


def check_arrays(images: np.ndarray, labels: np.ndarray, where: str, prefix: str = "") -> None:
    """uint8 pixels (N,H,W) or (N,H,W,1|3) and non-negative integer class indices (N,), or a DataError."""
    im, lb = prefix + "images", prefix + "labels"
    if images.dtype != np.uint8:
        nan = " and holds NaN" if images.dtype.kind == "f" and np.isnan(images).any() else ""
        raise DataError(f"{where}: '{im}' is {images.dtype}{nan}; edgeq reads uint8 pixels 0-255: convert with "
                        "np.clip(np.nan_to_num(x) * 255, 0, 255).astype(np.uint8) (x in [0, 1])")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)) or 0 in images.shape[1:3]:
        raise DataError(f"{where}: '{im}' has shape {images.shape}; expected (N, H, W) or (N, H, W, 1|3)")
    if len(images) == 0:
        raise DataError(f"{where}: '{im}' holds no images")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        onehot = "; one-hot? store labels.argmax(1)" if labels.ndim == 2 else ""
        raise DataError(f"{where}: '{lb}' is {labels.dtype} with shape {labels.shape}; expected integer class "
                        f"indices of shape (N,){onehot}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{where}: '{lb}' holds {int(labels.min())}; class indices run from 0 to num_classes - 1")
    if len(labels) != len(images):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")


def fashion_mnist_splits(calibration_size: int, eval_size: int | None, train_size: int | None,
                         seed: int, prefer_full: bool = True) -> Splits:
    rng = np.random.default_rng(seed)
    if prefer_full and fashion_mnist_dir() is not None:
        train, test = load_fashion_mnist_full()
        held = np.arange(FASHION_MNIST_TRAIN_END, len(train))
        cal_idx = rng.permutation(held)
        _need(calibration_size, len(cal_idx), "fashion-mnist held-out calibration pool")
        ev = test if eval_size is None else test.take(rng.permutation(len(test))[:_need(eval_size, len(test), "fashion-mnist test")])
        tr_idx = rng.permutation(FASHION_MNIST_TRAIN_END)[: train_size or FASHION_MNIST_TRAIN_END]
        return Splits(train.take(cal_idx[:calibration_size], "fashion-mnist train[55000:] (held out)"),
                      ev, train.take(tr_idx, "fashion-mnist train[:55000]"),
                      f"fashion-mnist test ({len(ev)} images)", full_test_set=len(ev) == len(test))
    if not SHIPPED_SAMPLE.exists():
        raise DataError(f"neither the Debian package dataset-fashion-mnist nor {SHIPPED_SAMPLE} is present")
    cal = load_npz(SHIPPED_SAMPLE, "calibration_")
    ev = load_npz(SHIPPED_SAMPLE, "eval_")
    tr = load_npz(SHIPPED_SAMPLE, "train_")
    for s in (cal, ev, tr):
        s.class_names = FASHION_MNIST_CLASSES
    _need(calibration_size, len(cal), str(SHIPPED_SAMPLE) + " calibration sample")
    cal = cal.take(rng.permutation(len(cal))[:calibration_size], "shipped sample: fashion-mnist train[55000:]")
    if eval_size is not None:
        ev = ev.take(rng.permutation(len(ev))[:_need(eval_size, len(ev), "shipped eval sample")])
    if train_size is not None:
        tr = tr.take(rng.permutation(len(tr))[:min(train_size, len(tr))])
    return Splits(cal, ev, tr, f"shipped fashion-mnist test sample ({len(ev)} images; "
                               "install dataset-fashion-mnist for the full 10,000)")


def _need(n: int, have: int, what: str) -> int:
    if n > have:
        raise DataError(f"{what}: {n} images asked for but only {have} available; "
                        "lower the size in the config or add images")
    return n


def split_sizes(n: int, calibration_size: int, eval_size: int | None, source: str) -> tuple[int, int]:
    """(calibration, eval) image counts of one set of n images, or a DataError (checked before decoding)."""
    _need(calibration_size, n, f"{source} (calibration)")
    rest = n - calibration_size
    n_eval = rest // 2 if eval_size is None else _need(eval_size, rest, f"{source} (eval after calibration)")
    if n_eval == 0:
        raise DataError(f"{source}: no images left for evaluation after {calibration_size} calibration images; "
                        "lower data.calibration_size or add images")
    return calibration_size, n_eval


def split_one(data: LabelledImages, calibration_size: int, eval_size: int | None, seed: int) -> Splits:
    """Deterministic disjoint split of one labelled set: calibration | eval | train (the rest)."""
    n = len(data)
    _, n_eval = split_sizes(n, calibration_size, eval_size, data.source)
    perm = np.random.default_rng(seed).permutation(n)
    cal = data.take(perm[:calibration_size], f"{data.source} (calibration split)")
    ev = data.take(perm[calibration_size:calibration_size + n_eval], f"{data.source} (eval split)")
    tr_idx = perm[calibration_size + n_eval:]
    tr = data.take(tr_idx, f"{data.source} (train split)") if len(tr_idx) else None
    return Splits(cal, ev, tr, f"{data.source} eval split ({len(ev)} images)", same_pool=True)
