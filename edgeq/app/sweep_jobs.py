"""The jobs of a sweep, whichever backend runs them (app.sweep: threads here; app.ray_backend: Ray tasks): one model's
pipeline (`run_model`, an `edgeq run` subprocess that resumes like a single run) and one (model, device) measurement
(`measure_job`)."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeq.core.config import TargetRef
from edgeq.core.formats import formats_for_kind
from edgeq.targets.fleet import inputs_file, plans_for, run_device


@dataclass
class ModelRun:
    config: Path
    name: str
    run_dir: Path
    status: str = "pending"
    error: str | None = None
    seconds: float | None = None


@dataclass
class DeviceJob:
    device: str
    model: str
    start: float | None = None
    end: float | None = None
    status: str = "pending"
    note: str | None = None
    outcome: object = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"device": self.device, "model": self.model, "start": self.start, "end": self.end,
                "status": self.status, "note": self.note}


def run_model(m: ModelRun, log) -> ModelRun:
    """`edgeq run` of one config in a subprocess (it resumes like a single run); a failure is recorded, not raised."""
    t = time.perf_counter()
    log(f"[sweep] run {m.name} -> {m.run_dir}")
    p = subprocess.run([sys.executable, "-m", "edgeq", "run", str(m.config), "--out", str(m.run_dir)],
                       capture_output=True, text=True)
    m.seconds = round(time.perf_counter() - t, 1)
    if p.returncode == 0:
        m.status = "ok"
        log(f"[sweep] {m.name}: done ({m.seconds} s)")
    else:
        tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()][-1:] or [f"exit {p.returncode}"]
        m.status, m.error = "failed", tail[0][:300]
        log(f"[sweep] {m.name}: FAILED: {m.error}")
    return m


def _already_measured(ctx, device: str, arts) -> bool:
    have = {(v.artifact, v.sha256) for v in ctx.results.latency.values() if v.target == device and v.stats}
    return bool(arts) and all((a.name, a.sha256) in have for a in arts)


def measure_job(ctx, device, job: DeviceJob, inventory: Path, accuracy: int | None, remeasure: bool, log,
                lock=None) -> DeviceJob:
    """One (device, model) job: time the run's artifacts that run on `device` (skipped or reused when there is
    nothing to do); the outcome is kept on the job for `finish_runs`. `lock` guards the run's context when several
    threads share it."""
    arts = [a for a in ctx.manifest.artifacts.values() if a.format in formats_for_kind(device.kind)]
    if not arts:
        job.status, job.note = "skipped", f"no artifact of {job.model} runs on a {device.kind} device"
        return job
    if not remeasure and _already_measured(ctx, device.name, arts):
        job.status, job.note = "reused", "figures for these artifacts are already in the run"
        return job
    ref = TargetRef(device=device.name, accuracy=accuracy)
    with lock or contextlib.nullcontext():  # plans and input files touch the run's context
        plan = plans_for(ctx, [ref], inventory)[0]
        inputs = inputs_file(ctx, max(1, plan.device.check_outputs))
    job.start = time.time()
    log(f"[sweep] {device.name}: {job.model} ({len(arts)} artifacts)")
    job.outcome = run_device(ctx, plan, arts, inputs)
    job.end = time.time()
    job.status = job.outcome.summary.get("status", "ok")
    job.note = job.outcome.summary.get("error")
    return job
