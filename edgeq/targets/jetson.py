"""NVIDIA Jetson: the QDQ ONNX goes to the device, `trtexec` builds the engine there (--int8, optional
--fp16 fallback, a timing cache kept per device) and times it; trtexec's own figures are parsed.

The FP32 ONNX is built with --fp16: on a Jetson the FP16 engine is the baseline an INT8 engine must beat
(INT8 engines often run no faster than FP16 ones). Both are timed in the same interleaved rounds, and
`compare_engines` gives each INT8 engine's latency ratio to the FP16 engine with its interval."""
from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import numpy as np

from edgeq.core.errors import RuntimeUnavailable, TargetError
from edgeq.core.formats import FORMATS, format_refusal
from edgeq.targets.base import Compatibility, Deployable, LatencyStats
from edgeq.targets.ssh import remote_workdir, stderr_tail
from edgeq.targets.tensorrt_check import check_tensorrt_qdq
from edgeq.targets.trtexec_io import (MAX_BATCH, onnx_input, parse_exported_output, profile_flags, quoted_name,
                                      shape_spec, to_engine_layout, write_inputs)

TRTEXEC_FALLBACKS = ("/usr/src/tensorrt/bin/trtexec",)
TIMING_CACHE = "trt-timing.cache"  # one per device, in its workdir: reused by every engine build there

_STAT = r"([0-9.eE+-]+) ms"
_SUMMARY = re.compile(r"\]?\s*Latency: min = " + _STAT + r", max = " + _STAT + r", mean = " + _STAT +
                      r", median = " + _STAT + r"(.*)$", re.M)
_GPU = re.compile(r"GPU Compute Time: min = " + _STAT + r", max = " + _STAT + r", mean = " + _STAT +
                  r", median = " + _STAT + r"(.*)$", re.M)
_PCT = re.compile(r"percentile\((\d+(?:\.\d+)?)%\) = " + _STAT)
_THROUGHPUT = re.compile(r"Throughput: ([0-9.]+) qps")
_DEVICE = re.compile(r"Selected Device: (.+)$", re.M)


def _row(m) -> dict:
    d = {"min": float(m.group(1)), "max": float(m.group(2)), "mean": float(m.group(3)), "median": float(m.group(4))}
    for p, v in _PCT.findall(m.group(5)):
        d[f"p{p.rstrip('0').rstrip('.') if '.' in p else p}"] = float(v)
    return d


def _version(text: str) -> str | None:
    m = re.search(r"TensorRT version: (\S+)", text)
    if m:
        return m.group(1)
    m = re.search(r"\[TensorRT v(\d+)\]", text)  # 8602 -> 8.6.2 (TRT 8), 100200 -> 10.2.0 (TRT 10)
    if not m:
        return None
    v = m.group(1)
    major, rest = (v[:1], v[1:]) if len(v) == 4 else (v[:-4], v[-4:])
    return f"{int(major)}.{int(rest[:-2])}.{int(rest[-2:])}"


def parse_trtexec_log(text: str) -> dict:
    """trtexec's stdout -> its performance summary (host latency and GPU compute time, in ms)."""
    out: dict = {"passed": "&&&& PASSED" in text, "failed": "&&&& FAILED" in text}
    v = _version(text)
    if v:
        out["tensorrt_version"] = v
    m = _DEVICE.search(text)
    if m:
        out["gpu"] = m.group(1).strip()
    m = _THROUGHPUT.search(text)
    if m:
        out["throughput_qps"] = float(m.group(1))
    m = _SUMMARY.search(text)
    if m:
        out["latency"] = _row(m)
    m = _GPU.search(text)
    if m:
        out["gpu_compute"] = _row(m)
    errors = [ln.split("[E]", 1)[1].replace("[TRT]", "", 1).strip() for ln in text.splitlines() if "[E]" in ln]
    if errors:
        out["errors"] = errors
    return out


# precisions TensorRT builds an engine from: float ONNX (built as FP16) and int8 Q/DQ
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")


def engine_precision(flags: list[str]) -> str:
    """What an engine built with these trtexec flags computes in: int8 (with fp16 fallback) | fp16 | fp32."""
    if "--int8" in flags:
        return "int8+fp16" if "--fp16" in flags else "int8"
    return "fp16" if "--fp16" in flags else "fp32"


