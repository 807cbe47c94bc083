"""`edgeq sweep CONFIGS... --inventory devices.yaml [--device X ...] --out DIR`: many models across a fleet.

1. Every model's pipeline, as `edgeq run` subprocesses, at most `jobs` at a time (each resumes like a single run).
2. Every artifact of every run on every device that takes it: one queue per device — a device never runs two
   benchmarks at once, devices run in parallel. Each (device, model) job times that model's artifacts in
   interleaved rounds on the device (and scores `accuracy` eval images there when asked). A job whose device
   already holds figures for the run's current artifacts is skipped (resumable; --remeasure redoes it).
   Measurements are merged into each run's results in this process, after the device threads finish.
3. sweep.json / sweep.md: a models x devices matrix (median latency with its interval, host top-1) and per
   device and model what to ship, each run's own report linked; the job start/end times are recorded.
`--backend ray` runs steps 1 and 2 as Ray tasks instead (edgeq.app.ray_backend, docs/ray.md); merging, the reports
and step 3 are this module's code under either backend.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgeq.core.artifacts import write_bytes_atomic, write_json_atomic
from edgeq.core.config import load_config
from edgeq.core.errors import ConfigError, EdgeqError
from edgeq.core.yamlfile import read_yaml_mapping
from edgeq.report.build import write_report
from edgeq.run.pipeline import open_run
from edgeq.targets.fleet import merge_outcomes
from edgeq.targets.inventory import load_inventory
from edgeq.app.sweep_jobs import DeviceJob, ModelRun, measure_job, run_model  # noqa: F401  (re-exported)


def _model_runs(configs: list[Path], out: Path) -> list[ModelRun]:
    runs, seen = [], set()
    for c in configs:
        raw = read_yaml_mapping(Path(c), "config", "a run config")
        if "devices" in raw and "model" not in raw:  # models/*.yaml also matches the inventory example
            continue
        cfg = load_config(c)
        if cfg.name in seen:
            raise ConfigError(f"{c}: model name {cfg.name!r} appears twice in the sweep; each config needs its own name")
        seen.add(cfg.name)
        runs.append(ModelRun(Path(c), cfg.name, out / cfg.name))
    return runs


def run_models(runs: list[ModelRun], jobs: int, log) -> None:
    """`edgeq run` of every config (subprocesses, `jobs` at a time); a failed model is recorded, never fatal."""
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="edgeq-sweep-run") as ex:
        list(ex.map(lambda m: run_model(m, log), runs))


def finish_runs(runs: list[ModelRun], jobs: list[DeviceJob], log=print) -> None:
    """Merge every device job's outcome into its run's results and write each run's report (the one writer, in
    the sweep's own process, whichever backend ran the jobs)."""
    for m in runs:
        if m.status != "ok":
            continue
        ctx = open_run(m.run_dir, m.config, log)
        outcomes = [j.outcome for j in jobs if j.model == m.name and j.outcome is not None]
        if outcomes:
            merge_outcomes(ctx, outcomes)
            ctx.results.save()
        write_report(ctx)


def measure_devices(runs: list[ModelRun], device_names: list[str], inventory: Path, accuracy: int | None,
                    remeasure: bool, log) -> list[DeviceJob]:
    """One thread per device, each working through its queue of models; outcomes merged by `finish_runs`."""
    inv = load_inventory(inventory)
    devices = [inv.get(n) for n in device_names]
    ok_runs = [m for m in runs if m.status == "ok"]
    ctxs = {m.name: open_run(m.run_dir, m.config, log) for m in ok_runs}
    queues: dict[str, list[DeviceJob]] = {d.name: [DeviceJob(d.name, m.name) for m in ok_runs] for d in devices}
    lock = threading.Lock()

    def work(device) -> None:
        for job in queues[device.name]:
            measure_job(ctxs[job.model], device, job, inventory, accuracy, remeasure, log, lock)

    with ThreadPoolExecutor(max_workers=max(1, len(devices)), thread_name_prefix="edgeq-sweep-dev") as ex:
        list(ex.map(work, devices))
    return [j for q in queues.values() for j in q]


def _cell(rep: dict, device: str, art: dict) -> str:
    s = (art.get("latency_ms") or {}).get(device)
    if not s:
        return ""
    if s.get("median") is None:
        return "not measured"
    ci = s.get("median_ci95")
    acc = (rep.get("accuracy_on_device") or {}).get(device, {}).get(art["name"], {})
    on_dev = f", top-1 on device {100 * acc['top1']:.1f} %" if acc.get("n") else ""
    return f"{s['median']:.4g} ms" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "") + on_dev


