"""Tensor-by-tensor comparison of two runs of one INT8 .tflite (edgeq.measure.bisect), on a tiny real model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeq.core.errors import EdgeqError
from edgeq.measure.bisect import compare, host_side, load_tensors, markdown

from conftest import build_tiny_cnn, convert_tflite


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A real INT8 .tflite of the tiny CNN (conv, depthwise, add, pooling, dense) and 4 float images."""
    x = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    p = tmp_path_factory.mktemp("bisect") / "tiny_int8.tflite"
    p.write_bytes(convert_tflite(build_tiny_cnn(train=False), True, x))
    return p, x[:4]


def test_the_same_kernels_agree_tensor_for_tensor(tiny_int8):
    path, x = tiny_int8
    b = compare("tiny", host_side(path, x), host_side(path, x, where="twin"))
    assert b.first is None and b.ops_differing == 0
    assert b.verdict.startswith("host and twin agree tensor for tensor")
    assert all(r.differing == 0 and r.max_lsb == 0 for r in b.ops)
    assert "agree tensor for tensor" in markdown(b)


def test_xnnpack_against_reference_kernels_names_the_first_diverging_op_in_lsb(tiny_int8):
    path, x = tiny_int8
    host, ref = host_side(path, x), host_side(path, x, "reference", where="ref")
    assert "XNNPACK" in host.kernels_used() and set(ref.kernels_used()) == {"reference"}
    b = compare("tiny", host, ref)
    assert b.first is not None
    # the first diverging op is the first row that differs, and nothing before it differs
    i = b.ops.index(b.first)
    assert all(r.differing == 0 for r in b.ops[:i]) and b.first.differing > 0
    # integer tensors: the difference is a whole number of quantisation steps, recomputed here from the tensors
    t = host.ops[b.first.position]["outputs"][0]
    d = np.abs(host.arrays[f"t{t}"].astype(int) - ref.arrays[f"t{t}"].astype(int))
    assert b.first.max_lsb == d.max() >= 1 and b.first.differing == np.count_nonzero(d)
    assert (b.first.host_kernel, b.first.device_kernel) == ("XNNPACK", "reference")
    assert f"op {b.first.index} {b.first.op}" in b.verdict and f"{b.first.max_lsb:g} LSB" in b.verdict
    md = markdown(b)
    assert "| op | type |" in md and "XNNPACK / reference" in md


def test_markdown_escapes_tensor_names_from_the_model(tiny_int8):
    path, x = tiny_int8
    host, ref = host_side(path, x), host_side(path, x, "reference", where="ref")
    b = compare("tiny", host, ref)
    b.first.tensor = "<script>a|b</script>"
    md = markdown(b)
    assert "<script>" not in md and "a\\|b" in md


def test_pickled_tensor_files_are_refused(tmp_path):
    p = tmp_path / "t.npz"
    with open(p, "wb") as f:
        np.savez(f, t0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(EdgeqError, match="not a readable tensors file"):
        load_tensors(p)


def test_models_with_other_ops_are_refused_as_not_comparable(tiny_int8):
    path, x = tiny_int8
    host, other = host_side(path, x), host_side(path, x, where="other")
    other.ops = other.ops[:-1]
    with pytest.raises(EdgeqError, match="different ops"):
        compare("tiny", host, other)
