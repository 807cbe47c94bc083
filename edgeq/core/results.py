"""What a run measured, as typed records in one file (results.json), each kind behind one key function.

Evaluation, latency, compatibility and per-layer records are written by the parts that measure them
(evaluate, targets) and read by the report; stages keep their own summaries as named sections. The file
is rewritten atomically after every record, so a killed run keeps what it measured; a corrupt file is
set aside (results.json.corrupt) and the run measures again instead of failing.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeq.core.artifacts import write_json_atomic


def eval_key(sha256: str, fingerprint: str) -> str:
    """An artifact's evaluation is keyed by its content and the evaluation images' content."""
    return f"{sha256}:{fingerprint}"


def latency_key(target: str, sha256: str, runtime: str | None = None) -> str:
    """A latency figure is keyed by target and content, and by runtime where not the format's own (LatencyRow.runtime)."""
    return f"{target}:{sha256}" + (f":{runtime}" if runtime else "")


def per_layer_key(reference_sha: str, sha256: str, fingerprint: str, images: int) -> str:
    return f"{reference_sha}:{sha256}:{fingerprint}:{images}"


def _from_dict(cls, d: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Evaluation:
    artifact: str
    top1: float
    top5: float | None
    n: int
    dataset: str
    seconds: float
    predictions_file: str  # relative to the run directory: per-image argmax, for paired tests
    predictor: dict = field(default_factory=dict)
    agreement: dict | None = None  # {reference, top1_agreement}
    # evaluated on a seeded subset of the evaluation images (a slow precision): {"images": n, "of": N, "seed": s};
    # the predictions file then holds `indices` beside `predictions`. None: every evaluation image
    subset: dict | None = None


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
    noisy: bool = False  # its interval could change a decision edgeq makes (see targets.interleave)
    ci_width: float | None = None  # the 95 % interval's width as a fraction of the median, shown without alarm
    noisy_reason: str | None = None
    ratio_to_fp32: dict | None = None  # {value, ci95, reference, rounds}
    emulated: str | None = None  # the device's CPU is emulated (QEMU): why, as its agent detected it; no speed figure

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
class LatencyRow:
    artifact: str
    sha256: str
    target: str  # "host" or a device name
    stats: LatencyStats | None = None  # None when not measured (then `reason` says why)
    reason: str | None = None  # why not measured
    cpu: str | None = None
    set_key: str | None = None  # the interleaved set it was timed in (host reuse)
    details: dict | None = None  # device-side extras: remote path, outputs check
    runtime: str | None = None  # None: the format's own runtime; else another that reads it (formats.other_runtimes)


def _latency_row(d: dict) -> LatencyRow:
    row = _from_dict(LatencyRow, d)
    if isinstance(row.stats, dict):
        row.stats = _from_dict(LatencyStats, row.stats)
    return row


@dataclass
class PerLayer:
    artifact: str
    reference: str
    layers: list | None
    images: int | None = None
    ops_matched: int | None = None
    ops_total: int | None = None
    reason: str | None = None


@dataclass
class Results:
    path: Path
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    latency: dict[str, LatencyRow] = field(default_factory=dict)
    compatibility: dict[str, dict[str, dict]] = field(default_factory=dict)  # artifact -> target -> Compatibility
    per_layer: dict[str, PerLayer] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)  # stage summaries, devices, warnings
    conditions: dict[str, dict] = field(default_factory=dict)  # target -> benchmark conditions
    comparison_cells: dict[str, dict] = field(default_factory=dict)  # simulated low-bit cells
    wall_seconds: float | None = None
    wall_seconds_last_run: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)  # phase -> s, of the run that made wall_seconds
    stage_seconds_last_run: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "Results":
        path = Path(path)
        try:
            return cls._parse(path, json.loads(path.read_text()) if path.exists() else {})
        except (ValueError, UnicodeDecodeError, TypeError, AttributeError):  # not JSON, or not our shape
            path.replace(path.with_name(path.name + ".corrupt"))  # kept for inspection; the run re-measures
            return cls(path)

    @classmethod
    def _parse(cls, path: Path, raw: dict) -> "Results":
        r = cls(path)
        r.evaluations = {k: _from_dict(Evaluation, v) for k, v in (raw.get("evaluations") or {}).items()}
        r.latency = {k: _latency_row(v) for k, v in (raw.get("latency") or {}).items()}
        r.per_layer = {k: _from_dict(PerLayer, v) for k, v in (raw.get("per_layer") or {}).items()}
        for name in ("compatibility", "sections", "conditions", "comparison_cells", "stage_seconds",
                     "stage_seconds_last_run"):
            setattr(r, name, raw.get(name) or {})
        r.wall_seconds, r.wall_seconds_last_run = raw.get("wall_seconds"), raw.get("wall_seconds_last_run")
        return r

    def save(self) -> None:
        d = asdict(self)
        d.pop("path")
        write_json_atomic(self.path, d)

    # -- evaluations
    def evaluation(self, sha256: str, fingerprint: str) -> Evaluation | None:
        return self.evaluations.get(eval_key(sha256, fingerprint))

    def put_evaluation(self, sha256: str, fingerprint: str, e: Evaluation) -> None:
        self.evaluations[eval_key(sha256, fingerprint)] = e
        self.save()

    # -- latency
    def latency_of(self, artifact: str, sha256: str) -> list[LatencyRow]:
        return [r for r in self.latency.values() if r.artifact == artifact and r.sha256 == sha256]

    def put_latency(self, row: LatencyRow) -> None:
        self.latency[latency_key(row.target, row.sha256, row.runtime)] = row

    def drop_latency(self, target: str) -> None:
        """Forget every figure of one target (its new set replaces them all)."""
        self.latency = {k: r for k, r in self.latency.items() if r.target != target}

    def measured_latency_keys(self) -> list[str]:
        return sorted(k for k, r in self.latency.items() if r.stats)

    # -- compatibility
    def put_compatibility(self, artifact: str, target: str, compatibility: dict) -> None:
        self.compatibility.setdefault(artifact, {})[target] = compatibility

    # -- sections
    def set_section(self, name: str, value: Any) -> None:
        self.sections[name] = value
        self.save()
