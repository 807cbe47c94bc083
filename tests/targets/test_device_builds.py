"""What device targets build before timing, against the tools' recorded output: `JetsonTarget.prepare` (trtexec
builds the engine on the device into `<engine>.part`, renamed when the build passed; `--buildOnly` where
TensorRT < 8.5 does not know `--skipInference`) and `EdgeTpuTarget.prepare` (edgetpu_compiler on this machine).

The targets and their DeviceSession are the real ones; only the far end is a stand-in: `RecordedDevice` plays
the device's shell (a set of remote paths, `test -s`, `mv`, and trtexec answering with recorded output), and
conftest.fake_edgetpu_compiler replays a recorded edgetpu_compiler log.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import fake_edgetpu_compiler

DATA = Path(__file__).resolve().parents[1] / "data"
TRTEXEC = "/usr/src/tensorrt/bin/trtexec"

# trtexec 8.6 (JetPack 6) building with --skipInference: trtexec.cpp's own lines, our paths and figures
TRT86_BUILD = """&&&& RUNNING TensorRT.trtexec [TensorRT v8602] # {argv}
[11/20/2026-14:02:11] [I] === Model Options ===
[11/20/2026-14:02:11] [I] Format: ONNX
[11/20/2026-14:02:12] [I] TensorRT version: 8.6.2
[11/20/2026-14:02:12] [I] Loading standard plugins
[11/20/2026-14:02:16] [I] Start parsing network model.
[11/20/2026-14:02:16] [I] Finished parsing network model. Parse time: 0.0412
[11/20/2026-14:02:16] [I] [TRT] Loaded 0 bytes of timing cache from edgeq-work/trt-timing.cache
[11/20/2026-14:03:02] [I] [TRT] Saved 12816 bytes of timing cache to edgeq-work/trt-timing.cache
[11/20/2026-14:03:02] [I] Engine built in 46.1374 sec.
[11/20/2026-14:03:02] [I] Created engine with size: 0.813 MiB
[11/20/2026-14:03:02] [I] Skipped inference phase since --skipInference is added.
&&&& PASSED TensorRT.trtexec [TensorRT v8602] # {argv}
"""
# trtexec 8.2 (JetPack 4.6) given --skipInference: the usage text, then one [E] line per unknown option, exit 1
TRT82_UNKNOWN_OPTION = """&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # {argv}
=== Build Options ===
  --maxBatch                  Set max batch size and build an implicit batch engine (default = 1)
  --int8                      Enable int8 precision, in addition to fp32 (default = disabled)
  --buildOnly                 Skip inference perf measurement (default = disabled)
