"""User models in every Keras form go through the same config; unsafe files are refused."""
import json

import numpy as np
import pytest

from conftest import TINY_CONFIG, build_tiny_cnn, run_edgeq
from edgeq.core.errors import ModelError
from edgeq.loaders.keras import load_keras_model


@pytest.mark.parametrize("form", ["h5", "savedmodel"])
def test_h5_and_savedmodel_run_through_cli(form, tiny_project, tmp_path):
    from edgeq.core.tfcompat import keras

    m = keras().models.load_model(tiny_project / "tiny.keras", compile=False)
    path = tmp_path / ("tiny.h5" if form == "h5" else "tiny_savedmodel")
    m.save(path) if form == "h5" else m.save(path, save_format="tf")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_CONFIG.format(model=path.name, images=tiny_project / "images"))
    proc = run_edgeq("run", cfg, "--out", tmp_path / "run", "--no-benchmark")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    by = {a["name"]: a for a in rep["artifacts"]}
    assert by["int8_tflite_ptq"]["accuracy"]["top1"] is not None
    assert rep["checks"]["int8_tflite_ptq"]["fully_integer"]


def test_h5_with_lambda_is_refused_unless_trusted(tmp_path):
    from edgeq.core.tfcompat import keras

    k = keras()
    inp = k.Input((4, 4, 3))
    out = k.layers.Dense(2)(k.layers.Flatten()(k.layers.Lambda(lambda t: t * 2.0)(inp)))
    p = tmp_path / "lam.h5"
    k.Model(inp, out).save(p)
    with pytest.raises(ModelError, match=r"Lambda layers \['lambda"):
        load_keras_model(p)
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype(np.float32)
    trusted = load_keras_model(p, trust_lambda_layers=True)
    np.testing.assert_allclose(trusted(x).numpy(), k.Model(inp, out)(x).numpy(), rtol=1e-6)  # the Lambda really ran


def test_keras_safe_mode_blocks_lambda(tmp_path):
    from edgeq.core.tfcompat import keras

    k = keras()
    inp = k.Input((4, 4, 3))
    out = k.layers.Lambda(lambda t: t * 2.0)(inp)
    p = tmp_path / "lam.keras"
    k.Model(inp, out).save(p)
    with pytest.raises(ModelError, match="cannot load"):
        load_keras_model(p)


def test_param_floor_counts_kernels_and_output_channels():
    from edgeq.methods.tflite.convert import param_floor_bytes

    m = build_tiny_cnn(train=False)
    f = param_floor_bytes(m)
    # conv 3*3*3*8, depthwise 3*3*8*1, dense 8*3
    assert f["weights"] == 216 + 72 + 24 and f["biases"] == 8 + 8 + 3
    assert f["floor_bytes"] == f["weights"] + 4 * f["biases"]
