"""A device's CPU through the agent: Raspberry Pi (LiteRT with XNNPACK on ARM), or any Linux box.

Also used for a `host`-kind inventory device, where the agent runs on this machine as a subprocess.
"""
from __future__ import annotations

from pathlib import Path

from .base import Compatibility, Deployable, LatencyStats
from .device import DeviceSession

# artifact format -> agent runtimes that run it, and how to install one on the device
RUNTIMES = {
    "tflite": (("litert", "tflite-runtime", "tf"), "pip install ai-edge-litert (or tflite-runtime)"),
    "onnx": (("onnxruntime",), "pip install onnxruntime"),
}


class CpuTarget:

    def __init__(self, session: DeviceSession, onnx_optimization: str = "all"):
        self.session = session
        self.onnx_optimization = onnx_optimization  # the run's default; an artifact may name its own
        self.name = session.name
        self.kind = session.device.kind
        self.last_answer: dict = {}

    def check(self, artifact, run_dir: Path) -> Compatibility:
        if artifact.format not in RUNTIMES:
            return Compatibility(False, self.name, artifact.name,
                                 [f"format {artifact.format} does not run on a device CPU; its TFLite/ONNX export does"])
        skip = artifact.notes.get("host_benchmark_skip")  # made for another target, e.g. TensorRT
        if skip:
            return Compatibility(False, self.name, artifact.name, [f"a device CPU is not where it runs: {skip}"])
        wanted, install = RUNTIMES[artifact.format]
        have = self.session.runtimes()
        if not any(r in have for r in wanted):
            return Compatibility(False, self.name, artifact.name,
                                 [f"no {artifact.format} runtime on {self.name} ({', '.join(wanted)} missing); "
                                  f"{install} with {self.session.device.python}"], {"runtimes": have})
        return Compatibility(True, self.name, artifact.name, [], {"runtimes": have})

    def prepare(self, artifact, run_dir: Path) -> Deployable:
        local = artifact.abspath(run_dir)
        remote = self.session.upload(local, artifact.sha256)
        details = {"remote_path": remote}
        if artifact.format == "onnx":  # the same graph-optimisation level as the host figure of this artifact
            details["ort_optimization"] = artifact.notes.get("ort_graph_optimization") or self.onnx_optimization
        rt = "tflite" if artifact.format == "tflite" else "onnxruntime"
        return Deployable(artifact.name, local, rt, self.name, details)

    def benchmark(self, deployable: Deployable, runs: int, warmup: int, threads: int | None,
                  inputs_remote: str | None = None, return_outputs: bool = False) -> LatencyStats:
        opt = deployable.details.get("ort_optimization")
        stats, self.last_answer = self.session.benchmark(deployable.details["remote_path"], runs, warmup, threads,
                                                         inputs_remote, return_outputs=return_outputs,
                                                         extra=["--ort-optimization", opt] if opt else None)
        return stats
