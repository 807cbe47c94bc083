"""An FP32 ONNX model given as the run's input: validated as a single-input, single-output image classifier,
its input layout (NCHW or NHWC) matched to model.input_shape, dynamic H/W fixed for quantization."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeq.core.errors import DataError, ModelError, first_line


@dataclass
class OnnxInput:
    """The one input of an FP32 ONNX classifier: name, dims, layout, fixed batch size."""

    name: str
    dims: list  # int or None (dynamic)
    layout: str  # NCHW | NHWC
    batch: int | None  # fixed batch size, None when dynamic


# operator domains ONNX Runtime runs: the standard ones (checked op by op against ONNX's schemas) and its contrib ops
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
RUNTIME_DOMAINS = ("com.microsoft",)


def check_external_data(path: Path, shown_path: Path) -> None:
    """Every initializer stored outside the .onnx file names a file that exists inside the model's folder and is
    long enough; else a ModelError naming the tensor and the file (before onnx.load, which would say only
    "ValidationError")."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{shown_path}: not an ONNX model ({e.__class__.__name__}); give a .onnx file exported "
                         "with torch.onnx.export, tf2onnx or similar") from None
    folder = path.resolve().parent
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = (folder / loc).resolve()
        if not loc or Path(loc).is_absolute() or not target.is_relative_to(folder):
            raise ModelError(f"{shown_path}: initializer '{t.name}' keeps its data in {loc!r}, outside the model's "
                             f"folder {folder}; external data must sit beside the .onnx file (move it there and "
                             "re-save with a relative location)")
        if not target.is_file():
            raise ModelError(f"{shown_path}: initializer '{t.name}' keeps its data in {loc!r}, which is missing "
                             f"from {folder}; copy that file next to the .onnx file")
        need = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        if target.stat().st_size < need:
            raise ModelError(f"{shown_path}: initializer '{t.name}' needs bytes up to {need:,} of {loc!r}, which "
                             f"holds {target.stat().st_size:,}; the external data file is truncated or not this "
                             "model's: export the model again")


def check_operator_domains(model, shown_path: Path) -> None:
    """Every node is an operator ONNX or ONNX Runtime knows (or a function the model defines), so nothing downstream
    meets an op it cannot run; else a ModelError naming the node, the op and its domain."""
    import onnx

    local = {(f.domain, f.name) for f in model.functions}
    for node in model.graph.node:
        dom = node.domain or ""
        if (dom, node.op_type) in local or dom in RUNTIME_DOMAINS:
            continue
        if dom in STANDARD_DOMAINS and onnx.defs.has(node.op_type, dom):
            continue
        where = f"domain '{dom}'" if dom else "the standard domain"
        raise ModelError(f"{shown_path}: node '{node.name or node.output[0]}' is operator {node.op_type} of {where}, "
                         "which neither ONNX nor ONNX Runtime knows; export the model with standard ONNX operators "
                         "(or replace that op before quantizing)")


def read_onnx_input(path: Path, input_shape_hwc: tuple[int, int, int], where: Path | None = None) -> OnnxInput:
    """Validate an FP32 ONNX image classifier and find its input's layout against model.input_shape.

    `where` is the file named in error messages (the user's, when `path` is the run's copy of it)."""
    import onnx

    path, shown_path = Path(path), Path(where or path)
    check_external_data(path, shown_path)
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelError(f"{shown_path}: not an ONNX model ({e.__class__.__name__}); give a .onnx file exported "
                         "with torch.onnx.export, tf2onnx or similar") from None
    if not model.graph.node:
        raise ModelError(f"{shown_path}: not an ONNX model (no graph nodes); give a .onnx file exported with "
                         "torch.onnx.export, tf2onnx or similar")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ModelError(f"{shown_path}: invalid ONNX model ({first_line(e)})") from None
    check_operator_domains(model, shown_path)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{shown_path}: model has {len(inputs)} inputs; edgeq handles single-input image classifiers")
    i = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
    h, w, c = input_shape_hwc
    shown = [d if d is not None else "?" for d in dims]
    if len(dims) != 4:
        raise ModelError(f"{shown_path}: input '{i.name}' has shape {shown}; edgeq needs a 4-D image input")
    if dims[1] == c and dims[3] != c:
        layout, spatial = "NCHW", dims[2:]
    elif dims[3] == c and dims[1] != c:
        layout, spatial = "NHWC", dims[1:3]
    elif None in (dims[1], dims[3]):
        fixed = f"1,{c},{h},{w}"
        raise ModelError(
            f"{shown_path}: input '{i.name}' has dynamic dims {shown}, so its layout (NCHW or NHWC) cannot be "
            f"matched to model.input_shape {[h, w, c]}; fix the shape in the file, e.g. `python -m "
            f"onnxruntime.tools.make_dynamic_shape_fixed --input_name {i.name} --input_shape {fixed} "
            f"{shown_path.name} fixed.onnx` (or {h},{w},{c} last for NHWC), and point model.path at fixed.onnx")
    else:
        raise ModelError(f"{shown_path}: input '{i.name}' has shape {shown}, which has no {c}-channel axis matching "
                         f"model.input_shape {[h, w, c]} (H, W, C); fix model.input_shape")
    if any(s is not None and s != e for s, e in zip(spatial, (h, w))):
        raise DataError(f"{shown_path}: input '{i.name}' takes {spatial[0]}x{spatial[1]} images ({layout} {shown}) but "
                        f"calibration and evaluation images are resized to {h}x{w} (model.input_shape "
                        f"{[h, w, c]}); set model.input_shape to the model's size")
    return OnnxInput(i.name, dims, layout, dims[0])


def check_onnx_outputs(path: Path, num_classes: int) -> None:
    """One output whose last axis is num_classes (from the file's shapes, else shape inference)."""
    import onnx

    model = onnx.load(str(path))
    outputs = list(model.graph.output)
    if len(outputs) != 1:
        raise ModelError(f"{path}: model has {len(outputs)} outputs; edgeq handles single-output classifiers "
                         "(one output of num_classes scores)")

    def last_dim(vi):
        dims = vi.type.tensor_type.shape.dim
        return dims[-1].dim_value if len(dims) and dims[-1].HasField("dim_value") else None

    got = last_dim(outputs[0])
    if got is None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            got = last_dim(inferred.graph.output[0])
        except Exception:  # shape inference is best effort; evaluation still checks the real output
            got = None
    if got is not None and got != num_classes:
        raise ModelError(f"{path}: model outputs {got} classes (output '{outputs[0].name}') but config "
                         f"model.num_classes is {num_classes}; fix model.num_classes or the model")


def fix_spatial_dims(path: Path, info: OnnxInput, input_shape_hwc: tuple[int, int, int], out: Path) -> None:
    """Copy of the model with dynamic H/W of its input set from model.input_shape (batch left as is)."""
    import onnx

    model = onnx.load(str(path))
    h, w, c = input_shape_hwc
    want = [None, c, h, w] if info.layout == "NCHW" else [None, h, w, c]
    inp = next(i for i in model.graph.input if i.name == info.name)
    for d, v in zip(list(inp.type.tensor_type.shape.dim)[1:], want[1:]):
        if not d.HasField("dim_value"):
            d.dim_value = v
    del model.graph.value_info[:]
    onnx.save(model, str(out))
