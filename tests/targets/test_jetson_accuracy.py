"""On-device accuracy on a Jetson through trtexec itself: evaluation images go in as `--loadInputs` files (raw
float32, the engine's layout), the engine's outputs come back as `--exportOutput` JSON, and accuracy_on_device
pairs them with this host's run of the same ONNX.

The JetsonTarget, DeviceSession, trtexec_io and device_accuracy are the real ones. There is no Jetson here: the
far end answers trtexec with its recorded logs, and for `--exportOutput` writes, in trtexec's exportJSONOutput
format (the recorded sample tests/data/trtexec_export_output.json is parsed below), the outputs ONNX Runtime gives
for the uploaded input file, standing in for the GPU.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from test_device_builds import DATA, TRTEXEC, _device
from test_jetson_fp16 import RUNS, JetsonFarEnd

from edgeq.targets.trtexec_io import MAX_BATCH, format_exported_output, parse_exported_output

SHAPE = (3, 4, 4)  # C, H, W of the test model's NCHW input


class ScoringFarEnd(JetsonFarEnd):
    """JetsonFarEnd that keeps uploaded files readable, answers `cat`, and answers a trtexec `--exportOutput` run
    with the outputs of ONNX Runtime on the `--loadInputs` file (optionally changing one image's answer)."""

    def __init__(self, workdir, onnx_path: Path, flip: int | None = None):
        super().__init__(workdir)
        self.local: dict[str, Path] = {}
        self.written: dict[str, str] = {}
        self.onnx_path, self.flip, self.seen = onnx_path, flip, 0

    def put(self, local, sha256, subdir):
        remote = super().put(local, sha256, subdir)
        self.local[remote] = Path(local)
        return remote

    def run(self, argv, timeout=None):
        argv = [str(a) for a in argv]
        if argv[0] == "cat":
            self.calls.append(argv)
            return SimpleNamespace(argv=argv, returncode=0, stdout=self.written[argv[1]], stderr="", seconds=0.01)
        if argv[0] == TRTEXEC and any(a.startswith("--exportOutput=") for a in argv):
            self.calls.append(argv)
            opt = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
            name, remote_in = opt["loadInputs"].split(":", 1)
            dims = [int(d) for d in opt["shapes"].split(":", 1)[1].split("x")]
            x = np.fromfile(self.local[remote_in], "<f4").reshape(dims)  # what trtexec reads
            y = _ort(self.onnx_path, name, x)
            if self.flip is not None and self.seen <= self.flip < self.seen + len(y):
                y[self.flip - self.seen] = -y[self.flip - self.seen]  # this image answered differently
            self.seen += len(y)
            self.written[opt["exportOutput"]] = format_exported_output({"logits": y})
            return SimpleNamespace(argv=argv, returncode=0, stdout=RUNS[".fp16.engine"], stderr="", seconds=0.5)
        return super().run(argv, timeout)


def _ort(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]


def _dynamic_batch_onnx(path: Path) -> Path:
    """A real classifier ONNX with a dynamic batch: NCHW input -> Flatten -> MatMul -> 5 logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(int(np.prod(SHAPE)), 5)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Flatten", ["input"], ["flat"]),
                           helper.make_node("MatMul", ["flat", "w"], ["logits"])], "cls",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def scored(tmp_path):
    from edgeq.core.artifacts import Artifact
    from edgeq.targets.device import DeviceSession
    from edgeq.targets.jetson import JetsonTarget

    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    path = _dynamic_batch_onnx(run / "artifacts" / "fp32.onnx")
    a = Artifact.record(run, path, name="fp32_onnx", format="onnx", precision="fp32", method="none", stage="test")
    far = ScoringFarEnd("edgeq-work", path, flip=37)
    session = DeviceSession(_device(tmp_path, kind="jetson"), far, run, lambda m: None)
    session.hello()
    target = JetsonTarget(session)
    return run, a, far, target, target.prepare(a, run)


def test_the_recorded_export_output_parses_to_its_dimensions():
    text = (DATA / "trtexec_export_output.json").read_text()
    out = parse_exported_output(text)
    assert list(out) == ["logits"] and out["logits"].shape == (2, 10)
    assert out["logits"][0, 9] == np.float32(7.64062) and int(out["logits"][1].argmax()) == 0
    assert format_exported_output(out) == text  # the writer the far end uses writes exactly trtexec's layout


def test_a_malformed_export_says_what_it_is_not():
    from edgeq.core.errors import TargetError

    with pytest.raises(TargetError, match="not trtexec's exported-output JSON"):
        parse_exported_output('[{"name": "y", "dimensions": "2x3", "values": [1, 2]}]', "out.json on dev")


def test_a_dynamic_batch_engine_is_built_with_a_profile_and_timed_at_batch_one(scored):
    _, _, far, _, dep = scored
    (build,) = [c for c in far.calls if c[0] == TRTEXEC and any(a.startswith("--saveEngine=") for a in c)]
    assert "--minShapes=input:1x3x4x4" in build and "--optShapes=input:1x3x4x4" in build
    assert f"--maxShapes=input:{MAX_BATCH}x3x4x4" in build
    assert dep.details["input"] == {"name": "input", "dims": [None, *SHAPE], "batch": MAX_BATCH, "dynamic": True}


def test_jetson_outputs_come_from_trtexec_in_batches_through_its_own_file_formats(scored):
    run, _, far, target, dep = scored
    x = np.random.default_rng(1).normal(size=(40, 4, 4, 3)).astype(np.float32)  # NHWC, as edgeq preprocesses
    y = target.outputs(dep, x, run)
    runs = [c for c in far.calls if any(a.startswith("--exportOutput=") for a in c)]
    assert [next(a for a in c if a.startswith("--shapes=")) for c in runs] == \
        [f"--shapes=input:{MAX_BATCH}x3x4x4", f"--shapes=input:{40 - MAX_BATCH}x3x4x4"]
    assert all(f"--loadEngine={dep.details['remote_path']}" in c for c in runs)
    expected = _ort(run / "artifacts" / "fp32.onnx", "input", x.transpose(0, 3, 1, 2))
    expected[37] = -expected[37]
    # through trtexec's %g text: 6 significant digits
    assert y.shape == (40, 5) and np.allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_accuracy_on_a_jetson_pairs_the_exported_outputs_with_the_host(scored):
    from edgeq.core.data import LabelledImages, Preprocess
    from edgeq.targets import device_accuracy

    run, a, far, target, dep = scored
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(60, 4, 4, 3), dtype=np.uint8)
    pre = Preprocess((4, 4))
    host = _ort(run / "artifacts" / "fp32.onnx", "input", pre(images).transpose(0, 3, 1, 2))
    labels = host.argmax(1)  # the host is right on every image; the device differs on image 37
    ctx = SimpleNamespace(run_dir=run, pre=pre, splits=SimpleNamespace(eval=LabelledImages(images, labels, "t")),
                          cfg=SimpleNamespace(stages=SimpleNamespace(onnx_ptq=SimpleNamespace(
                              graph_optimization="all"))))
    (run / "devices").mkdir()
    out = device_accuracy.measure(ctx, target.session, target, {"fp32_onnx": (a, dep)}, 60, None, lambda m: None)
    e = out["fp32_onnx"]
    assert e["n"] == 60 and e["host_top1"] == 1.0
    flipped = int((-host[37]).argmax() != labels[37])
    assert e["top1"] == (60 - flipped) / 60 and e["paired_vs_host"]["b"] == flipped
    assert len([c for c in far.calls if any(x.startswith("--exportOutput=") for x in c)]) == 2  # batches 32 + 28
