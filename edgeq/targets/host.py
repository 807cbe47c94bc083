"""The host target: this CPU, in-process, through the same Predictor as evaluation.

`benchmark_host` times every runnable artifact of a run side by side (interleaved rounds, see
edgeq.targets.interleave) and records the conditions it ran under.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from edgeq.core.artifacts import fp32_baselines, graph_optimization_of, made_for_elsewhere
from edgeq.core.errors import EdgeqError, first_line
from edgeq.core.formats import FORMATS, host_benchmark_formats
from edgeq.core.results import LatencyRow, latency_key
from edgeq.measure.predictors import open_predictor
from edgeq.core.sysinfo import busy_processes, cpu_info, host_identity, loadavg
from edgeq.targets.base import Compatibility, Deployable, LatencyStats
from edgeq.targets.interleave import add_ratios, capped_runs, interleave, summarise


class HostTarget:
    """base.Target on this CPU, in-process; `time_round` gives interleaved rounds their raw samples too."""

    name = "host"
    kind = "host"

    def __init__(self, sample: np.ndarray, graph_optimization: str = "all"):
        self.sample = np.asarray(sample, np.float32)[:1]  # one preprocessed real image, NHWC
        self.graph_optimization = graph_optimization
        self._predictors: dict[str, object] = {}

    def check(self, artifact, run_dir: Path) -> Compatibility:
        problems = []
        fmt = FORMATS.get(artifact.format)
        if fmt is None or not fmt.host_benchmark:
            timed = " or ".join(host_benchmark_formats())
            problems.append(f"format {artifact.format} is not a deployment format; the host times {timed} "
                            "artifacts: benchmark its export instead")
        elif elsewhere := made_for_elsewhere(artifact, "host"):  # e.g. TensorRT-only: its latency is the device's
            problems.append(elsewhere)
        return Compatibility(not problems, self.name, artifact.name, problems)

    def prepare(self, artifact, run_dir: Path, runtime: str | None = None) -> Deployable:
        """The artifact on its format's own runtime, or on `runtime` (one of its format's other_runtimes), then
        named `unit_name(artifact, runtime)` so both are timed side by side."""
        own = FORMATS[artifact.format].runtime
        other = runtime if runtime not in (None, own) else None
        return Deployable(unit_name(artifact.name, other), artifact.abspath(run_dir), artifact.format, other or own,
                          self.name, {"graph_optimization": graph_optimization_of(artifact, self.graph_optimization)})

    def _predictor(self, d: Deployable, threads: int | None):
        if d.artifact not in self._predictors:  # opened once, kept across rounds
            own = FORMATS[d.format].runtime == d.runtime
            opt = d.details.get("graph_optimization", self.graph_optimization)
            kw = {"graph_optimization": opt} if d.format == "onnx" and own else {}
            self._predictors[d.artifact] = open_predictor(d.path, d.format, threads=threads,
                                                          runtime=None if own else d.runtime, **kw)
        return self._predictors[d.artifact]

    def time_round(self, d: Deployable, runs: int, warmup: int, threads: int | None
                   ) -> tuple[LatencyStats, list[float]]:
        """One round: `warmup` untimed then `runs` timed single-image inferences."""
        pred = self._predictor(d, threads)
        samples = pred.time_runs(self.sample, runs=runs, warmup=warmup)
        return LatencyStats.from_samples(samples, warmup=warmup, threads=threads, runtime=pred.runtime,
                                         device=f"host: {host_identity()}"), samples

    def benchmark(self, deployable: Deployable, runs: int, warmup: int, threads: int | None) -> LatencyStats:
        return self.time_round(deployable, runs, warmup, threads)[0]


def unit_name(artifact: str, runtime: str | None) -> str:
    """What one timed unit of an interleaved set is called: the artifact, or the artifact on another runtime."""
    return f"{artifact}@{runtime}" if runtime else artifact


def also_timed_on(artifact) -> list[str]:
    """The runtimes besides its format's own an artifact asks to be host-timed on (notes.also_timed_on), e.g. NNCF's
    QDQ ONNX on OpenVINO as well as on ONNX Runtime; only runtimes its format lists in Format.other_runtimes."""
    row = FORMATS[artifact.format]
    return [r for r in artifact.notes.get("also_timed_on") or () if r in row.other_runtimes]


def _units(runnable, host: HostTarget, run_dir: Path) -> dict[str, tuple]:
    """unit name -> (artifact, other runtime or None, Deployable): every artifact, then each on its other runtimes."""
    units = {}
    for a in runnable:
        for rt in (None, *also_timed_on(a)):
            d = host.prepare(a, run_dir, rt)
            units[d.artifact] = (a, rt, d)
    return units


def _references(units: dict, runnable) -> dict[str, str]:
    """unit -> the unit its latency ratio is taken against: the FP32 of its own format (fp32_baselines) for an artifact
    on its own runtime; on another runtime, the FP32 artifact that runtime runs as its own (e.g. fp32_openvino), else
    the artifact's own FP32 reference."""
    refs = fp32_baselines(runnable)
    fp32_on = {FORMATS[a.format].runtime: a.name for a in runnable if a.precision == "fp32"}
    out = {}
    for name, (a, rt, _) in units.items():
        ref = (fp32_on.get(rt) if rt else None) or refs.get(a.name)
        if ref:
            out[name] = ref
    return out


