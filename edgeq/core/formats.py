"""What edgeq supports, as data: artifact formats and device kinds.

Config and inventory validation, the runtime, the host benchmark and every device target read these two
tables; adding a format or a device kind is one row here plus its predictor or target class. Classes are
named "module:Class" and imported on first use, so reading a table imports nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import importlib
from typing import Callable

from edgeq.ondevice.agent import TFLITE_INTERPRETERS


def resolve(spec: str) -> Callable:
    """'package.module:callable' -> the callable, imported on first use (heavy imports stay lazy)."""
    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]  # file name endings, the one edgeq writes first; () for a directory format
    predictor: str | None  # "module:callable(path, threads=None, **kw) -> Predictor" on this machine
    runtime: str  # what runs it: tf-keras | tflite | onnxruntime | openvino | tensorrt
    install: str  # how to get that runtime
    host_benchmark: bool = False  # a deployment format: timed on this CPU beside the others
    kinds: tuple[str, ...] = ()  # device kinds (KINDS) that take an artifact of this format
    agent_runtimes: tuple[str, ...] = ()  # agent runtimes (agent.RUNTIMES names) that run it; any one will do
    model_input: bool = False  # a run may start from an FP32 model in this format (config `model.format`)
    imported_as: str | None = None  # the artifact format such an input model is recorded as (default: itself)
    directory: bool = False  # stored as a directory, not a file
    # other runtimes (another row's `runtime`, opened by that row's predictor) that also read this format's files; an
    # artifact is host-timed on them only where it asks to be (notes.also_timed_on), e.g. NNCF's QDQ ONNX on OpenVINO
    other_runtimes: tuple[str, ...] = ()


KERAS_INSTALL = "pip install tensorflow tf-keras"
# format name -> row. A format no kind takes is still known: its files are recognised and refused by name.
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("keras", (".keras",), "edgeq.measure.predictors:open_keras", "tf-keras", KERAS_INSTALL, model_input=True),
    Format("h5", (".h5", ".hdf5"), "edgeq.measure.predictors:open_keras", "tf-keras", KERAS_INSTALL, model_input=True,
           imported_as="keras"),  # HDF5 is loaded with its own safety check, then kept as a Keras artifact
    Format("savedmodel", (), "edgeq.measure.predictors:open_keras", "tf-keras", KERAS_INSTALL, model_input=True,
           directory=True),
    Format("tflite", (".tflite",), "edgeq.measure.predictors:TFLitePredictor", "tflite",
           "pip install ai-edge-litert (or tflite-runtime)", host_benchmark=True, kinds=("host", "rpi", "edgetpu"),
           agent_runtimes=TFLITE_INTERPRETERS),
    Format("onnx", (".onnx",), "edgeq.measure.predictors:OnnxPredictor", "onnxruntime", "pip install onnxruntime",
           host_benchmark=True, kinds=("host", "rpi", "jetson"), agent_runtimes=("onnxruntime",), model_input=True,
           other_runtimes=("openvino",)),  # OpenVINO reads an .onnx directly (core.read_model)
    # OpenVINO IR: a directory `<name>.openvino/` holding model.xml + model.bin (one artifact: one sha256, one atomic
    # rename); every OpenVINO figure names the inference precision it ran at (f32 unless the artifact says otherwise)
    Format("openvino", (".openvino",), "edgeq.measure.predictors:OpenVINOPredictor", "openvino",
           "pip install 'edgeq[openvino]' (or pip install openvino)", host_benchmark=True, kinds=("host", "rpi"),
           agent_runtimes=("openvino",), directory=True),
    # exported to ONNX by edgeq (loaders/pytorch.py); the run's FP32 artifact is that ONNX
    Format("pytorch", (".pt2", ".pt", ".pth", ".ts"), None, "torch", "pip install 'edgeq[torch]'", model_input=True,
           imported_as="onnx"),
    # built on a Jetson from the ONNX artifact and tied to its GPU and TensorRT version: no target takes one
    Format("engine", (".engine", ".plan"), None, "tensorrt",
           "trtexec ships with JetPack's TensorRT (sudo apt-get install tensorrt, or nvidia-jetpack); it is then "
           "/usr/src/tensorrt/bin/trtexec — set `trtexec:` in the inventory if it lives elsewhere"),
)}


@dataclass(frozen=True)
class Kind:
    name: str
    target: str  # "module:Class", constructed as Class(session, graph_optimization) (targets.device.DeviceTarget)
    what: str  # what such a device is, for messages
    needs_address: bool = True  # an inventory entry needs `host:`; without it a `host` device runs the agent here
    timed_by_agent: bool = True  # False: the device's own tool times it (trtexec), on its own inputs


# device kind (inventory `kind:`) -> row
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("host", "edgeq.targets.cpu:AgentCpuTarget", "this machine's or a Linux box's CPU through the agent",
         needs_address=False),
    Kind("rpi", "edgeq.targets.cpu:AgentCpuTarget", "a Raspberry Pi's CPU (LiteRT with XNNPACK, ONNX Runtime)"),
    Kind("edgetpu", "edgeq.targets.edgetpu:EdgeTpuTarget",
         "a Coral Edge TPU: edgetpu_compiler on this machine, the libedgetpu delegate on the device"),
    Kind("jetson", "edgeq.targets.jetson:JetsonTarget", "an NVIDIA Jetson: TensorRT engines built and timed by trtexec",
         timed_by_agent=False),
)}


def format_from_path(path: Path | str) -> str | None:
    """The format a file or directory is in, by its name (the longest matching suffix wins); None if unknown."""
    p = Path(path)
    name = p.name.lower()
    by_length = sorted(((s, f.name) for f in FORMATS.values() for s in f.suffixes), key=lambda sf: -len(sf[0]))
    for suffix, fmt in by_length:
        if name.endswith(suffix):
            return fmt
    if p.suffix == "" or p.is_dir():
        return next((f.name for f in FORMATS.values() if f.directory), None)
    return None


def model_input_format(path: Path | str) -> str:
    """The format of the FP32 model a run starts from, told by its name; a ValueError (as pydantic validators
    raise) says why it cannot be."""
    fmt = format_from_path(path)
    if fmt is None:
        raise ValueError(f"cannot tell the model format from '{Path(path).name}'; set model.format")
    if not FORMATS[fmt].model_input:
        starts = ", ".join(f.name for f in FORMATS.values() if f.model_input)
        raise ValueError(f"'{Path(path).name}' is a {fmt} model; a run starts from a {starts} model")
    return fmt


def imported_artifact(fmt: str, src: Path) -> tuple[str, str]:
    """(artifact format, file suffix) of an input model of format `fmt` copied from `src` into a run
    (a .h5 keeps its suffix and becomes a keras artifact; a directory format has no suffix)."""
    row = FORMATS[fmt]
    suffix = "" if row.directory else (src.suffix if src.suffix.lower() in row.suffixes else row.suffixes[0])
    return row.imported_as or row.name, suffix


def runs_from_onnx(fmt: str) -> bool:
    """A run whose input model has format `fmt` works on an FP32 ONNX (given, or exported from PyTorch)."""
    row = FORMATS[fmt]
    return (row.imported_as or row.name) == "onnx"


def host_benchmark_formats() -> list[str]:
    """The formats the in-process host benchmark times."""
    return [f.name for f in FORMATS.values() if f.host_benchmark]


def formats_for_kind(kind: str) -> list[str]:
    """The artifact formats a device of this kind takes."""
    return [f.name for f in FORMATS.values() if kind in f.kinds]


def format_refusal(fmt: str, kind: str) -> str | None:
    """Why a device of `kind` does not take an artifact of format `fmt` (one line naming both); None if it does."""
    row = FORMATS.get(fmt)
    if row is not None and kind in row.kinds:
        return None
    known = "" if row is not None else "unknown "
    takes = " or ".join(formats_for_kind(kind)) or "nothing"
    return f"{known}format {fmt} does not run on device kind {kind} ({KINDS[kind].what}): it takes {takes} only"


def predictor_factory(fmt: str) -> Callable | None:
    """The callable that opens an artifact of this format on this machine; None if none does."""
    row = FORMATS.get(fmt)
    return resolve(row.predictor) if row is not None and row.predictor else None


def predictor_on(fmt: str, runtime: str) -> Callable | None:
    """The callable that opens an artifact of format `fmt` on `runtime`: the format's own predictor for its own runtime,
    the predictor of the format `runtime` belongs to for one of its `other_runtimes`; None if `runtime` does not run it."""
    row = FORMATS.get(fmt)
    if row is None or runtime == row.runtime:
        return predictor_factory(fmt)
    owner = next((f for f in FORMATS.values() if f.runtime == runtime and f.predictor), None)
    return resolve(owner.predictor) if owner is not None and runtime in row.other_runtimes else None


def target_class(kind: str) -> type:
    """The target class that serves devices of this kind."""
    return resolve(KINDS[kind].target)
