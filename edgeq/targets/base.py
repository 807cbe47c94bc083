"""The device-runner protocol. Every target implements check -> prepare -> benchmark (`Target`): the
in-process host (targets.host, which also times interleaved rounds) and the inventory devices
(`targets.device.DeviceTarget`: targets.cpu, targets.edgetpu, targets.jetson). Every latency figure anywhere in
edgeq is a `LatencyStats`."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


QUANTILES = (5, 25, 50, 75, 95)


def sig(x: float, digits: int = 5) -> float:
    """x to `digits` significant digits: microsecond models keep their resolution, second-long ones no noise."""
    return float(f"{x:.{digits}g}")


@dataclass
class LatencyStats:
    min: float
    median: float
    mean: float
    p90: float | None  # None only where a tool reports no such percentile (older trtexec)
    p99: float | None
    max: float
    runs: int
    warmup: int
    threads: int | None
    runtime: str  # e.g. "ai-edge-litert 2.3.0 (XNNPACK)"
    device: str  # identity of the machine that measured, e.g. "host: AMD EPYC 7B13"
    timestamp: str = ""
    # Filled when the figure comes from interleaved rounds (edgeq.targets.interleave): the median is then
    # the median of the round medians, and its interval is an order-statistic interval over rounds.
    rounds: int = 1
    median_ci95: list[float] | None = None
    ci_coverage: float | None = None
    round_medians: list[float] = field(default_factory=list)
    quantiles: dict = field(default_factory=dict)  # pooled p5/p25/p50/p75/p95 of every timed run
    noisy: bool = False
    noisy_reason: str | None = None
    ratio_to_fp32: dict | None = None  # {value, ci95, reference, rounds}

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], *, warmup: int, threads: int | None, runtime: str,
                     device: str) -> "LatencyStats":
        a = np.asarray(samples_ms, np.float64)
        if a.size == 0:
            raise ValueError("no latency samples")
        q = lambda p: sig(float(np.percentile(a, p)))  # noqa: E731
        return cls(min=sig(float(a.min())), median=q(50), mean=sig(float(a.mean())), p90=q(90),
                   p99=q(99), max=sig(float(a.max())), runs=int(a.size), warmup=warmup, threads=threads,
                   runtime=runtime, device=device, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   quantiles={f"p{p}": q(p) for p in QUANTILES})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Compatibility:
    ok: bool
    target: str
    artifact: str
    problems: list[str] = field(default_factory=list)  # each names the node/op and what is wrong
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Deployable:
    """What a target runs: a file (maybe compiled for it) plus how to run it."""

    artifact: str  # name of the source artifact
    path: Path  # local file (host) — remote targets copy it
    format: str  # of the file at `path` (edgeq.core.formats)
    runtime: str  # tflite | onnxruntime | edgetpu | tensorrt
    target: str
    details: dict = field(default_factory=dict)


@runtime_checkable
class Target(Protocol):
    """What every target implements: check -> prepare -> benchmark of one artifact."""

    name: str
    kind: str

    def check(self, artifact, run_dir: Path) -> Compatibility: ...

    def prepare(self, artifact, run_dir: Path) -> Deployable: ...

    def benchmark(self, deployable: Deployable, runs: int, warmup: int, threads: int | None) -> LatencyStats: ...
