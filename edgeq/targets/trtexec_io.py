"""Images into trtexec and its outputs back, in the file formats trtexec itself reads and writes, so a Jetson's
engine can be scored on evaluation images (accuracy_on_device) by the tool that times it.

- `--loadInputs=<input>:<file>` reads each input tensor from a raw binary file: the tensor's values in its
  engine type, C order, no header (trtexec's README: generate it with numpy, `x.astype(np.float32).tofile(f)`).
- `--exportOutput=<file>` writes the output tensors of the last inference as JSON (samples/common/
  sampleReporting.cpp, `exportJSONOutput`): a list of `{"name", "dimensions": "2x10", "values": [...]}`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeq.core.artifacts import atomic_path
from edgeq.core.errors import TargetError

MAX_BATCH = 32  # images per trtexec accuracy call (the engine's optimisation profile allows up to this batch)


def onnx_input(path: Path) -> tuple[str, list] | None:
    """(name, dims) of an ONNX model's one input, a dim None where symbolic; None when it cannot be read here."""
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def shape_spec(name: str, dims: list[int]) -> str:
    """trtexec's `name:AxBxC` shape spec; a name holding a colon is wrapped in single quotes, as trtexec asks."""
    return f"{quoted_name(name)}:{'x'.join(str(int(d)) for d in dims)}"


def quoted_name(name: str) -> str:
    return f"'{name}'" if ":" in name else name


def profile_flags(name: str, dims: list) -> list[str]:
    """Build flags giving a dynamic-batch input an optimisation profile of batch 1..MAX_BATCH, optimised (and timed)
    at batch 1; none for a static input (its engine takes its fixed batch only)."""
    if not dims or dims[0] is not None or any(d is None for d in dims[1:]):
        return []
    one, most = [1, *dims[1:]], [MAX_BATCH, *dims[1:]]
    return [f"--minShapes={shape_spec(name, one)}", f"--optShapes={shape_spec(name, one)}",
            f"--maxShapes={shape_spec(name, most)}"]


def to_engine_layout(x_nhwc: np.ndarray, dims: list) -> np.ndarray:
    """Preprocessed NHWC float32 images in the engine input's layout (NCHW where its dims say channels first)."""
    x = np.ascontiguousarray(x_nhwc, np.float32)
    if len(dims) == 4 and list(dims[1:]) == [x.shape[3], x.shape[1], x.shape[2]] and x.shape[3] != x.shape[2]:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if len(dims) == 4 and list(dims[1:]) != list(x.shape[1:]):
        raise TargetError(f"the engine input {dims} takes neither NHWC {list(x.shape[1:])} nor its NCHW transpose")
    return x


def write_inputs(x: np.ndarray, path: Path) -> Path:
    """The file `--loadInputs` reads: the tensor's float32 values, little-endian, C order, no header."""
    with atomic_path(path) as tmp:
        np.ascontiguousarray(x, "<f4").tofile(tmp)
    return path


def parse_exported_output(text: str, where: str = "trtexec --exportOutput") -> dict[str, np.ndarray]:
    """`--exportOutput` JSON -> output name -> float32 array of its `dimensions`; TargetError naming what is wrong."""
    try:
        entries = json.loads(text)
        out = {}
        for e in entries:
            dims = [int(d) for d in str(e["dimensions"]).split("x")] if str(e["dimensions"]) else []
            values = np.asarray(e["values"], np.float32)
            if values.size != int(np.prod(dims)):
                raise ValueError(f"{e['name']}: {values.size} values for dimensions {e['dimensions']}")
            out[str(e["name"])] = values.reshape(dims)
    except (ValueError, KeyError, TypeError) as e:
        raise TargetError(f"{where}: not trtexec's exported-output JSON ({e}); rerun with a trtexec that has "
                          "--exportOutput (TensorRT >= 7)") from None
    if not out:
        raise TargetError(f"{where}: no output tensors in the exported JSON")
    return out


def format_exported_output(outputs: dict[str, np.ndarray]) -> str:
    """`outputs` written as trtexec's exportJSONOutput writes them (for recorded samples and far-end stand-ins)."""
    lines, sep = ["["], "  "
    for name, a in outputs.items():
        values = ", ".join(f"{float(v):g}" for v in np.asarray(a, np.float32).ravel())
        lines += [f'{sep}{{ "name" : "{name}"', f'  , "dimensions" : "{"x".join(map(str, a.shape))}"',
                  f"  , \"values\" : [ {values} ]", "  }"]
        sep = ", "
    return "\n".join(lines + ["]"]) + "\n"
