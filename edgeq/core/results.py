"""What a run measured, as typed records in one file (results.json), each kind behind one key function.

Evaluation, latency, compatibility and per-layer records are written by the parts that measure them
(evaluate, targets) and read by the report; stages keep their own summaries as named sections. The file
is rewritten atomically after every record, so a killed run keeps what it measured; a corrupt file is
set aside (results.json.corrupt) and the run measures again instead of failing.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeq.core.artifacts import write_json_atomic


def eval_key(sha256: str, fingerprint: str) -> str:
    """An artifact's evaluation is keyed by its content and the evaluation images' content."""
    return f"{sha256}:{fingerprint}"


def latency_key(target: str, sha256: str) -> str:
    return f"{target}:{sha256}"


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


@dataclass
class LatencyRow:
    artifact: str
    sha256: str
    target: str  # "host" or a device name
    stats: dict | None = None  # a LatencyStats as a dict; None when not measured
    reason: str | None = None  # why not measured
    cpu: str | None = None
    set_key: str | None = None  # the interleaved set it was timed in (host reuse)
    details: dict | None = None  # device-side extras: remote path, outputs check


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
        r.latency = {k: _from_dict(LatencyRow, v) for k, v in (raw.get("latency") or {}).items()}
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
        self.latency[latency_key(row.target, row.sha256)] = row

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
