"""On a Jetson the FP16 engine is the baseline an INT8 engine must beat: the FP32 ONNX is built with --fp16, timed
in the same interleaved rounds as the INT8 engine, the device's summary gives INT8/FP16 with its interval, and
what-to-ship keeps the FP16 engine when the INT8 one is not faster.

The JetsonTarget, DeviceSession, the fleet's interleaved timing and the report's verdict are the real ones; the far
end replays trtexec's recorded output (tests/data/trtexec_fp16_*.log, trtexec_int8_build_and_run.log) and runs the
real agent here for its `--info` answer.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_device_builds import DATA, TRT86_BUILD, TRTEXEC, RecordedDevice, _device

FP16_BUILD = (DATA / "trtexec_fp16_build.log").read_text()
RUNS = {".fp16.engine": (DATA / "trtexec_fp16_run.log").read_text(),  # median 1.20557 ms
        ".int8.fp16.engine": (DATA / "trtexec_int8_build_and_run.log").read_text()}  # median 1.22876 ms


class JetsonFarEnd(RecordedDevice):
    """RecordedDevice that answers a build by the precision asked, a --loadEngine run by the engine's recorded
    log, and the agent's --info by running the real agent here."""

    def run(self, argv, timeout=None):
        argv = [str(a) for a in argv]
        if argv[0] == TRTEXEC and any(a.startswith("--saveEngine=") for a in argv):
            self.answers = [(0, TRT86_BUILD if "--int8" in argv else FP16_BUILD, 31.0)]
        elif argv[0] == TRTEXEC:
            engine = next(a.split("=", 1)[1] for a in argv if a.startswith("--loadEngine="))
            self.calls.append(argv)
            log = next(text for suffix, text in sorted(RUNS.items(), key=lambda kv: -len(kv[0]))
                       if engine.endswith(suffix))
            return SimpleNamespace(argv=argv, returncode=0, stdout=log, stderr="", seconds=0.4)
        elif argv[1].endswith("agent.py"):
            from edgeq.targets.device import AGENT_SOURCE

            self.calls.append(argv)
            r = subprocess.run([sys.executable, str(AGENT_SOURCE), *argv[2:]], capture_output=True, text=True,
                               timeout=120)
            return SimpleNamespace(argv=argv, returncode=r.returncode, stdout=r.stdout, stderr=r.stderr, seconds=0.1)
        return super().run(argv, timeout)


@pytest.fixture
def jetson_run(tmp_path):
    """A run directory with a real FP32 ONNX and its int8 QDQ (TensorRT) sibling, and a Jetson session on them."""
    import onnx
    from onnx import TensorProto, helper

    from edgeq.core.artifacts import Artifact
    from edgeq.targets.device import DeviceSession
    from edgeq.targets.jetson import JetsonTarget

    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    arts = {}
    for name, file, precision in (("fp32_onnx", "fp32.onnx", "fp32"), ("int8_onnx_trt", "int8_trt.onnx", "int8")):
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
        onnx.save(helper.make_model(g), str(run / "artifacts" / file))
        arts[name] = Artifact.record(run, run / "artifacts" / file, name=name, format="onnx", precision=precision,
                                     method="none" if precision == "fp32" else "ptq", stage="test")
    far = JetsonFarEnd("edgeq-work")
    session = DeviceSession(_device(tmp_path, kind="jetson"), far, run, lambda m: None)
    session.hello()
    return run, arts, far, JetsonTarget(session)


def test_jetson_builds_the_fp32_onnx_as_an_fp16_engine(jetson_run):
    run, arts, far, target = jetson_run
    assert target.check(arts["fp32_onnx"], run).ok
    dep = target.prepare(arts["fp32_onnx"], run)
    (build,) = [c for c in far.calls if c[0] == TRTEXEC]
    assert "--fp16" in build and "--int8" not in build
    assert dep.details["remote_path"].endswith("-fp32.fp16.engine")
    assert dep.details["build"]["precision"] == "fp16" and dep.details["build"]["build_seconds"] == 31.0


