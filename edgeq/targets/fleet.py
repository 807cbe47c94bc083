"""Benchmark a run's artifacts on the inventory's devices, concurrently, and merge the figures into the
run's results (read by edgeq.report.build): `latency` rows per (device, artifact), `compatibility` verdicts, and
a `devices` section with what each device's agent reported about itself.

One unreachable or failing device is recorded as such ("not measured: <why>") and never stops the others.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeq.core.artifacts import atomic_path, fp32_baselines
from edgeq.core.errors import ConfigError, EdgeqError
from edgeq.core.formats import KINDS, formats_for_kind, target_class
from edgeq.core.results import LatencyRow
from edgeq.measure.predictors import open_predictor
from edgeq.targets import device_accuracy
from edgeq.targets.device import AGENT_SOURCE, DeviceSession, DeviceTarget
from edgeq.targets.interleave import add_ratios, interleave, summarise
from edgeq.targets.inventory import Device, load_inventory
from edgeq.targets.ssh import DeviceUnreachable, open_transport, quote_argv, remote_workdir, stderr_tail


_LOG_LOCK = threading.Lock()  # devices log from their own threads, one whole line at a time


@dataclass
class Plan:
    device: Device
    runs: int  # per round
    warmup: int  # per round
    threads: int | None
    rounds: int = 1
    accuracy: int | None = None  # eval images run through the device's runtime (accuracy_on_device)


@dataclass
class DeviceOutcome:
    summary: dict
    latency: dict[str, LatencyRow] = field(default_factory=dict)  # artifact name -> its row
    compatibility: dict = field(default_factory=dict)  # artifact name -> Compatibility dict
    accuracy: dict = field(default_factory=dict)  # artifact name -> accuracy_on_device entry


def make_target(session: DeviceSession, graph_optimization: str = "all") -> DeviceTarget:
    """The target for the session's device: the class its kind's row in edgeq.core.formats.KINDS names."""
    return target_class(session.device.kind)(session, graph_optimization)


def checked_inventory(cfg, refs=None, inventory_path: Path | None = None):
    """The inventory, with every device the config (or `refs`) names present in it."""
    path = inventory_path or cfg.inventory
    if path is None:
        raise ConfigError(f"{cfg.source or 'config'}: `targets:` lists devices but no `inventory:` file is set "
                          "(or pass --inventory FILE)")
    inv = load_inventory(path)
    for r in refs if refs is not None else cfg.targets:
        inv.get(r.device)
    return inv


def plans_for(ctx, refs, inventory_path: Path | None) -> list[Plan]:
    inv = checked_inventory(ctx.cfg, refs, inventory_path)
    b = ctx.cfg.benchmark
    plans, seen = [], set()
    for r in refs:
        d = inv.get(r.device)
        if d.name in seen:
            continue
        seen.add(d.name)
        warmup = r.warmup if r.warmup is not None else (d.warmup if d.warmup is not None else b.warmup)
        plans.append(Plan(d, r.runs or d.runs or b.runs, warmup, r.threads or d.threads or b.threads,
                          r.rounds or d.rounds or b.rounds, r.accuracy))
    return plans


def inputs_file(ctx, n: int) -> Path:
    """n preprocessed eval images (float32 NHWC) as a plain .npy for the agent; image 0 is the timed one."""
    p = ctx.run_dir / "devices" / f"inputs-{n}.npy"
    if not p.exists():
        x = np.ascontiguousarray(ctx.pre(ctx.splits.eval.images[:n]), np.float32)
        with atomic_path(p) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, x, allow_pickle=False)
    return p


def outputs_check(artifact, run_dir: Path, x: np.ndarray, device_out) -> dict:
    """Agreement of the device's outputs with this host's for the same artifact and inputs."""
    y_dev = np.asarray(device_out, np.float32)
    y_host = open_predictor(artifact.abspath(run_dir), artifact.format, threads=1).predict(x)
    return {"n": int(len(y_dev)), "top1_agreement_with_host": float(np.mean(y_dev.argmax(1) == y_host.argmax(1))),
            "max_abs_diff": round(float(np.max(np.abs(y_dev - y_host))), 6)}


def _row(a, device: str, stats=None, reason: str | None = None, details: dict | None = None) -> LatencyRow:
    return LatencyRow(a.name, a.sha256, device, stats=stats, reason=reason, details=details or None)


def _f(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def run_device(ctx, plan: Plan, arts, inputs: Path, agent_source: Path = AGENT_SOURCE) -> DeviceOutcome:
    """Everything on one device; a device-side problem is recorded in the outcome, never raised."""
    d = plan.device
    takes = formats_for_kind(d.kind)  # other artifacts get no row for this device
    arts = [a for a in arts if a.format in takes]

    def log(msg: str) -> None:
        with _LOG_LOCK:
            ctx.log(f"  [{d.name}] {msg.strip()}")

    def key(a) -> str:
        return a.name

    out = DeviceOutcome({"name": d.name, "kind": d.kind, "address": d.address, "status": "ok",
                         "runs": plan.runs, "warmup": plan.warmup, "threads": plan.threads, "rounds": plan.rounds})
    t0 = time.perf_counter()
    done: set[str] = set()

    def fail_rest(status: str, why: str) -> None:
        out.summary.update(status=status, error=why, seconds=round(time.perf_counter() - t0, 2))
        for a in arts:
            if a.name not in done:
                out.latency[key(a)] = _row(a, d.name, reason=f"not measured: {why}")
        log(f"! {why}")

    try:
        transport = open_transport(d, log)
    except DeviceUnreachable as e:
        fail_rest("unreachable", str(e))
        return out
    except EdgeqError as e:  # host key refused, missing key file, ...
        fail_rest("refused", str(e))
        return out
    try:
        session = DeviceSession(d, transport, ctx.run_dir, log, agent_source)
        info = session.hello()
        out.summary.update(identity=info.get("device", {}), runtimes=info.get("runtimes", {}),
                           agent_protocol=info.get("protocol"), agent_version=info.get("agent_version"))
        log(f"agent ok: {session.identity()}; runtimes {info.get('runtimes')}")
        target = make_target(session, ctx.cfg.stages.onnx_ptq.graph_optimization)
        x = np.load(inputs, allow_pickle=False)
        uses_agent = KINDS[d.kind].timed_by_agent  # else e.g. trtexec times the engine itself, on its own inputs
        inputs_remote = session.upload(inputs) if uses_agent else None
        want_outputs = d.check_outputs > 0 and uses_agent
        deps = {}
        for a in arts:
            try:
                comp = target.check(a, ctx.run_dir)
                out.compatibility[a.name] = comp.to_dict()
                if not comp.ok:
                    more = f" (and {len(comp.problems) - 1} more: see compatibility)" if len(comp.problems) > 1 else ""
                    out.latency[key(a)] = _row(a, d.name, reason=f"not measured: not compatible with {d.name}: "
                                               f"{comp.problems[0]}{more}")
                    done.add(a.name)
                    continue
                deps[a.name] = (a, target.prepare(a, ctx.run_dir))
            except DeviceUnreachable:
                raise
            except EdgeqError as e:
                out.latency[key(a)] = _row(a, d.name, reason=f"not measured: {e}")
                log(f"- {a.name}: not measured: {e}")
                done.add(a.name)
        _time_interleaved(ctx, plan, target, deps, inputs_remote, x if want_outputs else None, out, key, log)
        done.update(deps)
        if plan.accuracy:
            _accuracy(ctx, plan, session, target, deps, uses_agent, out, log)
    except DeviceUnreachable as e:
        fail_rest("unreachable", str(e))
    except EdgeqError as e:  # the agent could not start: wrong protocol, no python, crash
        fail_rest("error", str(e))
    except Exception as e:  # noqa: BLE001 - a bug must not take the other devices down; it is recorded
        fail_rest("error", f"internal error: {type(e).__name__}: {e}")
    finally:
        out.summary["copied"] = {"files": len(transport.copies.copied), "bytes": transport.copies.bytes,
                                 "already_there": len(transport.copies.reused)}
        out.summary["seconds"] = round(time.perf_counter() - t0, 2)
        transport.close()
    return out


def _accuracy(ctx, plan: Plan, session, target, deps: dict, uses_agent: bool, out: DeviceOutcome, log) -> None:
    """accuracy_on_device for the device's measured artifacts (agent-run kinds; others say why not)."""
    if not uses_agent and not hasattr(target, "outputs"):  # a Jetson's trtexec exports outputs (--exportOutput)
        why = (f"not measured: a {plan.device.kind} device is timed by its own tool, which returns no outputs "
               "to score; run the artifact through the agent's runtime for on-device accuracy")
        out.accuracy = {n: {"artifact": n, "sha256": a.sha256, "n": 0, "reason": why} for n, (a, _) in deps.items()}
        return
    measured = {n: dep for n, dep in deps.items() if out.latency.get(n) is not None and out.latency[n].stats}
    out.accuracy = device_accuracy.measure(ctx, session, target, measured, plan.accuracy, plan.threads, log)


