import numpy as np
import pytest

from edgeq.core.data import (SHIPPED_SAMPLE, FASHION_MNIST_TRAIN_END, Preprocess, fashion_mnist_dir, fashion_mnist_splits, load_npz, split_one)
from edgeq.core.image_folder import load_image_folder
from edgeq.core.errors import DataError
from conftest import write_image_folder


def test_shipped_sample_is_stratified_and_disjoint():
    with np.load(SHIPPED_SAMPLE, allow_pickle=False) as z:
        cal, tr, ev = z["calibration_index"], z["train_index"], z["eval_index"]
        assert len(cal) == 500 and len(ev) == 1000 and len(tr) == 3000
        assert (cal >= FASHION_MNIST_TRAIN_END).all() and (tr < FASHION_MNIST_TRAIN_END).all()
        assert np.bincount(z["calibration_labels"]).tolist() == [50] * 10
        assert np.bincount(z["eval_labels"]).tolist() == [100] * 10
        assert len(np.unique(ev)) == 1000


def test_fashion_mnist_splits_without_debian_package_use_sample():
    s = fashion_mnist_splits(300, None, None, seed=0, prefer_full=False)
    assert len(s.calibration) == 300 and len(s.eval) == 1000 and "shipped" in s.dataset
    with pytest.raises(DataError, match="only 500 available"):
        fashion_mnist_splits(600, None, None, seed=0, prefer_full=False)


@pytest.mark.skipif(fashion_mnist_dir() is None, reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_full_splits_never_overlap_and_match_sample():
    s = fashion_mnist_splits(500, None, 1000, seed=0)
    assert len(s.eval) == 10_000 and len(s.calibration) == 500
    # calibration images come from the held-out pool: none equals a training image
    train_bytes = {img.tobytes() for img in s.train.images}
    assert not any(img.tobytes() in train_bytes for img in s.calibration.images)
    sample = load_npz(SHIPPED_SAMPLE, "eval_")
    from edgeq.core.data import load_fashion_mnist_full
    _, test = load_fashion_mnist_full()
    with np.load(SHIPPED_SAMPLE, allow_pickle=False) as z:
        assert np.array_equal(test.images[z["eval_index"], ..., 0], sample.images[..., 0])


def test_preprocess_resizes_grey_to_rgb_and_normalises():
    pre = Preprocess((8, 8), 3)
    x = pre(np.full((2, 4, 4), 255, np.uint8))
    assert x.shape == (2, 8, 8, 3) and x.dtype == np.float32 and np.allclose(x, 1.0)


def test_image_folder_and_split_one_disjoint(tmp_path):
    write_image_folder(tmp_path / "imgs", 60, classes=3, size=12)
    data = load_image_folder(tmp_path / "imgs", Preprocess((12, 12), 3))
    assert data.class_names == ["class_0", "class_1", "class_2"] and len(data) == 60
    s = split_one(data, 10, 20, seed=1)
    keys = [set(map(bytes, p.images.reshape(len(p), -1))) for p in (s.calibration, s.eval, s.train)]
    assert len(s.calibration) == 10 and len(s.eval) == 20 and len(s.train) == 30
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert np.array_equal(split_one(data, 10, 20, seed=1).eval.labels, s.eval.labels)  # deterministic


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-directories"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="notes.txt: not an image file"):
        load_image_folder(tmp_path / "bad")
    (tmp_path / "corrupt" / "a").mkdir(parents=True)
    (tmp_path / "corrupt" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png: cannot be read as an image"):
        load_image_folder(tmp_path / "corrupt")


def test_npz_refuses_pickled_objects(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, images=np.array([object()], dtype=object), labels=np.array([0]))
    with pytest.raises(DataError, match="not a readable .npz"):
        load_npz(p)