def test_jetson_refuses_an_int16_qdq_model_naming_what_tensorrt_takes(jetson_run):
    run, arts, _, target = jetson_run
    int16 = SimpleNamespace(**{**vars(arts["int8_onnx_trt"]), "name": "int16_onnx", "precision": "int16"})
    c = target.check(int16, run)
    assert not c.ok and "int16 ONNX: TensorRT builds engines from float or int8 Q/DQ ONNX only" in c.problems[0]


def _timed(run, arts, target, rounds=6):
    """The fleet's interleaved timing of both engines on the recorded device, merged into a Results."""
    from edgeq.core.config import BenchmarkSpec
    from edgeq.core.results import Results
    from edgeq.targets.fleet import DeviceOutcome, Plan, _time_interleaved, merge_outcomes

    ctx = SimpleNamespace(cfg=SimpleNamespace(benchmark=BenchmarkSpec()), run_dir=run,
                          results=Results.load(run / "results.json"), log=lambda m: None)
    deps = {n: (a, target.prepare(a, run)) for n, a in arts.items()}
    plan = Plan(target.session.device, runs=300, warmup=30, threads=None, rounds=rounds)
    out = DeviceOutcome({"name": target.name, "kind": "jetson"})
    _time_interleaved(ctx, plan, target, deps, None, None, out, lambda a: a.name, lambda m: None)
    merge_outcomes(ctx, [out])
    return ctx, out


def test_jetson_times_int8_against_the_fp16_engine_interleaved_and_reports_the_ratio(jetson_run):
    run, arts, far, target = jetson_run
    ctx, out = _timed(run, arts, target)
    loads = [c for c in far.calls if c[0] == TRTEXEC and any(a.startswith("--loadEngine=") for a in c)]
    assert len(loads) == 12  # 6 rounds x 2 engines, alternating
    fp16, int8 = out.latency["fp32_onnx"].stats, out.latency["int8_onnx_trt"].stats
    assert fp16.runtime == "TensorRT 8.6.2 (trtexec, fp16 engine)"
    assert int8.runtime == "TensorRT 8.6.2 (trtexec, int8+fp16 engine)"
    (row,) = ctx.results.sections["devices"]["dev"]["int8_vs_fp16"]
    assert row["int8"] == "int8_onnx_trt" and row["fp16"] == "fp32_onnx" and row["rounds"] == 6
    assert row["ratio"] == pytest.approx(1.22876 / 1.20557, rel=1e-4) and row["ci95"] is not None
    assert row["int8_faster"] is False and "not faster than the FP16 engine" in row["verdict"]


def test_ship_on_a_jetson_keeps_the_fp16_engine_when_int8_is_not_faster(jetson_run):
    from edgeq.report.build import LATENCY_KEYS
    from edgeq.report.verdicts import ship

    run, arts, _, target = jetson_run
    ctx, out = _timed(run, arts, target)
    within = {"reference": "fp32_onnx", "drop_pt": 0.05, "drop_ci95_pt": [-0.1, 0.2],
              "mcnemar": {"b": 6, "c": 1, "p": 0.125}, "within_budget": True, "images_to_decide": None}
    entries = []
    for name, a in arts.items():
        (row,) = ctx.results.latency_of(name, a.sha256)
        e = {"name": name, "format": "onnx", "precision": a.precision, "method": a.method,
             "accuracy": {"top1": 0.90 if a.precision == "fp32" else 0.9005},  # INT8 a shade more accurate
             "latency_ms": {"dev": {k: getattr(row.stats, k) for k in LATENCY_KEYS}}}
        if a.precision == "int8":
            e["vs_fp32"] = within
        entries.append(e)
    s = ship(entries, "dev", 1.0)
    assert s["artifact"] == "fp32_onnx" and "fp16 engine" in s["why"]


def test_recorded_fp16_logs_parse_as_trtexec_8_6():
    from edgeq.targets.jetson import parse_trtexec_log

    build = parse_trtexec_log(FP16_BUILD.format(argv="trtexec --fp16"))
    assert build["passed"] and build["tensorrt_version"] == "8.6.2" and "latency" not in build
    run = parse_trtexec_log(RUNS[".fp16.engine"])
    assert run["passed"] and run["gpu"] == "Orin" and run["latency"]["median"] == 1.20557
    assert run["latency"]["p90"] == 1.23291 and run["gpu_compute"]["median"] == 1.16602