def conditions(threads: int, cpu: dict | None = None) -> dict:
    """What the machine was doing when a benchmark started: load, busy processes, CPU."""
    cpu = cpu or cpu_info()
    return {"cpu": cpu["model"], "simd": cpu["simd"], "cores": cpu["cores"], "threads": threads,
            "loadavg_before": loadavg(), "busy_processes": busy_processes(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _set_key(cpu: dict, b, shas: list[str]) -> str:
    """What must match for an earlier interleaved set to be reused (--reuse-benchmarks)."""
    raw = json.dumps([cpu["model"], cpu["simd"], b.threads, b.runs, b.rounds, b.warmup, sorted(shas)]
                     + ([b.max_round_seconds, b.min_runs] if b.max_round_seconds is not None else []))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def benchmark_host(ctx, artifacts) -> None:
    """Time every host-runnable artifact interleaved; write latency rows and `conditions.host` into ctx.results."""
    b = ctx.cfg.benchmark
    host = HostTarget(ctx.sample_input(), ctx.cfg.stages.onnx_ptq.graph_optimization)
    runnable = []
    for a in artifacts:
        comp = host.check(a, ctx.run_dir)
        if comp.ok:
            runnable.append(a)
        else:
            ctx.results.put_latency(LatencyRow(a.name, a.sha256, "host", reason="; ".join(comp.problems)))
    cpu = cpu_info()
    units = _units(runnable, host, ctx.run_dir)
    key = _set_key(cpu, b, [a.sha256 + (f":{rt}" if rt else "") for a, rt, _ in units.values()])
    old = [ctx.results.latency.get(latency_key("host", a.sha256, rt)) for a, rt, _ in units.values()]
    if b.reuse and runnable and all(r and r.stats and r.set_key == key for r in old):
        ctx.log(f"  = {len(runnable)} artifacts: host figures reused (--reuse-benchmarks; same CPU, threads, "
                "rounds and artifacts)")
        return
    cond = conditions(b.threads, cpu)
    extra = len(units) - len(runnable)
    ctx.log(f"  {len(runnable)} artifacts" + (f" (+{extra} on another runtime)" if extra else "") + f" interleaved: "
            f"{b.rounds} rounds x ({b.warmup} warm-up + {b.runs} timed), {b.threads} thread(s); "
            f"load {cond['loadavg_before']}")
    deps = {name: d for name, (_, _, d) in units.items()}
    plan: dict[str, tuple[int, int]] = {}  # unit -> (runs, warm-up) per round, capped by max_round_seconds

    def time_round(name: str, r: int):
        try:
            if name not in plan:  # a short untimed probe sizes its rounds (a slow precision gets fewer runs)
                probe = host.time_round(deps[name], 2, 1, b.threads)[0].median
                plan[name] = capped_runs(probe, b.runs, b.warmup, b.max_round_seconds, b.min_runs)
                if plan[name] != (b.runs, b.warmup):
                    ctx.log(f"    {name}: ~{probe:.4g} ms a run: {plan[name][0]} timed + {plan[name][1]} warm-up "
                            f"runs a round (benchmark.max_round_seconds {b.max_round_seconds:g})")
            return host.time_round(deps[name], *plan[name], b.threads)
        except (RuntimeError, ValueError) as e:  # a runtime refusing a model mid-benchmark
            raise EdgeqError(f"{name}: {first_line(e)}") from None

    per_round, pooled, failed = interleave(list(deps), time_round, b.rounds, lambda m: ctx.log(f"    {m}"),
                                           label="benchmark host (interleaved)")
    stats = {n: summarise(per_round[n], pooled[n], b.noisy_limit) for n in deps if per_round[n]}
    add_ratios(stats, per_round, _references(units, runnable), b.noisy_limit)
    cond.update(loadavg_after=loadavg(), rounds=b.rounds, runs_per_round=b.runs, warmup_per_round=b.warmup,
                set_key=key, max_round_seconds=b.max_round_seconds,
                capped={n: {"runs_per_round": p[0], "warmup_per_round": p[1]} for n, p in plan.items()
                        if p != (b.runs, b.warmup)})
    ctx.results.conditions["host"] = cond
    for name, (a, rt, _) in units.items():
        row = LatencyRow(a.name, a.sha256, "host", cpu=cpu["model"], set_key=key, runtime=rt)
        if name in stats:
            row.stats = stats[name]
            _log_stats(ctx.log, name, stats[name])
        else:
            row.reason = f"not measured: {failed.get(name)}"
        ctx.results.put_latency(row)
    ctx.results.save()


def _log_stats(log, name: str, s: LatencyStats) -> None:
    ci = f" [{s.median_ci95[0]:.4g}, {s.median_ci95[1]:.4g}]" if s.median_ci95 else ""
    r = s.ratio_to_fp32
    ratio = ""
    if r:
        ratio = f", {r['value']:.2f}x {r['reference']}" + (f" [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" if r["ci95"] else "")
    log(f"  * {name}: host median {s.median:.4g} ms{ci}{ratio}" + (f"  NOISY: {s.noisy_reason}" if s.noisy else ""))