[03/02/2023-09:40:01] [E] Unknown option: --skipInference 
&&&& FAILED TensorRT.trtexec [TensorRT v8201] # {argv}
"""
TRT82_BUILD_ONLY = """&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # {argv}
[03/02/2023-09:40:02] [I] === Model Options ===
[03/02/2023-09:40:02] [I] Format: ONNX
[03/02/2023-09:40:03] [I] TensorRT version: 8.2.1
[03/02/2023-09:40:05] [I] Start parsing network model
[03/02/2023-09:40:05] [I] Finished parsing network model. Parse time: 0.0390
[03/02/2023-09:41:01] [I] Engine built in 56.2113 sec.
&&&& PASSED TensorRT.trtexec [TensorRT v8201] # {argv}
"""
TRT_PARSE_FAILED = (DATA / "trtexec_build_failed.log").read_text()


class RecordedDevice:
    """The far end of a device transport (run / put / close): remote paths as a set, trtexec as recorded answers."""

    def __init__(self, workdir: str, trtexec_answers: list[tuple[int, str, float]] = (), files=()):
        self.workdir = workdir
        self.answers = list(trtexec_answers)  # (exit status, output with {argv}, seconds) per trtexec call
        self.files = set(files)
        self.calls: list[list[str]] = []

    def run(self, argv, timeout=None):
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        code, out, seconds = 0, "", 0.01
        if argv[0] == "sh":  # the trtexec search
            out = TRTEXEC + "\n"
        elif argv[0] == "test":
            code = 0 if argv[-1] in self.files else 1
        elif argv[0] == "mv":
            if argv[1] in self.files:
                self.files.remove(argv[1])
                self.files.add(argv[2])
            else:
                code, out = 1, f"mv: cannot stat '{argv[1]}': No such file or directory\n"
        elif argv[0] == TRTEXEC:
            code, out, seconds = self.answers.pop(0)
            out = out.format(argv=shlex.join(argv))
            if code == 0:
                self.files.add(next(a.split("=", 1)[1] for a in argv if a.startswith("--saveEngine=")))
        else:
            raise AssertionError(f"unexpected remote command {argv}")
        return SimpleNamespace(argv=argv, returncode=code, stdout=out, stderr="", seconds=seconds)

    def put(self, local: Path, sha256: str, subdir: str) -> str:
        remote = f"{self.workdir}/{subdir}/{sha256[:16]}-{Path(local).name}"
        self.files.add(remote)
        return remote

    def close(self) -> None:
        pass

    def trtexec_calls(self) -> list[list[str]]:
        return [c for c in self.calls if c[0] == TRTEXEC]


def _device(tmp_path: Path, **fields):
    from edgeq.targets.inventory import load_inventory

    d = {"name": "dev", "host": "dev.local", "user": "nvidia", "workdir": "edgeq-work", **fields}
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump({"devices": [d]}))
    return load_inventory(tmp_path / "devices.yaml").get("dev")


def _artifact(run_dir: Path, file: Path, name: str, fmt: str):
    from edgeq.core.artifacts import Artifact

    return Artifact.record(run_dir, file, name=name, format=fmt, precision="int8", method="ptq", stage="test")


# ------------------------------------------------------------------ Jetson: trtexec on the device
@pytest.fixture
def onnx_artifact(tmp_path):
    """A real (tiny) ONNX file recorded as an int8 artifact of a run directory."""
    import onnx
    from onnx import TensorProto, helper

    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "tiny",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(g), str(run / "artifacts" / "int8_trt.onnx"))
    return run, _artifact(run, run / "artifacts" / "int8_trt.onnx", "int8_onnx_trt", "onnx")


def _jetson(tmp_path, run_dir, far_end: RecordedDevice):
    from edgeq.targets.device import DeviceSession
    from edgeq.targets.jetson import JetsonTarget

    session = DeviceSession(_device(tmp_path, kind="jetson"), far_end, run_dir, lambda m: None)
    return JetsonTarget(session)


def _engine_of(uploaded: str) -> str:
    return uploaded.rsplit(".", 1)[0] + ".int8.fp16.engine"  # --int8 with the default --fp16 fallback


def _uploaded(far_end: RecordedDevice) -> str:
    return next(f for f in far_end.files if f.endswith("-int8_trt.onnx"))


def test_jetson_prepare_builds_the_engine_as_part_file_then_renames_it(tmp_path, onnx_artifact):
    run, art = onnx_artifact
    far = RecordedDevice("edgeq-work", [(0, TRT86_BUILD, 46.1)])
    dep = _jetson(tmp_path, run, far).prepare(art, run)
    engine = _engine_of(_uploaded(far))
    (build,) = far.trtexec_calls()
    assert f"--onnx={_uploaded(far)}" in build and f"--saveEngine={engine}.part" in build
    assert {"--skipInference", "--int8", "--fp16", "--timingCacheFile=edgeq-work/trt-timing.cache"} <= set(build)
    assert far.calls[-1] == ["mv", f"{engine}.part", engine]
    assert engine in far.files and f"{engine}.part" not in far.files
    assert dep.details["remote_path"] == engine
    assert dep.details["build"]["tensorrt_version"] == "8.6.2" and dep.details["build"]["reused"] is False


def test_jetson_prepare_falls_back_to_build_only_before_tensorrt_8_5(tmp_path, onnx_artifact):
    run, art = onnx_artifact
    far = RecordedDevice("edgeq-work", [(1, TRT82_UNKNOWN_OPTION, 0.4), (0, TRT82_BUILD_ONLY, 56.3)])
    dep = _jetson(tmp_path, run, far).prepare(art, run)
    first, second = far.trtexec_calls()
    assert "--skipInference" in first
    assert second == [a if a != "--skipInference" else "--buildOnly" for a in first]
    engine = _engine_of(_uploaded(far))
    assert engine in far.files and f"{engine}.part" not in far.files
    assert dep.details["build"]["tensorrt_version"] == "8.2.1"


def test_jetson_prepare_reuses_an_engine_already_on_the_device(tmp_path, onnx_artifact):
    run, art = onnx_artifact
    far = RecordedDevice("edgeq-work", [(0, TRT86_BUILD, 46.1)])
    first = _jetson(tmp_path, run, far).prepare(art, run)
    again = _jetson(tmp_path, run, far).prepare(art, run)  # a later run: new session, same device
    assert len(far.trtexec_calls()) == 1 and again.details["build"]["reused"] is True
    assert again.details["remote_path"] == first.details["remote_path"]


def test_jetson_failed_build_names_trtexecs_errors_and_leaves_no_engine(tmp_path, onnx_artifact):
    from edgeq.core.errors import TargetError

    run, art = onnx_artifact
    far = RecordedDevice("edgeq-work", [(1, TRT_PARSE_FAILED, 0.6)])
    with pytest.raises(TargetError, match="trtexec could not build an engine from int8_onnx_trt on dev "
                                          r"\(exit 1\): .*Parsing model failed"):
        _jetson(tmp_path, run, far).prepare(art, run)
    assert not any(c[0] == "mv" for c in far.calls)
    assert not any(f.endswith(".engine") for f in far.files)


def test_jetson_build_seconds_are_the_trtexec_build_time(tmp_path, onnx_artifact):
    run, art = onnx_artifact
    far = RecordedDevice("edgeq-work", [(0, TRT86_BUILD, 46.1)])
    dep = _jetson(tmp_path, run, far).prepare(art, run)
    assert dep.details["build"]["build_seconds"] == 46.1


# ------------------------------------------------------------------ Edge TPU: edgetpu_compiler on this machine
@pytest.fixture
def tflite_artifact(tmp_path, tiny_run):
    """The tiny run's real INT8 .tflite, recorded in a run directory of its own (prepare writes beside it)."""
    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    f = run / "artifacts" / "int8_ptq.tflite"
    f.write_bytes((tiny_run[0] / "artifacts" / "int8_ptq.tflite").read_bytes())
    return run, _artifact(run, f, "int8_tflite_ptq", "tflite")


