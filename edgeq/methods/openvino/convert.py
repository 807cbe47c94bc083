"""FP32 ONNX -> OpenVINO IR, kept as one directory artifact (model.xml + model.bin).

A directory, not an .xml with its .bin beside it: the manifest's sha256 and size cover both files, the atomic
write renames the whole directory into place at once, and no second file can go stale next to the first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.core.errors import ModelError, RuntimeUnavailable, first_line
from edgeq.measure.predictors import OPENVINO_INSTALL as INSTALL
from edgeq.measure.predictors import import_openvino  # noqa: F401  (re-exported for the NNCF routes)

IR_XML, IR_BIN = "model.xml", "model.bin"


def import_nncf():
    try:
        import nncf
    except ImportError:
        raise RuntimeUnavailable(f"nncf is not installed: {INSTALL}") from None
    return nncf


def ir_xml(directory: Path) -> Path:
    """The model.xml of an IR directory artifact (or the .xml given)."""
    directory = Path(directory)
    return directory if directory.suffix == ".xml" else directory / IR_XML


def save_ir(model, directory: Path) -> dict:
    """Write an ov.Model as directory/model.xml + model.bin, weights kept as they are (no FP16 compression)."""
    ov = import_openvino()
    Path(directory).mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(Path(directory) / IR_XML), compress_to_fp16=False)
    return {"openvino": ov.get_version().split("-")[0], "files": [IR_XML, IR_BIN], "compress_to_fp16": False}


def onnx_to_ir(onnx_path: Path, directory: Path) -> dict:
    """ov.convert_model of an FP32 ONNX, saved as an FP32 IR directory; notes for the manifest."""
    ov = import_openvino()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # openvino raises its own OpConversionFailure / RuntimeError types
        raise ModelError(f"{onnx_path}: OpenVINO cannot convert it ({first_line(e)})") from None
    return {"converted_from": Path(onnx_path).name, "converter": "ov.convert_model", **save_ir(model, directory)}


CPU_CAPABILITY = {"bf16": "BF16", "f16": "FP16"}  # precision -> OpenVINO's CPU OPTIMIZATION_CAPABILITIES name


def cpu_runs(precision: str) -> str | None:
    """Why this CPU does not run `precision` natively (OpenVINO's own capability list, never a guess); None if it does."""
    ov = import_openvino()
    caps = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    if CPU_CAPABILITY[precision] in caps:
        return None
    return (f"this CPU has no {CPU_CAPABILITY[precision]} support (OpenVINO's CPU capabilities: {', '.join(caps)}); "
            f"OpenVINO would run a {precision} hint at f32")


def precision_variant(src_ir: Path, directory: Path, precision: str) -> dict:
    """The IR at `src_ir` saved again naming `precision` as its own inference precision (rt_info runtime_options):
    a separate artifact with its own hash, run at that precision on the host and by the agent; weights unchanged."""
    from edgeq.ondevice.agent import PRECISION_KEY

    model = read_ir(src_ir)
    model.set_rt_info(precision, PRECISION_KEY)
    return {"inference_precision": precision, "from": Path(src_ir).name, **save_ir(model, directory)}


def read_ir(directory: Path):
    """The ov.Model of an IR directory artifact."""
    ov = import_openvino()
    xml = ir_xml(directory)
    if not xml.is_file():
        raise ModelError(f"{directory}: no {IR_XML} in it; an OpenVINO artifact is a directory with model.xml and "
                         f"model.bin")
    return ov.Core().read_model(str(xml))


def max_rel_diff_vs_onnx(ir: Path, onnx_path: Path, x: np.ndarray, precision: str = "f32") -> float:
    """max |OpenVINO - ONNX Runtime| / max |ONNX Runtime| over the outputs of `x` (in the model's layout), OpenVINO
    compiled at `precision`: how far the IR is from the model it was converted from."""
    import onnxruntime as ort

    from edgeq.ondevice.agent import openvino_config

    ov = import_openvino()
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(ir_xml(ir))), "CPU", openvino_config(1, precision))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ref = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    got = np.concatenate([compiled(x[i:i + 1])[compiled.output(0)] for i in range(len(x))])
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
