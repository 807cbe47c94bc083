"""The arm64 runtime image as an SSH device: `edgeq bench --device`, `--accuracy`, `edgeq bundle --device` and
`edgeq sweep` against edgeq/runtime-ssh:arm64 under QEMU (the `arm64_device` fixture of tests/conftest.py).

The agent runs on the real aarch64 builds of numpy and LiteRT (XNNPACK's NEON kernels, QEMU_CPU=cortex-a72), so
outputs and accuracy are real; the CPU is emulated, so its timings are not speed figures, and the reports say so.
One container for the module; each test's wall time is printed (`[arm64] ...`) beside its figures.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ARM64_CPU_LIST, ARM64_RUNTIME, DOCKER, QEMU_CPU, make_config, run_edgeq, write_inventory
from conftest import say as _say
from edgeq.targets.device import AGENT_SOURCE

pytestmark = [pytest.mark.docker, pytest.mark.ssh]
EVAL_IMAGES = 500


def say(request, msg: str) -> None:
    _say(request, msg, "arm64")


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def _art(rep: dict, name: str) -> dict:
    return next(e for e in rep["artifacts"] if e["name"] == name)


@pytest.fixture(scope="module")
def mobilenet_run(tmp_path_factory) -> Path:
    """The smallest run that makes the default INT8 model: the committed MobileNetV2, `tflite_ptq` only, 500 eval
    images of the shipped Fashion-MNIST sample, no host benchmark."""
    root = tmp_path_factory.mktemp("arm64_mnv2")
    cfg = make_config(root, "mobilenet_v2", stages=["tflite_ptq"], data={"eval_size": EVAL_IMAGES})
    r = run_edgeq("run", cfg, "--out", root / "run", "--no-benchmark", cwd=root, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def benched(request, arm64_device, arm64_container, mobilenet_run) -> dict:
    """One `edgeq bench --device <the container> --accuracy 500`: interleaved latency, then on-device accuracy."""
    inv, name = arm64_device
    say(request, f"container: image builds {arm64_container.build_seconds} s, sshd up in "
                 f"{arm64_container.start_seconds} s (QEMU, CPUs {ARM64_CPU_LIST}, QEMU_CPU={QEMU_CPU})")
    t = time.monotonic()
    r = run_edgeq("bench", mobilenet_run, "--inventory", inv, "--device", name, "--runs", "5", "--warmup", "2",
                  "--rounds", "3", "--accuracy", str(EVAL_IMAGES), cwd=mobilenet_run.parent, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    seconds = time.monotonic() - t
    say(request, f"edgeq bench --accuracy {EVAL_IMAGES} on {name}: {seconds:.0f} s")
    return {"run": mobilenet_run, "name": name, "stdout": r.stdout, "report": _report(mobilenet_run)}


def test_bench_on_the_arm64_container_reports_latency_marked_emulated(request, benched):
    rep, name = benched["report"], benched["name"]
    dev = rep["devices"][name]
    assert dev["status"] == "ok" and dev["kind"] == "rpi" and dev["identity"]["machine"] == "aarch64"
    ident = dev["identity"]
    assert ident["cpu_list"] == {"possible": ARM64_CPU_LIST, "present": ARM64_CPU_LIST, "online": ARM64_CPU_LIST}
    assert "QEMU" in ident["emulated"] and f"QEMU_CPU={QEMU_CPU}" in ident["emulated"]
    for art in ("fp32_tflite", "int8_tflite_ptq"):
        s = _art(rep, art)["latency_ms"][name]
        assert s["median"] > 0 and s["rounds"] == 3 and s["runs"] == 15 and s["threads"] == 2
        assert s["median_ci95"][0] <= s["median"] <= s["median_ci95"][1]
        assert s["emulated"] == ident["emulated"] and "EMULATED CPU" in s["device"]
        assert s["runtime"].startswith("ai-edge-litert") and s["runtime"].endswith("(XNNPACK)"), s["runtime"]
        say(request, f"{art} on {name} (emulated, not a speed figure): median {s['median']:.4g} ms "
                     f"[{s['median_ci95'][0]:.4g}, {s['median_ci95'][1]:.4g}], n = {s['runs']} in {s['rounds']} rounds")
    md = (benched["run"] / "report.md").read_text()
    assert f"**{name}: emulated CPU, its timings are meaningless as speed figures**" in md
    assert "(XNNPACK) (EMULATED CPU) |" in md and f"EMULATED CPU on {name}" in rep["ship"][name]["why"]
    assert f"{name}: EMULATED CPU, timings meaningless as speed figures" in benched["stdout"]  # under the table


def test_bench_accuracy_on_the_arm64_build_agrees_with_the_host(request, benched):
    """--accuracy 500: the default INT8 model's top-1 through the aarch64 LiteRT (XNNPACK NEON kernels under QEMU)
    with its interval, and its agreement with this host's x86 LiteRT run of the same images."""
    rep, name = benched["report"], benched["name"]
    for art in ("int8_tflite_ptq", "fp32_tflite"):
        e = rep["accuracy_on_device"][name][art]
        assert e["n"] == EVAL_IMAGES and e["sha256"] == _art(rep, art)["sha256"]
        assert e["top1_ci95"][0] <= e["top1"] <= e["top1_ci95"][1]
        assert e["host_top1"] == _art(rep, art)["accuracy"]["top1"]
        # different kernels (NEON vs x86 AVX): outputs may differ by an LSB, decisions barely ever
        assert e["top1_agreement_with_host"] >= 0.99 and e["paired_vs_host"]["n"] == EVAL_IMAGES
        assert e["paired_vs_host"]["p"] > 0.05, e["paired_vs_host"]
        say(request, f"{art} on {name}: top-1 {e['top1']:.4f} [{e['top1_ci95'][0]:.4f}, {e['top1_ci95'][1]:.4f}] "
                     f"vs host {e['host_top1']:.4f}, n = {e['n']}; top-1 agreement {e['top1_agreement_with_host']:.4f}, "
                     f"discordant {e['paired_vs_host']['b']}/{e['paired_vs_host']['c']} (McNemar p = "
                     f"{e['paired_vs_host']['p']:.3g}), max |output diff| {e['max_abs_diff_vs_host']:.3g}")
    assert "## Accuracy on the devices" in (benched["run"] / "report.md").read_text()


