"""Bad input on the surfaces added with the Python API: `edgeq.quantize`, `edgeq run --model` (no YAML) and
`edgeq run --example`: one clear line (or one typed EdgeqError from Python), nothing written."""
from __future__ import annotations

import numpy as np
import pytest

import edgeq
from edgeq.core.errors import DataError, ModelError
from hostile import Proj, assert_one_error, cli, onnx_model, proj  # noqa: F401


def test_quantize_refuses_an_object_that_is_no_model(proj: Proj):
    x = np.zeros((8, 16, 16, 3), np.uint8)
    y = np.arange(8) % 3
    with pytest.raises(ModelError, match=r"a builtins.dict is not a model edgeq takes; give a tf-keras model"):
        edgeq.quantize({"weights": [1, 2]}, calibration=(x, y), evaluation=(x, y), out=proj.out)
    assert not proj.out.exists()


def test_quantize_refuses_normalised_images_before_writing(proj: Proj):
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype(np.float32)
    with pytest.raises(DataError, match=r"evaluation: float images in \[.*before normalisation"):
        edgeq.quantize(proj.model, calibration=(np.zeros((8, 16, 16, 3), np.uint8), np.arange(8) % 3),
                       evaluation=(x, np.arange(8) % 3), out=proj.out)
    assert not proj.out.exists()


@pytest.mark.parametrize("args, expect", [
    (("--data", "missing_dir"), ("missing_dir", "not a directory")),
    (("--example", "nope"), ("no example named 'nope'", "the package ships: mobilenet_v2")),
])
def test_run_without_a_yaml_refuses_in_one_line(proj: Proj, capsys, args, expect):
    model = onnx_model(proj.root / "m.onnx")
    extra = ("--model", model) if args[0] == "--data" else ()
    args = tuple(str(proj.root / a) if a == "missing_dir" else a for a in args)
    code, _, err = cli(capsys, "run", *extra, *args, "--out", proj.out)
    assert_one_error(code, err, *expect)
    assert not proj.out.exists()


def test_pytorch_file_without_input_shape_is_asked_for_it(proj: Proj, capsys):
    (proj.root / "net.pt").write_bytes(b"x")
    code, _, err = cli(capsys, "run", "--model", proj.root / "net.pt", "--data", proj.images, "--out", proj.out)
    assert_one_error(code, err, "give --input-shape H,W,C")
    assert not proj.out.exists()