def _time_interleaved(ctx, plan: Plan, target, deps: dict, inputs_remote, x_check, out: DeviceOutcome, key,
                      log) -> None:
    """Time a device's prepared artifacts in interleaved rounds; record rows (and an outputs check) in `out`."""
    details: dict[str, dict] = {n: dict(dep.details) for n, (_, dep) in deps.items()}
    log(f"{len(deps)} artifacts interleaved: {plan.rounds} rounds x ({plan.warmup} warm-up + {plan.runs} timed), "
        f"{plan.threads} thread(s)")

    def time_round(name: str, r: int):
        a, dep = deps[name]
        want = x_check is not None and r == 0
        stats = target.benchmark(dep, plan.runs, plan.warmup, plan.threads, inputs_remote, return_outputs=want)
        if want and "outputs" in target.last_answer:
            details[name]["outputs_check"] = outputs_check(a, ctx.run_dir, x_check, target.last_answer["outputs"])
        return stats, (target.last_answer.get("timing") or {}).get("samples_ms")

    device = target.session.info.get("device", {})
    cond = {"cpu": device.get("cpu"), "loadavg_before": device.get("loadavg"), "threads": plan.threads,
            "rounds": plan.rounds, "runs_per_round": plan.runs, "warmup_per_round": plan.warmup}
    per_round, pooled, failed = interleave(list(deps), time_round, plan.rounds, log, fatal=(DeviceUnreachable,),
                                           label=f"benchmark {plan.device.name} (interleaved)")
    cond["loadavg_after"] = target.session.hello().get("device", {}).get("loadavg")  # how busy it was meanwhile
    out.summary["conditions"] = cond
    noisy_limit = ctx.cfg.benchmark.noisy_limit
    stats = {n: summarise(per_round[n], pooled[n], noisy_limit) for n in deps if per_round[n]}
    add_ratios(stats, per_round, fp32_baselines([a for a, _ in deps.values()]), noisy_limit)
    compare = getattr(target, "compare_engines", None)  # a Jetson: each INT8 engine against the FP16 baseline
    if compare is not None:
        out.summary.update(compare({n: a for n, (a, _) in deps.items()}, stats))
    for name, (a, _) in deps.items():
        if name not in stats:
            out.latency[key(a)] = _row(a, plan.device.name, reason=f"not measured: {failed.get(name)}")
            continue
        s = stats[name]
        out.latency[key(a)] = _row(a, plan.device.name, s, details=details[name])
        out.summary.setdefault("runtime", s.runtime)
        ci = f" [{s.median_ci95[0]:.4g}, {s.median_ci95[1]:.4g}]" if s.median_ci95 else ""
        log(f"* {name}: median {s.median:.4g} ms{ci}, p90 {_f(s.p90)} ms ({s.rounds} x {plan.runs} runs, "
            f"{plan.threads} thread(s), {s.runtime})" + (" NOISY" if s.noisy else ""))


