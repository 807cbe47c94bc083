"""`edgeq sweep --backend ray [--address auto|HOST:PORT]`: the sweep's pipelines and device jobs as Ray tasks.

- Every model's pipeline is a task holding the CPUs its config asks for (`edgeq run` in a subprocess, as locally).
- Every (device, model) job is a task holding the device's custom resource `device:<name>` (1 of 1), declared by
  the machine that reaches the device (`ray start --resources '{"device:pi4": 1}'`): a device never runs two jobs at
  once, devices run in parallel, and a job waits for its model's pipeline (the pipeline's result is its argument).
- Files move through the shared directory: the sweep's --out (run directories, artifacts, inputs) and the configs
  with their data must be at the same path on every node. Only small records (ModelRun, DeviceJob with its
  DeviceOutcome) travel through Ray's object store.
- A task whose worker dies is retried (`MAX_RETRIES`); one that still fails is reported in sweep.json/md and the
  others are kept. Merging, each run's report and sweep.json/md are written by this process with the local
  backend's code (edgeq.app.sweep.finish_runs / summarise), so the two backends cannot differ in results.

Without --address edgeq starts a one-machine cluster declaring every swept device on it; a cluster already
initialised in this process (ray.init in a test or notebook) is used as it is.
"""
from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from edgeq.app.sweep_jobs import DeviceJob, ModelRun, measure_job, run_model
from edgeq.core.config import load_config
from edgeq.core.errors import ConfigError, EdgeqError, first_line
from edgeq.run.pipeline import open_run
from edgeq.targets.inventory import load_inventory

MAX_RETRIES = 2  # re-runs of a task whose worker process or node died (Ray retries no application error)
INSTALL_HINT = "pip install 'edgeq[ray]'"


def device_resource(name: str) -> str:
    """The Ray custom resource a device's jobs hold: declared (1) by the node that reaches the device."""
    return f"device:{name}"


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(f"edgeq sweep --backend ray: Ray is not installed here; {INSTALL_HINT}") from None
    return ray


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """`auto`, `HOST:PORT` or `ray://HOST:PORT` of a head that answers; anything else is refused in one line
    before connecting (ray.init retries an unreachable address for minutes)."""
    if address is None or address == "auto":
        return
    m = re.fullmatch(r"(?:ray://)?([A-Za-z0-9._-]+):(\d{1,5})", address)
    if not m:
        raise ConfigError(f"edgeq sweep: --address {address!r} is not a Ray cluster address; give auto (the "
                          "cluster `ray start` started on this machine) or HOST:PORT of the head node")
    try:
        socket.create_connection((m[1], int(m[2])), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"edgeq sweep: no Ray head answers at {m[1]}:{m[2]} ({e.strerror or e}); start one there "
                          "with `ray start --head` or fix --address") from None


def connect(ray, address: str | None, devices: list[str]) -> bool:
    """Join (or start) the cluster and check every device is declared on it; True when this call started Ray."""
    started = False
    if not ray.is_initialized():
        check_address(address)
        try:
            if address is None:
                ray.init(resources={device_resource(n): 1 for n in devices}, include_dashboard=False,
                         log_to_driver=True)
            else:
                ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
            raise EdgeqError(f"edgeq sweep: could not join the Ray cluster at {address or 'a new local one'}: "
                             f"{first_line(e)}; start it with `ray start --head` (see docs/ray.md)") from None
        started = True
    have = ray.cluster_resources()
    missing = [n for n in devices if have.get(device_resource(n), 0) < 1]
    if missing:
        if started:
            ray.shutdown()
        raise ConfigError("edgeq sweep: no Ray node declares " + ", ".join(device_resource(n) for n in missing)
                          + "; start the node that reaches each device with `ray start --resources "
                          + f"'{{\"{device_resource(missing[0])}\": 1}}'` (docs/ray.md)")
    return started