def summarise(runs: list[ModelRun], jobs: list[DeviceJob], devices: list[str], out: Path, seconds: float) -> dict:
    import json

    models = []
    for m in runs:
        rep_path = m.run_dir / "report.json"
        rep = json.loads(rep_path.read_text()) if m.status == "ok" and rep_path.is_file() else None
        entry = {"model": m.name, "config": str(m.config), "run_dir": str(m.run_dir), "status": m.status,
                 "error": m.error, "seconds": m.seconds}
        if rep:
            entry["ship"] = {d: rep.get("ship", {}).get(d) for d in ["host", *devices]}
            entry["artifacts"] = [{"name": a["name"], "top1": a["accuracy"].get("top1"),
                                   "latency_ms": {d: _cell(rep, d, a) for d in ["host", *devices]}}
                                  for a in rep["artifacts"]]
        models.append(entry)
    summary = {"devices": devices, "seconds": round(seconds, 1), "models": models,
               "device_jobs": [j.to_dict() for j in jobs]}
    write_json_atomic(out / "sweep.json", summary)
    write_bytes_atomic(out / "sweep.md", sweep_markdown(summary).encode())
    return summary


def sweep_markdown(s: dict) -> str:
    cols = ["host", *s["devices"]]
    lines = [f"# edgeq sweep: {len(s['models'])} models x {len(s['devices'])} devices ({s['seconds']} s)", "",
             "Median latency, batch 1, with its 95 % interval from each target's own interleaved rounds; top-1 from "
             "the host evaluation (each run's report.md has the intervals and paired tests).", "",
             "| model | artifact | top-1 % | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for m in s["models"]:
        if m["status"] != "ok":
            lines.append(f"| {m['model']} | — | run failed: {m['error']} |" + " |" * len(cols))
            continue
        for a in m["artifacts"]:
            top1 = f"{100 * a['top1']:.2f}" if a["top1"] is not None else "—"
            lines.append(f"| {m['model']} | {a['name']} | {top1} | " + " | ".join(a["latency_ms"][c] or "—" for c in cols)
                         + " |")
    lines += ["", "## What to ship", ""]
    for m in s["models"]:
        for d, v in (m.get("ship") or {}).items():
            if v:
                lines.append(f"- {m['model']} on **{d}**: {v['artifact'] or 'nothing'} — {v['why']}")
    lines += ["", "## Device jobs", "", "| device | model | status | seconds | note |", "|---|---|---|---|---|"]
    for j in s["device_jobs"]:
        secs = f"{j['end'] - j['start']:.1f}" if j["start"] and j["end"] else "—"
        lines.append(f"| {j['device']} | {j['model']} | {j['status']} | {secs} | {j['note'] or ''} |")
    return "\n".join(lines) + "\n"


def sweep(configs: list[Path], inventory: Path | None, devices: list[str] | None, out: Path, jobs: int = 1,
          accuracy: int | None = None, remeasure: bool = False, log=print, backend: str = "local",
          address: str | None = None) -> dict:
    """Every config's pipeline, then every artifact on every device; `backend` "ray" runs both as Ray tasks
    (edgeq.app.ray_backend; `address` names the cluster) with the same results as "local"."""
    if not configs:
        raise ConfigError("edgeq sweep: give one or more model configs (e.g. models/*.yaml)")
    if devices and inventory is None:
        raise ConfigError("edgeq sweep: --device needs --inventory FILE")
    if backend not in BACKENDS:
        raise ConfigError(f"edgeq sweep: unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if address is not None and backend != "ray":
        raise ConfigError("edgeq sweep: --address names a Ray cluster; add --backend ray")
    if backend == "ray":  # Ray installed and the address well-formed, before anything is written
        from edgeq.app.ray_backend import check_address, import_ray

        import_ray()
        check_address(address)
    t = time.perf_counter()
    runs = _model_runs(configs, out)
    names = list(dict.fromkeys(devices or []))
    if inventory is not None and not names:
        names = [d.name for d in load_inventory(inventory).devices]
    elif names:
        inv = load_inventory(inventory)
        for n in names:
            inv.get(n)  # an unknown name fails now, before any run
    out.mkdir(parents=True, exist_ok=True)
    if backend == "ray":
        from edgeq.app.ray_backend import sweep_on_ray

        runs, dev_jobs = sweep_on_ray(runs, names, inventory, accuracy, remeasure, address, log)
    else:
        run_models(runs, jobs, log)
        dev_jobs = measure_devices(runs, names, inventory, accuracy, remeasure, log) if names else []
    if names:
        finish_runs(runs, dev_jobs, log)
    if not any(m.status == "ok" for m in runs):
        raise EdgeqError("edgeq sweep: every model's run failed: " + "; ".join(f"{m.name}: {m.error}" for m in runs))
    return summarise(runs, dev_jobs, names, out, time.perf_counter() - t)


BACKENDS = ("local", "ray")