def benchmark_devices(ctx, arts, refs=None, inventory: Path | None = None,
                      agent_source: Path = AGENT_SOURCE) -> dict[str, dict]:
    """Benchmark `arts` on the devices of `refs` (default: the config's `targets:`) and merge the results."""
    plans = plans_for(ctx, refs if refs is not None else ctx.cfg.targets, inventory)
    if not plans:
        return {}
    inputs = {n: inputs_file(ctx, n) for n in {max(1, p.device.check_outputs) for p in plans}}
    ctx.log(f"  devices: {', '.join(f'{p.device.name} ({p.device.kind}, {p.device.address})' for p in plans)}")
    with ThreadPoolExecutor(max_workers=len(plans), thread_name_prefix="edgeq-device") as ex:
        futures = [ex.submit(run_device, ctx, p, arts, inputs[max(1, p.device.check_outputs)], agent_source)
                   for p in plans]
        outcomes = [f.result() for f in futures]
    merge_outcomes(ctx, outcomes)
    return {o.summary["name"]: o.summary for o in outcomes}


def merge_outcomes(ctx, outcomes: list[DeviceOutcome]) -> None:
    """Each device's new figures replace all of its older ones in the run's results."""
    section = dict(ctx.results.sections.get("devices") or {})
    for o in outcomes:
        name = o.summary["name"]
        ctx.results.drop_latency(name)  # this device's new figures replace all of its older ones
        for row in o.latency.values():
            ctx.results.put_latency(row)
        for art, comp in o.compatibility.items():
            ctx.results.put_compatibility(art, name, comp)
        if o.accuracy:
            on_device = dict(ctx.results.sections.get("accuracy_on_device") or {})
            on_device[name] = o.accuracy
            ctx.results.set_section("accuracy_on_device", dict(sorted(on_device.items())))
        section[name] = o.summary
        if o.summary.get("conditions"):
            ctx.results.conditions[name] = o.summary["conditions"]
    ctx.results.set_section("devices", dict(sorted(section.items())))


def clean_device(device: Device, log) -> dict:
    """Remove the device's edgeq workdir (every run's uploads and bundles); what was there, in bytes."""
    if device.is_local:
        return {"device": device.name, "removed_bytes": 0,
                "note": "a host-kind device without an address reads files in place: edgeq copied nothing there"}
    wd = remote_workdir(device)
    if wd.strip("/. ~") == "" or ".." in wd.split("/"):
        raise ConfigError(f"{device.name}: workdir {device.workdir!r} is not a directory edgeq owns; set `workdir:` "
                          "to a dedicated directory (default edgeq-work)")
    transport = open_transport(device, log)
    try:
        du = transport.run(["du", "-sb", wd])
        size = int(du.stdout.split()[0]) if du.returncode == 0 and du.stdout.strip() else 0
        r = transport.run(["rm", "-rf", "--", wd])
        if r.returncode != 0:
            raise EdgeqError(f"{device.name}: `{quote_argv(['rm', '-rf', '--', wd])}` failed ({stderr_tail(r.stderr, 2)})")
    finally:
        transport.close()
    log(f"{device.name}: removed {wd} ({size / 1e6:.2f} MB)")
    return {"device": device.name, "workdir": wd, "removed_bytes": size}