def pipeline_cpus(m: ModelRun) -> int:
    """The CPUs a model's pipeline asks for: its benchmark threads or its evaluation workers, whichever is more."""
    cfg = load_config(m.config)
    return max(1, cfg.benchmark.threads, cfg.evaluate.workers)


def _fit(cpus: int, largest: float) -> int:
    """`cpus`, at most what the largest node has: Ray would wait forever for a task no node can hold."""
    return min(cpus, int(largest)) if largest >= 1 else cpus


def _pipeline_task(m: ModelRun) -> ModelRun:
    return run_model(m, print)


def _device_task(m: ModelRun, device_name: str, inventory: str, accuracy: int | None,
                 remeasure: bool) -> DeviceJob | None:
    """One (device, model) job on the node holding the device; None when the model's pipeline failed."""
    if m.status != "ok":
        return None
    job = DeviceJob(device_name, m.name)
    try:
        ctx = open_run(m.run_dir, m.config, print)
        device = load_inventory(Path(inventory)).get(device_name)
        return measure_job(ctx, device, job, Path(inventory), accuracy, remeasure, print)
    except EdgeqError as e:  # an application error: recorded, not retried
        job.status, job.note = "failed", first_line(e)
        job.end = job.end or time.time()
        return job


def sweep_on_ray(runs: list[ModelRun], device_names: list[str], inventory: Path | None, accuracy: int | None,
                 remeasure: bool, address: str | None, log) -> tuple[list[ModelRun], list[DeviceJob]]:
    """Pipelines and device jobs as Ray tasks; returns the runs (status filled in) and the device jobs in the
    local backend's order (device by device, model by model)."""
    ray = import_ray()
    started = connect(ray, address, device_names)
    try:
        given = {m.name: m for m in runs}  # sweep.json names the paths as given, as locally
        runs = [ModelRun(m.config.resolve(), m.name, m.run_dir.resolve()) for m in runs]  # paths every node sees
        inv = load_inventory(inventory) if device_names else None
        pipeline = ray.remote(_pipeline_task)
        device_task = ray.remote(_device_task)
        log(f"[sweep] Ray: {len(runs)} pipelines, {len(runs) * len(device_names)} device jobs on "
            f"{ray.cluster_resources().get('CPU', 0):g} CPUs")
        largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        run_refs = [pipeline.options(num_cpus=_fit(pipeline_cpus(m), largest), max_retries=MAX_RETRIES,
                                     name=f"edgeq run {m.name}").remote(m) for m in runs]
        job_refs = []
        for name in device_names:
            d = inv.get(name)
            # a device job's work happens on the device; a host-kind device computes on this node's CPUs
            cpus = _fit(d.threads or 1, largest) if d.kind == "host" and not d.host else 0
            for m, ref in zip(runs, run_refs):
                task = device_task.options(num_cpus=cpus, resources={device_resource(name): 1},
                                           max_retries=MAX_RETRIES, name=f"edgeq {name}: {m.name}")
                job_refs.append((name, m, task.remote(ref, name, str(inventory.resolve()), accuracy, remeasure)))
        done: list[ModelRun] = []
        for m, ref in zip(runs, run_refs):
            try:
                done.append(ray.get(ref))
            except Exception as e:  # retries exhausted (worker or node lost), or the task could not run
                m.status, m.error = "failed", f"Ray task failed: {first_line(e)}"[:300]
                log(f"[sweep] {m.name}: FAILED: {m.error}")
                done.append(m)
        for m in done:
            m.config, m.run_dir = given[m.name].config, given[m.name].run_dir
        ok = {m.name for m in done if m.status == "ok"}
        jobs: list[DeviceJob] = []
        for name, m, ref in job_refs:
            if m.name not in ok:  # its task returns nothing (or fails with the pipeline's error)
                continue
            try:
                job = ray.get(ref)
            except Exception as e:
                job = DeviceJob(name, m.name, status="failed", note=f"Ray task failed: {first_line(e)}"[:300])
            if job is not None:
                jobs.append(job)
        return done, jobs
    finally:
        if started:
            ray.shutdown()
