"""The remote device path against a real OpenSSH server on 127.0.0.1 (no hardware, no network).

A fixture starts /usr/sbin/sshd on a free loopback port with host and user keys generated here; an
`rpi`-kind device whose interpreter is this machine's Python then goes through the whole path: agent
copy, artifact copy, benchmark, JSON back, merge into report.json. Faults: wrong or unknown host key,
an unreachable device, an agent crash, a foreign protocol version, missing device tools.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import tarfile
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, fake_edgetpu_compiler, make_config, run_edgeq
from conftest import free_port as _free_port, keygen as _keygen, write_inventory as _inventory

REPO_MODELS = REPO / "models"

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = [pytest.mark.ssh,
              pytest.mark.skipif(not (os.path.exists(SSHD) and shutil.which("ssh-keygen")),
                                 reason="OpenSSH server not installed (Debian: apt-get install openssh-server)")]


class Sshd:
    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.host_pub = _keygen(root / "host_ed25519")
        self.user_key = root / "id_ed25519"
        (root / "authorized_keys").write_text(_keygen(self.user_key) + "\n")
        self.known_hosts = root / "known_hosts"
        kt, kb = self.host_pub.split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {kt} {kb}\n")
        (root / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {root}/host_ed25519
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
UsePAM no
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding no
X11Forwarding no
Subsystem sftp internal-sftp
LogLevel ERROR
""")
        if os.geteuid() == 0:  # root sshd wants its privilege-separation directory
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = root / "sshd.log"  # a file, not a pipe: an unread pipe could fill and stall sshd
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until it listens (it starts in milliseconds)
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 10 s")

    def device(self, name: str, kind: str = "rpi", **kw) -> dict:
        d = {"name": name, "kind": kind, "host": "127.0.0.1", "port": self.port, "user": getpass.getuser(),
             "key_file": str(self.user_key), "known_hosts": str(self.known_hosts),
             "workdir": str(self.root / "device-home" / name), "python": sys.executable, "connect_timeout": 5,
             "command_timeout": 120}
        d.update(kw)
        return d

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    s = Sshd(tmp_path_factory.mktemp("sshd"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def silent_port():
    """A loopback port that accepts TCP but never speaks SSH: a device that hangs."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture(scope="module")
def device_run(tiny_project, sshd, silent_port, tmp_path_factory):
    """`edgeq run` of the tiny model with `targets:` = the loopback rpi and a device that never answers."""
    root = tmp_path_factory.mktemp("device_run")
    inv = _inventory(root / "devices.yaml", [
        sshd.device("loop-rpi", threads=1),
        sshd.device("hung-pi", port=silent_port, connect_timeout=1.5),
        {"name": "local-agent", "kind": "host", "python": sys.executable, "threads": 1},
    ])
    cfg = make_config(root, tiny_project, filename="tiny_devices.yaml", inventory=str(inv),
                      benchmark={"runs": 50, "warmup": 5, "threads": 1, "rounds": 3},
                      targets=[{"device": "loop-rpi"}, {"device": "hung-pi"}, {"device": "local-agent"}])
    t = time.monotonic()
    r = run_edgeq("run", cfg, "--out", root / "run", cwd=root, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    return {"root": root, "run": root / "run", "inventory": inv, "stdout": r.stdout,
            "seconds": time.monotonic() - t}


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def _art(rep: dict, name: str) -> dict:
    return next(e for e in rep["artifacts"] if e["name"] == name)


# ------------------------------------------------------------------ the full path
def test_loopback_rpi_latency_merged_into_report(device_run):
    rep = _report(device_run["run"])
    for name in ("fp32_tflite", "int8_tflite_ptq"):
        lat = _art(rep, name)["latency_ms"]
        assert list(lat)[0] == "host"
        s = lat["loop-rpi"]
        assert s["median"] > 0 and s["runs"] == 50 * 3 and s["rounds"] == 3 and s["threads"] == 1
        assert s["median_ci95"][0] <= s["median"] <= s["median_ci95"][1] and len(s["round_medians"]) == 3
        assert s["runtime"].startswith("ai-edge-litert") and s["device"].startswith("loop-rpi:")
        assert set(lat["host"]) <= set(s) | {"reason"}  # same keys as the host figures
    cond = rep["conditions"]["loop-rpi"]  # how busy the device was, before and after its rounds
    assert len(cond["loadavg_before"]) == 3 and len(cond["loadavg_after"]) == 3 and cond["rounds"] == 3
    ratio = _art(rep, "int8_tflite_ptq")["latency_ms"]["loop-rpi"]["ratio_to_fp32"]
    assert ratio["reference"] == "fp32_tflite" and ratio["rounds"] == 3  # interleaved on the device itself
    dev = rep["devices"]["loop-rpi"]
    assert dev["status"] == "ok" and dev["kind"] == "rpi" and dev["agent_protocol"] == 1
    assert dev["identity"]["machine"] and dev["identity"]["cpu"] and "litert" in dev["runtimes"]
    assert "| int8_tflite_ptq | loop-rpi |" in (device_run["run"] / "report.md").read_text()


def test_host_kind_device_runs_the_agent_locally_without_copying(device_run):
    rep = _report(device_run["run"])
    dev = rep["devices"]["local-agent"]
    assert dev["status"] == "ok" and dev["address"] == "this machine" and dev["copied"]["files"] == 0
    assert _art(rep, "int8_tflite_ptq")["latency_ms"]["local-agent"]["median"] > 0


def test_device_outputs_match_host_outputs(device_run):
    res = json.loads((device_run["run"] / "results.json").read_text())
    rows = [v for v in res["latency"].values() if v["target"] == "loop-rpi" and v.get("stats")]
    assert rows
    for v in rows:
        chk = v["details"]["outputs_check"]
        assert chk["n"] == 16 and chk["top1_agreement_with_host"] == 1.0 and chk["max_abs_diff"] < 1e-5


def test_unreachable_device_times_out_and_others_finish(device_run):
    rep = _report(device_run["run"])
    hung = rep["devices"]["hung-pi"]
    assert hung["status"] == "unreachable" and "no SSH answer within 1.5 s" in hung["error"]
    assert hung["seconds"] < 10
    s = _art(rep, "int8_tflite_ptq")["latency_ms"]["hung-pi"]
    assert s["median"] is None and s["reason"].startswith("not measured: ") and "unreachable" in s["reason"]
    assert _art(rep, "int8_tflite_ptq")["latency_ms"]["loop-rpi"]["median"] > 0


def test_bench_cli_second_run_copies_nothing(device_run):
    run, inv = device_run["run"], device_run["inventory"]
    r = run_edgeq("bench", run, "--inventory", inv, "--device", "loop-rpi", "--runs", "30", cwd=device_run["root"])
    assert r.returncode == 0, r.stderr[-2000:]
    rep = _report(run)
    dev = rep["devices"]["loop-rpi"]
    assert dev["copied"]["files"] == 0 and dev["copied"]["already_there"] >= 4  # agent, inputs, 2 models
    assert _art(rep, "int8_tflite_ptq")["latency_ms"]["loop-rpi"]["runs"] == 30 * 3
    assert "devices (batch 1)" in r.stdout and "loop-rpi" in r.stdout
    # the pipeline's first run did copy: content-addressed files under the per-run directory
    files = sorted(p.name for p in Path(sshd_workdir(inv, "loop-rpi")).rglob("*") if p.is_file())
    assert any(f.endswith("-agent.py") for f in files) and any(f.endswith("-int8_ptq.tflite") for f in files)


def test_bench_accuracy_runs_eval_images_through_each_devices_runtime(device_run):
    """--accuracy N: on-device top-1 with its interval, agreement with the host's run of the same artifact on the
    same images, and the paired test; over loopback the runtime is the same, so they agree exactly."""
    run, inv = device_run["run"], device_run["inventory"]
    r = run_edgeq("bench", run, "--inventory", inv, "--device", "loop-rpi", "--device", "local-agent",
                  "--accuracy", "50", "--rounds", "1", "--runs", "5", cwd=device_run["root"])
    assert r.returncode == 0, r.stderr[-2000:]
    rep = _report(run)
    on_device = rep["accuracy_on_device"]
    for device in ("loop-rpi", "local-agent"):
        for name in ("fp32_tflite", "int8_tflite_ptq"):
            e = on_device[device][name]
            assert e["n"] == min(50, rep["dataset"]["n_eval"]) and e["sha256"] == _art(rep, name)["sha256"]
            assert e["top1"] == e["host_top1"] and e["top1_agreement_with_host"] == 1.0
            assert e["paired_vs_host"]["b"] == e["paired_vs_host"]["c"] == 0 and e["paired_vs_host"]["p"] == 1.0
            assert e["top1_ci95"][0] <= e["top1"] <= e["top1_ci95"][1] and e["max_abs_diff_vs_host"] < 1e-5
    assert "## Accuracy on the devices" in (run / "report.md").read_text()
    assert 'id="sec-accuracy-on-device"' in (run / "report.html").read_text()


def test_bundle_runs_on_the_device_from_its_own_files_and_clean_removes_the_uploads(device_run, tmp_path):
    run, inv, root = device_run["run"], device_run["inventory"], device_run["root"]
    r = run_edgeq("bundle", run, "--artifact", "int8_tflite_ptq", "--device", "loop-rpi", "--inventory", inv,
                  cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bundle on loop-rpi" in r.stdout and "top-1 agreement 100%" in r.stdout  # its --check ran there
    tarball = next((run / "bundles").glob("int8_tflite_ptq-*.tar.gz"))
    name = tarball.name[:-len(".tar.gz")]
    deployed = Path(sshd_workdir(inv, "loop-rpi")) / "bundles" / name
    assert {"int8_ptq.tflite", "agent.py", "classify.py", "labels.txt", "preprocess.json", "bundle.json",
            "README.md", "sample.npy", "sample_outputs.npy"} <= {p.name for p in deployed.iterdir()}
    # the unpacked tarball alone, outside the repo, in isolated mode: numpy + the interpreter + the bundle
    with tarfile.open(tarball) as tf:
        tf.extractall(tmp_path, filter="data")
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, np.load(tmp_path / name / "sample.npy")[:3])
    for argv in (["--check"], [str(pixels), "--top", "2"]):
        p = subprocess.run([sys.executable, "-I", str(tmp_path / name / "classify.py"), *argv], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        ans = json.loads(p.stdout)
        assert ans["runtime"].startswith(("ai-edge-litert", "tflite"))
    assert ans["predictions"][0][0]["label"] and len(ans["predictions"]) == 3 and len(ans["predictions"][0]) == 2
    info = json.loads((tmp_path / name / "bundle.json").read_text())
    assert info["manifest_entry"]["sha256"] == _art(_report(run), "int8_tflite_ptq")["sha256"]
    # clean: everything edgeq copied to the device goes, and says how much
    r = run_edgeq("clean", "--device", "loop-rpi", "--inventory", inv, cwd=root)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["removed_bytes"] > 0
    assert not Path(sshd_workdir(inv, "loop-rpi")).exists()


def test_bundle_of_an_unknown_artifact_is_one_line(device_run):
    r = run_edgeq("bundle", device_run["run"], "--artifact", "nope", cwd=device_run["root"])
    assert r.returncode == 2 and "no artifact named 'nope'; choose from" in r.stderr and "Traceback" not in r.stderr


def _check_device_queues(jobs: list[dict], devices: list[str], models: list[str]) -> None:
    """Every (device, model) job ran; one device's jobs never overlap; the devices' jobs overlap in time."""
    ran = {(j["device"], j["model"]) for j in jobs if j["status"] == "ok"}
    assert ran == {(d, m) for d in devices for m in models}, jobs
    spans = {d: sorted((j["start"], j["end"]) for j in jobs if j["device"] == d) for d in devices}
    for d, s in spans.items():
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(s, s[1:])), f"{d} ran two jobs at once: {s}"
    (a0, a1), (b0, b1) = (spans[devices[0]][0][0], spans[devices[0]][-1][1]), (spans[devices[1]][0][0], spans[devices[1]][-1][1])
    assert a0 < b1 and b0 < a1, f"devices did not run in parallel: {spans}"


def test_sweep_runs_every_model_then_every_artifact_on_every_device(tiny_project, sshd, tmp_path):
    inv = _inventory(tmp_path / "devices.yaml", [
        sshd.device("loop-a", threads=1),
        {"name": "local-b", "kind": "host", "python": sys.executable, "threads": 1}])
    bench = {"runs": 40, "warmup": 2, "threads": 1, "rounds": 3}
    cfgs = [make_config(tmp_path, tiny_project, filename=f"{n}.yaml", name=n, benchmark=bench)
            for n in ("tiny_a", "tiny_b")]
    r = run_edgeq("sweep", *cfgs, REPO_MODELS / "devices.example.yaml", "--inventory", inv, "--out", tmp_path / "sw",
                  "--jobs", "2", "--accuracy", "20", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    s = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [m["model"] for m in s["models"]] == ["tiny_a", "tiny_b"]  # the inventory example is not a model
    _check_device_queues(s["device_jobs"], ["loop-a", "local-b"], ["tiny_a", "tiny_b"])
    for m in s["models"]:
        rep = _report(tmp_path / "sw" / m["model"])
        for name in ("fp32_tflite", "int8_tflite_ptq"):
            for d in ("host", "loop-a", "local-b"):
                assert _art(rep, name)["latency_ms"][d]["median"] > 0, (m["model"], name, d)
            assert rep["accuracy_on_device"]["loop-a"][name]["n"] == 20
        assert set(m["ship"]) == {"host", "loop-a", "local-b"} and m["ship"]["loop-a"]["artifact"]
    md = (tmp_path / "sw" / "sweep.md").read_text()
    assert "| tiny_b | int8_tflite_ptq |" in md and "top-1 on device" in md and "## What to ship" in md
    # resumable: a second sweep reuses every run and every device figure
    r = run_edgeq("sweep", *cfgs, "--inventory", inv, "--out", tmp_path / "sw", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert {j["status"] for j in again["device_jobs"]} == {"reused"}


@pytest.mark.slow
def test_sweep_over_the_default_models_and_two_loopback_devices(sshd, tmp_path):
    """The issue's bar: both default models (TFLite PTQ, 300 eval images) on two loopback devices."""
    inv = _inventory(tmp_path / "devices.yaml", [sshd.device("loop-1", threads=1), sshd.device("loop-2", threads=1)])
    cfgs = [make_config(tmp_path, m, stages=["tflite_ptq"], filename=f"{m}.yaml", data={"eval_size": 300},
                        benchmark={"runs": 20, "warmup": 2, "threads": 1, "rounds": 3})
            for m in ("mobilenet_v2", "resnet50")]
    r = run_edgeq("sweep", *cfgs, "--inventory", inv, "--out", tmp_path / "sw", "--jobs", "2", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    s = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    _check_device_queues(s["device_jobs"], ["loop-1", "loop-2"], ["mobilenet_v2", "resnet50"])
    for m in s["models"]:
        rep = _report(tmp_path / "sw" / m["model"])
        rows = [(a["name"], d) for a in rep["artifacts"] if a["format"] == "tflite" for d in ("loop-1", "loop-2")]
        assert rows and all(_art(rep, n)["latency_ms"][d]["median"] > 0 for n, d in rows)


def sshd_workdir(inv: Path, name: str) -> str:
    return next(d["workdir"] for d in yaml.safe_load(inv.read_text())["devices"] if d["name"] == name)


def test_bench_exits_3_when_a_device_measured_nothing(device_run):
    r = run_edgeq("bench", device_run["run"], "--inventory", device_run["inventory"], "--device", "hung-pi",
                  cwd=device_run["root"])
    assert r.returncode == 3 and "nothing measured on hung-pi" in r.stderr and "Traceback" not in r.stderr


def test_bench_unknown_device_is_one_line_error(device_run):
    r = run_edgeq("bench", device_run["run"], "--inventory", device_run["inventory"], "--device", "nope")
    assert r.returncode == 2 and "no device named 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ faults, one device at a time
def _session(sshd, tmp_path, agent_source=None, **kw):
    from edgeq.targets.device import AGENT_SOURCE, DeviceSession
    from edgeq.targets.inventory import load_inventory
    from edgeq.targets.ssh import open_transport

    d = load_inventory(_inventory(tmp_path / "inv.yaml", [sshd.device("dev", **kw)])).get("dev")
    t = open_transport(d, log=lambda m: None)
    return DeviceSession(d, t, tmp_path / "run", lambda m: None, agent_source or AGENT_SOURCE)


def test_wrong_host_key_is_refused(sshd, tmp_path):
    from edgeq.core.errors import TargetError

    other = _keygen(tmp_path / "other_host").split()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    with pytest.raises(TargetError, match="does not match"):
        _session(sshd, tmp_path, known_hosts=str(kh))


def test_unknown_host_key_is_refused_unless_trust_on_first_use(sshd, tmp_path):
    from edgeq.core.errors import TargetError

    kh = tmp_path / "known_hosts"
    kh.write_text("")
    with pytest.raises(TargetError, match="not in .*known_hosts; refusing"):
        _session(sshd, tmp_path, known_hosts=str(kh))
    s = _session(sshd, tmp_path, known_hosts=str(kh), trust_on_first_use=True)
    s.transport.close()
    assert sshd.host_pub.split()[1] in kh.read_text()  # recorded: the next connection checks against it


def test_agent_crash_is_reported_with_its_stderr(sshd, tmp_path):
    from edgeq.core.errors import TargetError

    s = _session(sshd, tmp_path)
    s.hello()
    bad = tmp_path / "truncated.tflite"
    bad.write_bytes(b"TFL3" + b"\0" * 64)
    with pytest.raises(TargetError) as e:
        s.benchmark(s.upload(bad), runs=5, warmup=1, threads=1, inputs_remote=None)
    s.transport.close()
    msg = str(e.value)
    assert "not loadable" in msg and "exit 1" in msg and "stderr:" in msg and "AgentError" in msg


def test_agent_dying_without_an_answer_is_reported_with_its_stderr(sshd, tmp_path):
    from edgeq.core.errors import TargetError

    s = _session(sshd, tmp_path, python="/bin/sh")  # a wrong interpreter: the agent never gets to speak
    with pytest.raises(TargetError, match=r"agent crashed on dev \(exit 2\) without an answer; stderr: .*agent\.py"):
        s.hello()
    s.transport.close()


def test_missing_device_python_is_named(sshd, tmp_path):
    from edgeq.core.errors import RuntimeUnavailable

    s = _session(sshd, tmp_path, python="/nonexistent/python3")
    with pytest.raises(RuntimeUnavailable, match="/nonexistent/python3 not found on dev"):
        s.hello()
    s.transport.close()


def test_agent_of_another_protocol_version_is_refused(sshd, tmp_path):
    from edgeq.core.errors import TargetError
    from edgeq.targets.device import AGENT_SOURCE

    foreign = tmp_path / "agent.py"
    foreign.write_text(AGENT_SOURCE.read_text().replace("PROTOCOL = 1 ", "PROTOCOL = 999 ", 1))
    s = _session(sshd, tmp_path, agent_source=foreign)
    with pytest.raises(TargetError, match="speaks protocol 999 but this edgeq speaks 1"):
        s.hello()
    s.transport.close()


def test_remote_arguments_are_shell_quoted(sshd, tmp_path):
    s = _session(sshd, tmp_path)
    r = s.transport.run(["printf", "%s|", "a b", "$(touch pwned)", "'q'; ls"])
    s.transport.close()
    assert r.returncode == 0 and r.stdout == "a b|$(touch pwned)|'q'; ls|"


def _edgetpu_target(sshd, tmp_path, compiler: Path):
    from edgeq.targets.edgetpu import EdgeTpuTarget

    s = _session(sshd, tmp_path, kind="edgetpu", edgetpu_compiler=str(compiler))
    s.hello()
    return EdgeTpuTarget(s)


def test_edgetpu_check_passes_int8_and_refuses_fp32_before_any_tool_runs(sshd, tmp_path, device_run):
    from edgeq.core.artifacts import Manifest

    t = _edgetpu_target(sshd, tmp_path, tmp_path / "not-installed" / "edgetpu_compiler")
    arts = Manifest(device_run["run"]).artifacts
    fp32, int8 = t.check(arts["fp32_tflite"], device_run["run"]), t.check(arts["int8_tflite_ptq"], device_run["run"])
    t.session.transport.close()
    assert not fp32.ok and int8.ok, (fp32.problems, int8.problems)


def test_edgetpu_device_without_compiler_here_names_it_and_how_to_install(sshd, tmp_path, device_run):
    from edgeq.core.artifacts import Manifest
    from edgeq.core.errors import RuntimeUnavailable

    missing = tmp_path / "not-installed" / "edgetpu_compiler"
    t = _edgetpu_target(sshd, tmp_path, missing)
    with pytest.raises(RuntimeUnavailable, match=f"{missing} not found on this machine .*apt-get install edgetpu-compiler"):
        t.prepare(Manifest(device_run["run"]).artifacts["int8_tflite_ptq"], device_run["run"])
    t.session.transport.close()


def test_edgetpu_device_without_libedgetpu_says_the_delegate_is_missing(sshd, tmp_path, device_run):
    """Compiled here (recorded edgetpu_compiler output), copied over SSH, then the device lacks the runtime."""
    from edgeq.core.artifacts import Manifest
    from edgeq.core.errors import RuntimeUnavailable

    data = Path(__file__).resolve().parents[1] / "data"
    compiler = fake_edgetpu_compiler(tmp_path / "bin", (data / "edgetpu_compiler_all_mapped.log").read_text())
    run = tmp_path / "run_copy"  # prepare writes the compiled model into the run directory
    shutil.copytree(device_run["run"] / "artifacts", run / "artifacts")
    t = _edgetpu_target(sshd, tmp_path, compiler)
    dep = t.prepare(Manifest(device_run["run"]).artifacts["int8_tflite_ptq"], run)
    assert Path(dep.details["remote_path"]).read_bytes() == dep.path.read_bytes()  # loopback: the device's disk
    with pytest.raises(RuntimeUnavailable, match="delegate libedgetpu.so.1 could not be loaded on .*libedgetpu1-std"):
        t.benchmark(dep, 5, 1, 1)
    t.session.transport.close()


def test_the_agent_run_on_the_device_is_edgeqs_agent_byte_for_byte(sshd, tmp_path):
    from edgeq.targets.device import AGENT_SOURCE

    s = _session(sshd, tmp_path)
    s.hello()
    remote = s.agent_path()
    s.transport.close()
    assert Path(remote).is_absolute() and Path(remote).read_bytes() == AGENT_SOURCE.read_bytes()


def test_jetson_device_without_trtexec_says_so(sshd, tmp_path):
    from edgeq.core.errors import RuntimeUnavailable
    from edgeq.targets.jetson import JetsonTarget

    s = _session(sshd, tmp_path, kind="jetson", trtexec="trtexec")
    with pytest.raises(RuntimeUnavailable, match="trtexec not found on dev .*install"):
        JetsonTarget(s).trtexec()
    s.transport.close()


def test_agent_overhead_script_prints_both_medians(device_run):
    """benchmarks/agent_overhead.py: in-process vs through-the-agent medians (the 10 % bar is for real models)."""
    p = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "benchmarks" / "agent_overhead.py"),
                        str(device_run["run"]), "--inventory", str(device_run["inventory"]), "--device", "loop-rpi",
                        "--rounds", "2", "--runs", "30", "--tolerance", "10"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "in-process ms" in p.stdout and "agent ms" in p.stdout and "int8_tflite_ptq" in p.stdout


@pytest.mark.slow
def test_default_mobilenet_fp32_and_int8_in_one_bench_over_loopback_ssh(sshd, tmp_path):
    """The issue's bar: the committed MobileNetV2's FP32 and INT8 TFLite through one `edgeq bench`."""
    cfg = make_config(tmp_path, "mobilenet_v2", stages=["tflite_ptq"], data={"eval_size": 500})
    r = run_edgeq("run", cfg, "--out", tmp_path / "run", "--no-benchmark", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    inv = _inventory(tmp_path / "devices.yaml", [sshd.device("loop-rpi", threads=1)])
    r = run_edgeq("bench", tmp_path / "run", "--inventory", inv, "--device", "loop-rpi", "--accuracy", "500",
                  timeout=900)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    rep = _report(tmp_path / "run")
    # on-device accuracy of 500 eval images (3 chunks) equals the host's LiteRT run of the same images
    for name in ("fp32_tflite", "int8_tflite_ptq"):
        e = rep["accuracy_on_device"]["loop-rpi"][name]
        assert e["n"] == 500 and e["top1"] == e["host_top1"] and e["top1_agreement_with_host"] == 1.0
        assert e["paired_vs_host"]["n"] == 500 and e["paired_vs_host"]["p"] == 1.0
    for name in ("fp32_tflite", "int8_tflite_ptq"):
        s = _art(rep, name)["latency_ms"]["loop-rpi"]
        assert s["median"] > 0 and s["runs"] > 0, s
    assert "loop-rpi" in r.stdout  # the devices table
    assert "loop-rpi" in rep["devices"]  # the devices section: identity the agent reported


def test_bench_runs_openvino_irs_through_the_agent_over_ssh_with_host_accuracy(tiny_project, sshd, tmp_path):
    """An OpenVINO IR (a directory artifact) is copied whole to a loopback rpi, timed by the agent's openvino runtime
    at precision f32, and its on-device top-1 equals the host's on the same images."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgeq[openvino]')")
    pytest.importorskip("nncf", reason="nncf is not installed (pip install 'edgeq[openvino]')")
    inv = _inventory(tmp_path / "devices.yaml", [sshd.device("ov-rpi", threads=1)])
    cfg = make_config(tmp_path, tiny_project, filename="tiny_ov.yaml",
                      stages={"tflite_ptq": {"representative_images": 40},
                              "nncf_ptq": {"routes": ["openvino"], "calibration_images": 40}})
    r = run_edgeq("run", cfg, "--out", tmp_path / "run", "--no-benchmark", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_edgeq("bench", tmp_path / "run", "--inventory", inv, "--device", "ov-rpi", "--accuracy", "40",
                  "--rounds", "2", "--runs", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = _report(tmp_path / "run")
    for name in ("fp32_openvino", "int8_openvino_nncf"):
        s = _art(rep, name)["latency_ms"]["ov-rpi"]
        assert s["median"] > 0 and s["runtime"].startswith("openvino") and "precision=f32" in s["runtime"]
        e = rep["accuracy_on_device"]["ov-rpi"][name]
        assert e["top1"] == e["host_top1"] and e["top1_agreement_with_host"] == 1.0 and e["n"] == 40
        assert e["paired_vs_host"]["b"] == e["paired_vs_host"]["c"] == 0
    copied = [p for p in Path(sshd_workdir(inv, "ov-rpi")).rglob("model.bin")]
    assert len(copied) == 2 and all((p.parent / "model.xml").is_file() for p in copied)
