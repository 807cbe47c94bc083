"""Loading the user's FP32 model safely, with errors a user can act on."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from edgeq.core.errors import ModelError, first_line
from edgeq.core.tfcompat import keras, quiet_stderr


def _h5_layer_classes(path: Path) -> list[tuple[str, str]]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            cfg = f.attrs.get("model_config")
    except OSError as e:
        raise ModelError(f"{path}: not a readable HDF5 model file ({e})") from None
    if cfg is None:
        raise ModelError(f"{path}: HDF5 file holds no model_config (weights-only file?); save the whole model")
    if isinstance(cfg, bytes):
        cfg = cfg.decode()
    layers = json.loads(cfg).get("config", {}).get("layers", [])
    return [(layer.get("class_name", "?"), layer.get("config", {}).get("name", "?")) for layer in layers]


def load_keras_model(path: Path, fmt: str | None = None, trust_lambda_layers: bool = False):
    """Load a Keras (.keras / .h5) or SavedModel FP32 model with tf-keras, in safe mode."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    fmt = fmt or {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}.get(path.suffix.lower(),
                                                                    "savedmodel" if path.is_dir() else None)
    if fmt == "keras" and not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a valid .keras file (not a zip archive); re-save it with model.save('x.keras')")
    if fmt == "h5":
        lambdas = [n for c, n in _h5_layer_classes(path) if c == "Lambda"]
        if lambdas and not trust_lambda_layers:
            raise ModelError(f"{path}: Lambda layers {lambdas} would execute Python code stored in the file; "
                             "re-save as .keras without Lambda layers, or set model.trust_lambda_layers: true "
                             "if you trust this file")
    if fmt == "savedmodel" and not (path / "saved_model.pb").exists():
        raise ModelError(f"{path}: not a SavedModel directory (no saved_model.pb)")
    if fmt not in ("keras", "h5", "savedmodel"):
        raise ModelError(f"{path}: unsupported model format {fmt!r}; use .keras, .h5 or a SavedModel directory")

    k = keras()
    try:
        with quiet_stderr():
            model = _load(k, path, fmt)
    except Exception as e:  # Keras raises many types for a bad file; the user needs one line
        msg = first_line(e, 300)
        raise ModelError(f"{path}: cannot load the {fmt} model ({msg})") from None
    if not isinstance(model, (k.Model,)):
        raise ModelError(f"{path}: loaded object is not a Keras model")
    return model


def _load(k, path: Path, fmt: str):
    if fmt == "keras":
        return k.models.load_model(path, compile=False, safe_mode=True)
    return k.models.load_model(path, compile=False)


def check_input_shape(model, expected_hwc: tuple[int, int, int], where: str) -> None:
    shape = model.input_shape
    if isinstance(shape, list):
        if len(shape) != 1:
            raise ModelError(f"{where}: model has {len(shape)} inputs; edgeq handles single-input image classifiers")
        shape = shape[0]
    got = tuple(shape[1:])
    if len(got) != 3 or any(g is not None and g != e for g, e in zip(got, expected_hwc)):
        raise ModelError(f"{where}: model input shape {tuple(shape)} does not match config model.input_shape "
                         f"{list(expected_hwc)} (H, W, C); fix the config or the model")
    if any(g is None for g in got):
        raise ModelError(f"{where}: model input {tuple(shape)} has undefined spatial dims; "
                         "rebuild it with a fixed input size for INT8 edge deployment")


def check_num_classes(model, num_classes: int, where: str) -> None:
    out = model.output_shape
    if isinstance(out, list):
        raise ModelError(f"{where}: model has {len(out)} outputs; edgeq handles single-output classifiers")
    if out[-1] != num_classes:
        raise ModelError(f"{where}: model outputs {out[-1]} classes but config model.num_classes is {num_classes}")
