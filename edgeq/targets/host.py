"""The host target: this CPU, in-process, through the same Predictor as evaluation."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime import open_predictor
from ..sysinfo import host_identity
from .base import Compatibility, Deployable, LatencyStats

RUNNABLE = ("tflite", "onnx")


class HostTarget:
    name = "host"
    kind = "host"

    def __init__(self, sample: np.ndarray, onnx_optimization: str = "all"):
        self.sample = np.asarray(sample, np.float32)[:1]  # one preprocessed real image, NHWC
        self.onnx_optimization = onnx_optimization

    def check(self, artifact, run_dir: Path) -> Compatibility:
        ok = artifact.format in RUNNABLE
        problems = [] if ok else [f"format {artifact.format} is not a deployment format; benchmark its "
                                  "TFLite/ONNX export instead"]
        return Compatibility(ok, self.name, artifact.name, problems)

    def prepare(self, artifact, run_dir: Path) -> Deployable:
        rt = {"tflite": "tflite", "onnx": "onnxruntime"}[artifact.format]
        return Deployable(artifact.name, artifact.abspath(run_dir), rt, self.name)

    def benchmark(self, deployable: Deployable, runs: int, warmup: int, threads: int | None) -> LatencyStats:
        fmt = "tflite" if deployable.runtime == "tflite" else "onnx"
        kw = {"optimization": self.onnx_optimization} if fmt == "onnx" else {}
        pred = open_predictor(deployable.path, fmt, threads=threads, **kw)
        samples = pred.time_runs(self.sample, runs=runs, warmup=warmup)
        return LatencyStats.from_samples(samples, warmup=warmup, threads=threads, runtime=pred.runtime,
                                         device=f"host: {host_identity()}")