def test_bundle_uploads_unpacks_and_checks_on_the_arm64_container(request, benched, arm64_device, arm64_container):
    inv, name = arm64_device
    t = time.monotonic()
    r = run_edgeq("bundle", benched["run"], "--artifact", "int8_tflite_ptq", "--device", name, "--inventory", inv,
                  cwd=benched["run"].parent, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    say(request, f"edgeq bundle --device {name}: {time.monotonic() - t:.0f} s")
    assert f"bundle on {name}" in r.stdout and "top-1 agreement 100%" in r.stdout  # classify.py --check ran there
    tarball = next((benched["run"] / "bundles").glob("int8_tflite_ptq-*.tar.gz"))
    bundle = tarball.name[:-len(".tar.gz")]
    listed = arm64_container.exec("ls", f"/root/edgeq/bundles/{bundle}").split()
    assert {"int8_ptq.tflite", "agent.py", "classify.py", "labels.txt", "preprocess.json", "bundle.json",
            "sample.npy", "sample_outputs.npy"} <= set(listed)


def test_sweep_with_the_arm64_container_as_one_device(request, tiny_project, arm64_container, tmp_path):
    inv = write_inventory(tmp_path / "devices.yaml", [arm64_container.device("arm64-sweep")])
    cfg = make_config(tmp_path, tiny_project, filename="tiny_arm.yaml", name="tiny_arm",
                      benchmark={"runs": 10, "warmup": 2, "threads": 1, "rounds": 2})
    t = time.monotonic()
    r = run_edgeq("sweep", cfg, "--inventory", inv, "--out", tmp_path / "sw", "--accuracy", "20", timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    say(request, f"edgeq sweep (tiny model, 1 arm64 device, --accuracy 20): {time.monotonic() - t:.0f} s")
    s = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [(j["device"], j["model"], j["status"]) for j in s["device_jobs"]] == [("arm64-sweep", "tiny_arm", "ok")]
    rep = _report(tmp_path / "sw" / "tiny_arm")
    for art in ("fp32_tflite", "int8_tflite_ptq"):
        s_ = _art(rep, art)["latency_ms"]["arm64-sweep"]
        assert s_["median"] > 0 and s_["emulated"]
        assert rep["accuracy_on_device"]["arm64-sweep"][art]["n"] == 20


def test_runtime_says_xnnpack_only_when_it_ran(arm64_container, mobilenet_run):
    """The `(XNNPACK)` the bench asserts is evidence: with an empty CPU list (`--tmpfs`) LiteRT silently runs its
    reference kernels instead, and the agent's runtime then says plain `ai-edge-litert`."""
    p = subprocess.run([DOCKER, "run", "--rm", "--platform", "linux/arm64", "-e", f"QEMU_CPU={QEMU_CPU}",
                        "--tmpfs", "/sys/devices/system/cpu", "-v", f"{AGENT_SOURCE}:/agent.py:ro",
                        "-v", f"{mobilenet_run / 'artifacts'}:/m:ro", "--entrypoint", "/opt/venv/bin/python3",
                        ARM64_RUNTIME, "/agent.py", "--model", "/m/int8_ptq.tflite", "--runs", "2", "--warmup", "1"],
                       capture_output=True, text=True, timeout=300)
    ans = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert p.returncode == 0 and ans["runtime"].startswith("ai-edge-litert"), p.stderr[-2000:]
    assert "XNNPACK" not in ans["runtime"], ans["runtime"]
    assert ans["device"]["emulated"] and ans["device"]["cpu_list"]["online"] is None
