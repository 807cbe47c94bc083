"""A PyTorch FP32 classifier as a run's input: loaded without executing pickled code, exported to ONNX by
edgeq with fixed, recorded settings, and checked against PyTorch on calibration images.

Three ways to give the model (config `model:`):
- a TorchScript file (`torch.jit.save`, .pt/.ts) - no Python class needed;
- a `torch.export` program (`torch.export.save`, .pt2);
- a state_dict (.pt/.pth) plus `factory: "package.module:function"` returning the nn.Module to load it into
  (the module is imported from the config's directory or sys.path: naming it is trusting it).

The export is `torch.onnx.export` (TorchScript tracer, `dynamo=False`) with the settings in
`export_settings`; an explicit call with those settings gives byte-identical ONNX (tested).
A PyTorch input runs the PTQ stages (TFLite via ONNX, ONNX Runtime) and QAT (NNCF, `edgeq.methods.torch`), which
loads the model here again: a state_dict + factory as its nn.Module, a .pt2 or TorchScript file rebuilt as a
trainable module by `edgeq.methods.torch.exported`.
"""
from __future__ import annotations

import importlib
import sys
import zipfile
from pathlib import Path

import numpy as np

from edgeq.core.errors import ModelError, RuntimeUnavailable, first_line

TORCH_PIN = "2.13.0"
INSTALL = f"pip install 'edgeq[torch]' (torch=={TORCH_PIN}, CPU build)"
SUFFIXES = (".pt2", ".pt", ".pth", ".ts")
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def torch_module():
    """torch, or a one-line error saying how to install it."""
    try:
        import torch
    except ImportError:
        raise RuntimeUnavailable(f"model.format pytorch needs PyTorch, which is not installed here; {INSTALL}") from None
    return torch


def export_settings(input_shape_hwc, opset: int) -> dict:
    """The exact torch.onnx.export keyword arguments edgeq uses (with a zero tensor of `input_shape` as args)."""
    h, w, c = input_shape_hwc
    return {"input_shape": [1, c, h, w], "opset_version": opset, "input_names": [INPUT_NAME],
            "output_names": [OUTPUT_NAME], "do_constant_folding": True, "dynamo": False}


def exported_module(module):
    """A torch.export program's module (a GraphModule), wrapped: the ONNX tracer calls .train(False), which that
    module refuses; the wrapper sets the mode on every submodule without calling theirs."""
    torch = torch_module()

    class ExportedProgram(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def train(self, mode: bool = True):
            for sub in self.modules():
                sub.training = mode
            return self

        def forward(self, x):
            return self.m(x)

    return ExportedProgram(module)


def exported_graph(module):
    """The GraphModule inside a module `exported_module` wrapped, else None."""
    torch = torch_module()
    inner = getattr(module, "m", None)
    return inner if type(module).__name__ == "ExportedProgram" and isinstance(inner, torch.fx.GraphModule) else None


def _factory(spec: str, base: Path | None):
    if ":" not in spec:
        raise ModelError(f"model.factory {spec!r}: give 'package.module:function' (a function returning the "
                         "nn.Module the state_dict loads into)")
    mod_name, fn_name = spec.split(":", 1)
    added = base is not None and str(base) not in sys.path
    if added:
        sys.path.insert(0, str(base))
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:
        raise ModelError(f"model.factory {spec!r}: cannot import {mod_name} ({first_line(e)}); put it next to the "
                         "config or on PYTHONPATH") from None
    finally:
        if added:
            sys.path.remove(str(base))
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ModelError(f"model.factory {spec!r}: {mod_name} has no function {fn_name}")
    return fn


def _described(value) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"a {type(value).__module__}.{type(value).__qualname__} ({shown})".replace("builtins.", "")


def load_torch_model(path: Path, factory: str | None = None, base: Path | None = None):
    """The nn.Module in eval mode. Pickled files are read with weights_only=True (no code runs from the file)."""
    torch = torch_module()
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    try:
        if factory:
            module = _factory(factory, base)()
            if not isinstance(module, torch.nn.Module):
                raise ModelError(f"model.factory {factory!r} returned {_described(module)}, not a torch.nn.Module; "
                                 "the factory must build and return the network the state_dict belongs to")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            if not isinstance(state, dict):
                raise ModelError(f"{path}: holds a {type(state).__name__}, not a state_dict; with model.factory "
                                 "give torch.save(model.state_dict(), path)")
            module.load_state_dict(state)
        elif path.suffix == ".pt2":
            module = exported_module(torch.export.load(str(path)).module())
        elif zipfile.is_zipfile(path) and any(n.split("/", 1)[-1].startswith("code/")
                                              for n in zipfile.ZipFile(path).namelist()):
            module = torch.jit.load(str(path), map_location="cpu")
        else:
            raise ModelError(f"{path}: not a TorchScript file or torch.export program; save the model with "
                             "torch.jit.save(torch.jit.trace(model, x), 'm.pt') or torch.export.save(ep, 'm.pt2'), "
                             "or give its state_dict with model.factory: 'package.module:function'")
    except ModelError:
        raise
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, KeyError (state_dict mismatch)...
        raise ModelError(f"{path}: cannot load the PyTorch model ({first_line(e, 300)})") from None
    module.eval()
    return module


def _run(module, x_nchw: np.ndarray) -> np.ndarray:
    torch = torch_module()
    with torch.no_grad():
        y = module(torch.from_numpy(np.ascontiguousarray(x_nchw, dtype=np.float32)))
    if isinstance(y, (tuple, list)):
        y = y[0]
    return y.detach().cpu().numpy()


def check_forward(module, input_shape_hwc, num_classes: int, where: Path) -> None:
    """One forward pass at model.input_shape: the output is (1, num_classes)."""
    h, w, c = input_shape_hwc
    try:
        y = _run(module, np.zeros((1, c, h, w), np.float32))
    except Exception as e:
        raise ModelError(f"{where}: the model fails on a 1x{c}x{h}x{w} (NCHW) input ({first_line(e, 300)}); "
                         "fix model.input_shape (H, W, C)") from None
    if y.ndim != 2 or y.shape[-1] != num_classes:
        raise ModelError(f"{where}: the model outputs shape {list(y.shape)} for one image; edgeq needs "
                         f"(1, {num_classes}) class scores (model.num_classes {num_classes})")


def export_onnx(module, out: Path, input_shape_hwc, opset: int) -> dict:
    """torch.onnx.export with `export_settings`; the notes record the settings and torch's version."""
    import warnings

    torch = torch_module()
    s = export_settings(input_shape_hwc, opset)
    x = torch.zeros(s.pop("input_shape"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), str(out), **s)
    except Exception as e:
        raise ModelError(f"torch.onnx.export failed ({first_line(e, 300)}); check that the model traces with a "
                         f"fixed {list(x.shape)} input at opset {opset} (model.opset)") from None
    return {"exporter": f"torch.onnx.export {torch.__version__}", "settings": export_settings(input_shape_hwc, opset)}


def max_abs_diff_vs_torch(module, onnx_path: Path, images_nhwc: np.ndarray) -> float:
    """Largest |ONNX - PyTorch| logit over the images, one at a time (the export is batch 1)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in images_nhwc.transpose(0, 3, 1, 2)[:, None]:
        got = sess.run(None, {INPUT_NAME: x.astype(np.float32)})[0]
        worst = max(worst, float(np.abs(got - _run(module, x)).max()))
    return worst
