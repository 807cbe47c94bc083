"""The device-runner protocol. Every target implements check -> prepare -> benchmark (`Target`): the
in-process host (targets.host, which also times interleaved rounds) and the inventory devices
(`targets.device.DeviceTarget`: targets.cpu, targets.edgetpu, targets.jetson). Every latency figure anywhere in
edgeq is a `LatencyStats`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable



from edgeq.core.results import QUANTILES, LatencyStats, sig  # noqa: F401  (the typed latency figure lives in core)


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
