"""A device's CPU through the agent: a Raspberry Pi (LiteRT with XNNPACK on ARM, ONNX Runtime), any Linux box
over SSH, or this machine (a `host`-kind inventory device: the agent as a local subprocess).

Which formats it takes and which agent runtimes run them are rows of edgeq.core.formats.
"""
from __future__ import annotations

from pathlib import Path

from edgeq.core.artifacts import graph_optimization_of, made_for_elsewhere
from edgeq.core.formats import FORMATS, format_refusal
from edgeq.targets.base import Compatibility, Deployable, LatencyStats
from edgeq.targets.device import DeviceSession


class AgentCpuTarget:
    """check here (format, then the device's runtimes), copy the artifact, time it with the agent there."""

    def __init__(self, session: DeviceSession, graph_optimization: str = "all"):
        self.session = session
        self.graph_optimization = graph_optimization  # the run's default; an artifact may name its own
        self.name = session.name
        self.kind = session.device.kind
        self.last_answer: dict = {}

    def check(self, artifact, run_dir: Path) -> Compatibility:
        refused = format_refusal(artifact.format, self.kind)
        if refused:
            return Compatibility(False, self.name, artifact.name, [refused])
        elsewhere = made_for_elsewhere(artifact, self.kind)
        if elsewhere:
            return Compatibility(False, self.name, artifact.name, [elsewhere])
        fmt = FORMATS[artifact.format]
        have = self.session.runtimes()
        if not any(r in have for r in fmt.agent_runtimes):
            return Compatibility(False, self.name, artifact.name,
                                 [f"no {fmt.name} runtime on {self.name} ({', '.join(fmt.agent_runtimes)} missing); "
                                  f"{fmt.install} with {self.session.device.python}"], {"runtimes": have})
        return Compatibility(True, self.name, artifact.name, [], {"runtimes": have})

    def prepare(self, artifact, run_dir: Path) -> Deployable:
        local = artifact.abspath(run_dir)
        details = {"remote_path": self.session.upload(local, artifact.sha256)}
        if artifact.format == "onnx":  # the same graph-optimisation level as the host figure of this artifact
            details["graph_optimization"] = graph_optimization_of(artifact, self.graph_optimization)
        return Deployable(artifact.name, local, artifact.format, FORMATS[artifact.format].runtime, self.name, details)

    def benchmark(self, deployable: Deployable, runs: int, warmup: int, threads: int | None,
                  inputs_remote: str | None = None, return_outputs: bool = False) -> LatencyStats:
        opt = deployable.details.get("graph_optimization")
        extra = ["--graph-optimization", opt] if opt else []
        kernels = self.session.device.tflite_kernels
        if deployable.format == "tflite" and kernels != "default":  # a device set to run without XNNPACK
            extra += ["--kernels", kernels]
        stats, self.last_answer = self.session.benchmark(deployable.details["remote_path"], runs, warmup, threads,
                                                         inputs_remote, return_outputs=return_outputs, extra=extra)
        return stats
