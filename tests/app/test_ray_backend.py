"""`edgeq sweep --backend ray` on a one-machine Ray cluster (2 CPUs, two devices declared as custom resources):
the same sweep as the local backend, devices serialised by their resource, devices in parallel, resumable."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
import yaml

from conftest import make_config

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'edgeq[ray]')")

BENCH = {"runs": 20, "warmup": 2, "threads": 1, "rounds": 3}
MODELS = ("tiny_a", "tiny_b")
DEVICES = ("a", "b")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, resources={"device:a": 1, "device:b": 1}, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sweeps(tiny_project, cluster, tmp_path_factory):
    """The same two tiny models x two host-kind devices (the agent run here, no SSH) swept by both backends."""
    from edgeq.app.sweep import sweep

    root = tmp_path_factory.mktemp("ray_sweep")
    inv = root / "devices.yaml"
    inv.write_text(yaml.safe_dump({"devices": [{"name": d, "kind": "host", "python": sys.executable, "threads": 1}
                                               for d in DEVICES]}))
    cfgs = [make_config(root, tiny_project, filename=f"{n}.yaml", name=n, benchmark=BENCH) for n in MODELS]
    out = {b: root / b for b in ("ray", "local")}
    got = {"ray": sweep(cfgs, inv, None, out["ray"], backend="ray", accuracy=10)}
    got["local"] = sweep(cfgs, inv, None, out["local"], jobs=2, accuracy=10)
    return {"cfgs": cfgs, "inventory": inv, "out": out, "summary": got}


def _report(out: Path, model: str) -> dict:
    return json.loads((out / model / "report.json").read_text())


def test_ray_sweep_has_the_local_sweeps_rows(sweeps):
    s = sweeps["summary"]
    for b in ("ray", "local"):
        assert [m["model"] for m in s[b]["models"]] == list(MODELS) and {m["status"] for m in s[b]["models"]} == {"ok"}
        assert [Path(m["config"]) for m in s[b]["models"]] == sweeps["cfgs"]
        assert [Path(m["run_dir"]) for m in s[b]["models"]] == [sweeps["out"][b] / n for n in MODELS]
        assert json.loads((sweeps["out"][b] / "sweep.json").read_text())["models"][0]["model"] == "tiny_a"
        assert (sweeps["out"][b] / "sweep.md").read_text().startswith("# edgeq sweep: 2 models x 2 devices")

    def jobs(b):
        return [(j["device"], j["model"], j["status"]) for j in s[b]["device_jobs"]]

    assert jobs("ray") == jobs("local") == [(d, m, "ok") for d in DEVICES for m in MODELS]
    for m in MODELS:
        rep = {b: _report(sweeps["out"][b], m) for b in ("ray", "local")}
        shas = {b: {a["name"]: a["sha256"] for a in rep[b]["artifacts"]} for b in rep}
        assert shas["ray"] == shas["local"] and "int8_tflite_ptq" in shas["ray"]
        for b in rep:
            for a in rep[b]["artifacts"]:
                if a["format"] != "tflite":
                    continue
                for d in ("host", *DEVICES):
                    assert a["latency_ms"][d]["median"] > 0, (b, m, a["name"], d)
                for d in DEVICES:
                    assert rep[b]["accuracy_on_device"][d][a["name"]]["n"] == 10
        cells = {b: [sorted(x["latency_ms"]) for x in next(e for e in s[b]["models"] if e["model"] == m)["artifacts"]]
                 for b in rep}
        assert cells["ray"] == cells["local"]


def test_ray_runs_one_job_at_a_time_per_device_and_devices_in_parallel(sweeps):
    jobs = sweeps["summary"]["ray"]["device_jobs"]
    spans = {d: sorted((j["start"], j["end"]) for j in jobs if j["device"] == d) for d in DEVICES}
    for d, sp in spans.items():
        assert len(sp) == 2 and all(e <= s for (_, e), (s, _) in zip(sp, sp[1:])), f"{d} ran two jobs at once: {sp}"
    overlap = any(a0 < b1 and b0 < a1 for a0, a1 in spans["a"] for b0, b1 in spans["b"])
    assert overlap, f"the two devices never ran at the same time: {spans}"


def test_ray_rerun_reuses_every_pipeline_and_device_figure(sweeps):
    from edgeq.app.sweep import sweep

    before = {m: _report(sweeps["out"]["ray"], m)["artifacts"] for m in MODELS}
    again = sweep(sweeps["cfgs"], sweeps["inventory"], None, sweeps["out"]["ray"], backend="ray", accuracy=10)
    assert {j["status"] for j in again["device_jobs"]} == {"reused"}
    assert {m["status"] for m in again["models"]} == {"ok"}
    for m in MODELS:
        assert [a["sha256"] for a in _report(sweeps["out"]["ray"], m)["artifacts"]] == [a["sha256"] for a in before[m]]


def _kill_first_worker_running(title: str, found: list, stop) -> None:
    """SIGKILL the first Ray worker whose process title (Ray sets `ray::<task name>`) contains `title`."""
    while not stop.is_set() and not found:
        for p in Path("/proc").iterdir():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if p.name.isdigit() and cmd.startswith("ray::") and title in cmd:
                os.kill(int(p.name), signal.SIGKILL)
                found.append(cmd.strip())
                return
        stop.wait(0.1)


def test_a_device_job_whose_worker_is_killed_is_retried_and_the_sweep_completes(sweeps):
    from edgeq.app.sweep import sweep

    found, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_first_worker_running, args=("edgeq a: tiny_a", found, stop))
    killer.start()
    try:
        s = sweep(sweeps["cfgs"], sweeps["inventory"], None, sweeps["out"]["ray"], backend="ray", remeasure=True)
    finally:
        stop.set()
        killer.join()
    assert found, "no worker ran the device job 'edgeq a: tiny_a'"
    assert [(j["device"], j["model"], j["status"]) for j in s["device_jobs"]] == [
        (d, m, "ok") for d in DEVICES for m in MODELS]
    rep = _report(sweeps["out"]["ray"], "tiny_a")
    assert all(a["latency_ms"]["a"]["median"] > 0 for a in rep["artifacts"] if a["format"] == "tflite")
