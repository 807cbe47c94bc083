"""Models and data held in memory (a tf-keras model, a torch.nn.Module, an onnx.ModelProto; numpy arrays, a
tf.data.Dataset, a torch DataLoader) as the files a run reads: checked first (`check_model_kind`, `arrays`), then
written atomically (`save_model`, `save_data`). Used by `edgeq.quantize`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edgeq.core.artifacts import atomic_path
from edgeq.core.data import check_arrays
from edgeq.core.errors import ConfigError, DataError, ModelError


def check_model_kind(model: Any, shape: tuple | None) -> None:
    if isinstance(model, (str, Path)) or _is_onnx_proto(model) or _is_keras_model(model):
        return
    if _is_torch_module(model):
        if shape is None:
            raise ConfigError("a torch.nn.Module needs input_shape=(H, W, C): edgeq traces it at that size")
        return
    raise ModelError(f"edgeq.quantize: a {type(model).__module__}.{type(model).__name__} is not a model edgeq takes; "
                     "give a tf-keras model, a torch.nn.Module, an onnx.ModelProto or a model file path")


def _is_onnx_proto(obj: Any) -> bool:
    return type(obj).__name__ == "ModelProto" and type(obj).__module__.split(".")[0] == "onnx"


def _is_keras_model(obj: Any) -> bool:
    return hasattr(obj, "save") and hasattr(obj, "input_shape") and hasattr(obj, "output_shape")


def save_model(model: Any, inputs: Path, shape: tuple | None) -> Path:
    """The model as a file edgeq loads like any other (a path is used as it is)."""
    if isinstance(model, (str, Path)):
        return Path(model)
    if _is_onnx_proto(model):
        import onnx

        p = inputs / "model.onnx"
        with atomic_path(p) as tmp:
            onnx.save(model, str(tmp))
        return p
    if _is_torch_module(model):
        import torch

        h, w, c = shape
        model = model.eval()
        with torch.no_grad():
            traced = torch.jit.trace(model, torch.zeros(1, c, h, w))
        p = inputs / "model.pt"
        with atomic_path(p) as tmp:
            torch.jit.save(traced, str(tmp))
        return p
    p = inputs / "model.keras"
    with atomic_path(p) as tmp:
        model.save(tmp)
    return p


def _is_torch_module(obj: Any) -> bool:
    return any(c.__module__ == "torch.nn.modules.module" and c.__name__ == "Module" for c in type(obj).__mro__)


def arrays(data: Any, what: str) -> Path | tuple[np.ndarray, np.ndarray]:
    """A path as it is; in-memory data as checked (uint8 N×H×W×C images, int64 labels)."""
    if isinstance(data, (str, Path)):
        return Path(data)
    if isinstance(data, tuple) and len(data) == 2:
        images, labels = np.asarray(data[0]), np.asarray(data[1])
    else:
        images, labels = _from_batches(data, what)
    images = _as_uint8_nhwc(images, what)
    labels = labels.reshape(-1)
    check_arrays(images, labels, f"edgeq.quantize {what}")
    return images, labels.astype(np.int64)


def save_data(data: Path | tuple[np.ndarray, np.ndarray], path: Path) -> Path:
    if isinstance(data, Path):
        return data
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=data[0], labels=data[1])
    return path


def _from_batches(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) from a tf.data.Dataset or a torch DataLoader (batched or not)."""
    if hasattr(data, "as_numpy_iterator"):
        items = list(data.as_numpy_iterator())
    elif isinstance(data, Iterable):
        items = [tuple(_to_numpy(t) for t in item) for item in data]
    else:
        raise DataError(f"edgeq.quantize {what}: a {type(data).__name__} is not data edgeq takes; give a path, "
                        "(images, labels) arrays, a tf.data.Dataset or a torch DataLoader")
    if not items or not all(isinstance(i, tuple) and len(i) == 2 for i in items):
        raise DataError(f"edgeq.quantize {what}: the dataset must yield (images, labels) pairs")
    xs = [np.asarray(i[0]) for i in items]
    ys = [np.asarray(i[1]) for i in items]
    batched = ys[0].ndim == 1
    return (np.concatenate(xs) if batched else np.stack(xs)), (np.concatenate(ys) if batched else np.stack(ys))


def _to_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _as_uint8_nhwc(images: np.ndarray, what: str) -> np.ndarray:
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW (torch) -> NHWC
    if images.dtype.kind == "f":
        lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 1.0)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > 1:
            raise DataError(f"edgeq.quantize {what}: float images in [{lo:.3g}, {hi:.3g}]; edgeq takes raw pixels "
                            "(uint8, or float in [0, 1]) and normalises them itself with mean/std: give the data "
                            "before normalisation (e.g. torchvision's PILToTensor or ToTensor without Normalize)")
        images = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    return images