def stats_from_trtexec(parsed: dict, runs: int, warmup: int, device: str, engine: str | None = None) -> LatencyStats:
    """trtexec's summary as LatencyStats; `engine` (the engine's precision) is named in the runtime."""
    lat = parsed.get("latency")
    if not lat:
        raise TargetError(f"trtexec on {device} printed no performance summary"
                          + (f": {parsed['errors'][-1]}" if parsed.get("errors") else ""))
    return LatencyStats(min=lat["min"], median=lat["median"], mean=lat["mean"], p90=lat.get("p90"),
                        p99=lat.get("p99"), max=lat["max"], runs=runs, warmup=warmup, threads=None,
                        runtime=f"TensorRT {parsed.get('tensorrt_version', '?')} (trtexec"
                                + (f", {engine} engine)" if engine else ")"), device=device,
                        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


class JetsonTarget:
    """check the QDQ ONNX here, build the engine with trtexec on the device, time it with trtexec there."""

    def __init__(self, session, graph_optimization: str = "all"):
        self.session = session  # graph_optimization: the DeviceTarget constructor; TensorRT optimises itself
        self.name = session.name
        self.kind = "jetson"
        self._trtexec: str | None = None
        self.last_answer: dict = {}

    # -- check
    def check(self, artifact, run_dir: Path) -> Compatibility:
        refused = format_refusal(artifact.format, self.kind)
        if refused:
            return Compatibility(False, self.name, artifact.name, [refused])
        if artifact.precision not in TENSORRT_PRECISIONS:
            return Compatibility(False, self.name, artifact.name, [
                f"{artifact.precision} ONNX: TensorRT builds engines from float or int8 Q/DQ ONNX only (no "
                f"{artifact.precision} Q/DQ); deploy int8_onnx_trt, or the FP32 ONNX as an FP16 engine"])
        if artifact.precision != "int8":
            return Compatibility(True, self.name, artifact.name, [],
                                 {"note": f"{artifact.precision} ONNX: the engine is built with --fp16, the baseline "
                                          "an INT8 engine must beat"})
        try:
            c = check_tensorrt_qdq(artifact.abspath(run_dir), artifact.name)
        except ImportError:  # no onnx here: the static QDQ check is optional; trtexec itself is the final word
            return Compatibility(True, self.name, artifact.name, [],
                                 {"note": "no static TensorRT QDQ check available here; trtexec decides"})
        c.target = self.name
        return c

    # -- on the device
    def trtexec(self) -> str:
        if self._trtexec is None:
            cands = [self.session.device.trtexec, *TRTEXEC_FALLBACKS]
            script = "for t in " + " ".join(shlex.quote(c) for c in cands) + \
                     '; do command -v "$t" && exit 0; done; exit 127'
            r = self.session.transport.run(["sh", "-c", script], timeout=60)
            if r.returncode != 0 or not r.stdout.strip():
                raise RuntimeUnavailable(f"trtexec not found on {self.name} (looked for {', '.join(cands)}); "
                                         f"{FORMATS['engine'].install}")
            self._trtexec = r.stdout.strip().splitlines()[0]
        return self._trtexec

    def build_flags(self, artifact) -> list[str]:
        flags = ["--int8"] if artifact.precision == "int8" else []
        if self.session.device.fp16_fallback or artifact.precision != "int8":
            flags.append("--fp16")
        return flags

    def prepare(self, artifact, run_dir: Path) -> Deployable:
        trtexec = self.trtexec()
        onnx_remote = self.session.upload(artifact.abspath(run_dir), artifact.sha256)
        flags = self.build_flags(artifact)
        inp = onnx_input(artifact.abspath(run_dir))  # None where onnx is not installed here: timed, not scored
        profile = profile_flags(*inp) if inp else []  # a dynamic batch: 1..MAX_BATCH (scored in batches), timed at 1
        engine = (f"{onnx_remote.rsplit('.', 1)[0]}{''.join(f.replace('--', '.') for f in flags)}"
                  f"{f'.b{MAX_BATCH}' if profile else ''}.engine")
        cache = f"{remote_workdir(self.session.device)}/{TIMING_CACHE}"
        run = self.session.transport.run
        exists = run(["test", "-s", engine], timeout=60).returncode == 0
        build = {"engine": engine, "flags": flags, "precision": engine_precision(flags), "timing_cache": cache,
                 "reused": exists}
        if not exists:
            argv = [trtexec, f"--onnx={onnx_remote}", f"--saveEngine={engine}.part", f"--timingCacheFile={cache}",
                    "--skipInference", *flags, *profile]
            r = run(argv)
            out = r.stdout + r.stderr
            if r.returncode != 0 and "Unknown option" in out and "skipInference" in out:  # TensorRT < 8.5: --buildOnly
                r = run([a if a != "--skipInference" else "--buildOnly" for a in argv])
            parsed = parse_trtexec_log(r.stdout + r.stderr)
            build_seconds = r.seconds
            if r.returncode == 0 and not parsed["failed"]:  # a killed build leaves no engine that looks finished
                r = run(["mv", f"{engine}.part", engine], timeout=60)
            if r.returncode != 0 or parsed["failed"]:
                why = "; ".join(parsed.get("errors", [])[-6:]) or stderr_tail(r.stdout + r.stderr, 3)
                raise TargetError(f"trtexec could not build an engine from {artifact.name} on {self.name} "
                                  f"(exit {r.returncode}): {why}")
            build["build_seconds"] = round(build_seconds, 1)
            build["tensorrt_version"] = parsed.get("tensorrt_version")
        details = {"remote_path": engine, "build": build}
        if inp:
            details["input"] = {"name": inp[0], "dims": inp[1], "batch": MAX_BATCH if profile else inp[1][0] or 1,
                                "dynamic": bool(profile)}
        return Deployable(artifact.name, artifact.abspath(run_dir), artifact.format, FORMATS["engine"].runtime,
                          self.name, details)

    def outputs(self, deployable: Deployable, x: np.ndarray, local_dir: Path) -> np.ndarray:
        """The engine's outputs (one row per image) for preprocessed NHWC images `x`: trtexec runs each batch from a
        `--loadInputs` file and writes its outputs with `--exportOutput`, which are read back (trtexec_io)."""
        inp = deployable.details.get("input")
        if not inp:
            raise TargetError(f"the input of {deployable.artifact} could not be read on this host (pip install onnx): "
                              "trtexec needs its name and shape to load images")
        engine, run, outs = deployable.details["remote_path"], self.session.transport.run, []
        for s in range(0, len(x), inp["batch"]):
            xb = to_engine_layout(x[s:s + inp["batch"]], inp["dims"])
            k = len(xb)
            if not inp["dynamic"] and k < inp["batch"]:  # a fixed-batch engine: pad the last batch, drop the padding
                xb = np.concatenate([xb, np.zeros((inp["batch"] - k, *xb.shape[1:]), np.float32)])
            remote_in = self.session.upload(write_inputs(xb, local_dir / f"trtexec-{deployable.artifact}-{s}.bin"))
            remote_out = f"{remote_in}.{Path(engine).stem}.out.json"
            argv = [self.trtexec(), f"--loadEngine={engine}", f"--loadInputs={quoted_name(inp['name'])}:{remote_in}",
                    *([f"--shapes={shape_spec(inp['name'], xb.shape)}"] if inp["dynamic"] else []),
                    f"--exportOutput={remote_out}", "--iterations=1", "--warmUp=0", "--duration=0"]
            r = run(argv)
            parsed = parse_trtexec_log(r.stdout + r.stderr)
            if r.returncode != 0 or parsed["failed"]:
                raise TargetError(f"trtexec could not run {deployable.artifact} on images on {self.name} (exit "
                                  f"{r.returncode}): " + ("; ".join(parsed.get("errors", [])[-3:])
                                                          or stderr_tail(r.stdout + r.stderr, 3)))
            got = parse_exported_output(run(["cat", remote_out], timeout=120).stdout, f"{remote_out} on {self.name}")
            y = [a for a in got.values() if a.ndim and a.shape[0] == len(xb)]
            if len(y) != 1:
                raise TargetError(f"{remote_out} on {self.name}: expected one output with {len(xb)} rows, got "
                                  + ", ".join(f"{n} {list(a.shape)}" for n, a in got.items()))
            outs.append(y[0].reshape(len(xb), -1)[:k])
        return np.concatenate(outs)

    def benchmark(self, deployable: Deployable, runs: int, warmup: int, threads: int | None,
                  inputs_remote: str | None = None, return_outputs: bool = False) -> LatencyStats:
        # trtexec warms up by time, not count: --warmUp is milliseconds
        r = self.session.transport.run([self.trtexec(), f"--loadEngine={deployable.details['remote_path']}",
                                        f"--iterations={runs}", "--duration=0", f"--warmUp={max(200, warmup * 10)}",
                                        "--avgRuns=1"])
        parsed = parse_trtexec_log(r.stdout + r.stderr)
        if r.returncode != 0 or parsed["failed"]:
            raise TargetError(f"trtexec could not run {deployable.artifact} on {self.name} (exit {r.returncode}): "
                              + ("; ".join(parsed.get("errors", [])[-3:]) or stderr_tail(r.stdout + r.stderr, 3)))
        self.last_answer = {"trtexec": parsed}
        ident = f"{self.name}: {parsed.get('gpu', self.session.identity())}"
        return stats_from_trtexec(parsed, runs, warmup, ident, deployable.details["build"].get("precision"))

    def compare_engines(self, artifacts: dict, stats: dict[str, LatencyStats]) -> dict:
        """`int8_vs_fp16` for the device's summary: each INT8 engine's latency over the FP16 engine of its FP32
        ONNX, from the interleaved rounds' per-round ratio (`ratio_to_fp32`: on a Jetson the FP32 ONNX runs as
        the FP16 engine), with its interval and whether the INT8 engine is faster."""
        rows = []
        for name, s in stats.items():
            a, r = artifacts.get(name), s.ratio_to_fp32
            if a is None or a.precision != "int8" or not r or r.get("value") is None or r["reference"] not in stats:
                continue
            base = stats[r["reference"]]
            ci = r.get("ci95")
            faster = ci[1] < 1.0 if ci else False  # an INT8 engine is faster only when its whole interval says so
            rows.append({"int8": name, "fp16": r["reference"], "ratio": r["value"], "ci95": ci,
                         "rounds": r.get("rounds"), "int8_median_ms": s.median, "fp16_median_ms": base.median,
                         "int8_faster": faster,
                         "verdict": (f"{name}'s INT8 engine is {r['value']:.2f}x the FP16 engine of {r['reference']}"
                                     + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else " (one round: no interval)")
                                     + ("" if faster else ": not faster than the FP16 engine"))})
        return {"int8_vs_fp16": rows} if rows else {}
