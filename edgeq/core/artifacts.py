"""Artifacts and the run's manifest.json. Every write is atomic (temp file in the same directory,
then rename), so a killed run leaves either the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to `target` (same suffix); move it into place on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix + ".part" if not target.suffix
                                    else ".part" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers (Keras, TF) want to create the path themselves
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        if tmp.is_dir() and target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(Path(target)) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: Path, obj: Any) -> None:
    write_bytes_atomic(target, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def size_of(path: Path) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def stage_key(*parts: Any) -> str:
    """Hash of a stage's inputs and parameters: equal keys mean the stage's result can be reused."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Artifact:
    name: str
    path: str  # relative to the run directory
    format: str
    precision: str  # fp32 | int8 | fp16 | ...
    method: str  # none | ptq | qat | ...
    stage: str
    params: dict = field(default_factory=dict)
    parent: str | None = None
    sha256: str = ""
    size_bytes: int = 0
    key: str = ""
    created: str = ""
    notes: dict = field(default_factory=dict)

    @classmethod
    def record(cls, run_dir: Path, file: Path, **kw) -> "Artifact":
        file = Path(file)
        return cls(path=str(file.relative_to(run_dir)), sha256=sha256_of(file), size_bytes=size_of(file),
                   created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **kw)

    def abspath(self, run_dir: Path) -> Path:
        return Path(run_dir) / self.path

    def to_dict(self) -> dict:
        return asdict(self)


def made_for_elsewhere(artifact: Artifact, kind: str) -> str | None:
    """Why an artifact made for other device kinds only (notes.only_for) is not run on `kind`, else None."""
    only = artifact.notes.get("only_for")
    if not only or kind in only["kinds"]:
        return None
    return f"made for {', '.join(only['kinds'])} only: {only['why']}"


def graph_optimization_of(artifact: Artifact, default: str) -> str:
    """The ONNX Runtime graph-optimisation level an artifact runs at: its own if it names one, else `default`."""
    return artifact.notes.get("graph_optimization") or default


def _migrated(entry: dict) -> dict:
    """A manifest entry written by an older edgeq, in today's form (notes renamed since)."""
    notes = entry.get("notes") or {}
    if "host_benchmark_skip" in notes:  # before notes.only_for: the TensorRT artifact's "not on a CPU"
        notes["only_for"] = {"kinds": ["jetson"], "why": notes.pop("host_benchmark_skip")}
    if "ort_graph_optimization" in notes:
        notes["graph_optimization"] = notes.pop("ort_graph_optimization")
        notes["graph_optimization_why"] = notes.pop("ort_graph_optimization_why", "")
    return entry


class Manifest:
    """run_dir/manifest.json: the artifacts of one run, written after every stage."""

    def __init__(self, run_dir: Path, header: dict | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "manifest.json"
        self.header: dict = header or {}
        self.artifacts: dict[str, Artifact] = {}
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
                for a in old.get("artifacts", []):
                    self.artifacts[a["name"]] = Artifact(**_migrated(a))
            except (ValueError, TypeError, KeyError, AttributeError):  # not JSON, or not a manifest's shape
                self.artifacts = {}  # unreadable manifest: start over, nothing is reused

    def reusable(self, name: str, key: str) -> Artifact | None:
        """The finished artifact `name` if it was made from the same inputs and is intact on disk."""
        a = self.artifacts.get(name)
        if a is None or a.key != key:
            return None
        p = a.abspath(self.run_dir)
        if not p.exists() or sha256_of(p) != a.sha256:
            return None
        return a

    def add(self, artifact: Artifact) -> Artifact:
        self.artifacts[artifact.name] = artifact
        self.save()
        return artifact

    def save(self) -> None:
        write_json_atomic(self.path, {**self.header, "artifacts": [a.to_dict() for a in self.artifacts.values()]})


def fp32_baselines(artifacts, among=None, source=None) -> dict[str, str]:
    """artifact name -> the FP32 artifact it is judged against, for accuracy and latency alike (the one rule): the
    FP32 artifact of its own format, else the run's FP32 source model (`source`); an FP32 artifact is its own.
    Only artifacts named in `among` take part (e.g. those evaluated, or those timed on one target); None: all."""
    arts = [a for a in artifacts if among is None or a.name in among]
    by_fmt = {a.format: a.name for a in arts if a.precision == "fp32"}
    base = source.name if source is not None and source.name in {a.name for a in arts} else None
    refs = {a.name: by_fmt.get(a.format, base) for a in arts}
    return {name: ref for name, ref in refs.items() if ref is not None}