def _edgetpu(tmp_path, run_dir, compiler: Path, far_end: RecordedDevice):
    from edgeq.targets.device import DeviceSession
    from edgeq.targets.edgetpu import EdgeTpuTarget

    device = _device(tmp_path, kind="edgetpu", edgetpu_compiler=str(compiler))
    return EdgeTpuTarget(DeviceSession(device, far_end, run_dir, lambda m: None))


def test_edgetpu_prepare_compiles_here_and_uploads_the_compiled_model(tmp_path, tflite_artifact):
    run, art = tflite_artifact
    compiler = fake_edgetpu_compiler(tmp_path / "bin", (DATA / "edgetpu_compiler_all_mapped.log").read_text())
    far = RecordedDevice("edgeq-work")
    dep = _edgetpu(tmp_path, run, compiler, far).prepare(art, run)
    assert dep.path.name == "int8_ptq_edgetpu.tflite" and dep.path.is_file()
    assert far.files == {dep.details["remote_path"]} and dep.details["remote_path"].endswith("-int8_ptq_edgetpu.tflite")
    parsed = dep.details["compiler"]
    assert parsed["success"] and parsed["compiler_version"] == "16.0.384591198" and parsed["ops_on_cpu"] == 0
    assert (dep.path.parent / "int8_ptq_edgetpu.compiler.log").read_text().startswith("Edge TPU Compiler version")


def test_edgetpu_prepare_reuses_the_compiled_model_of_the_same_input(tmp_path, tflite_artifact):
    run, art = tflite_artifact
    compiler = fake_edgetpu_compiler(tmp_path / "bin", (DATA / "edgetpu_compiler_partial.log").read_text())
    first = _edgetpu(tmp_path, run, compiler, RecordedDevice("edgeq-work")).prepare(art, run)
    compiler.unlink()  # a second compile would now fail
    again = _edgetpu(tmp_path, run, compiler, RecordedDevice("edgeq-work")).prepare(art, run)
    assert again.path == first.path and again.details["compiler"] == first.details["compiler"]
    assert again.details["compiler"]["not_mapped_ops"]  # the partial log's figures, read back


def test_edgetpu_compiler_failure_is_a_target_error_with_its_reason(tmp_path, tflite_artifact):
    from edgeq.core.errors import TargetError

    run, art = tflite_artifact
    compiler = fake_edgetpu_compiler(tmp_path / "bin", (DATA / "edgetpu_compiler_failed.log").read_text(),
                                     exit_code=1)
    far = RecordedDevice("edgeq-work")
    with pytest.raises(TargetError, match=r"failed on int8_ptq.tflite \(exit 1\): .*dynamic-sized tensors"):
        _edgetpu(tmp_path, run, compiler, far).prepare(art, run)
    assert far.files == set() and not list(run.rglob("*_edgetpu.tflite"))
