"""`edgeq bench --device NAME --bisect` through a real OpenSSH server on 127.0.0.1 (tests/targets/test_ssh.py's
`sshd`): the agent keeps every tensor on the "device", the tensors come back over SFTP, and the comparison with
the host's run names where they part (or says they agree tensor for tensor)."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml

from conftest import REPO, run_edgeq
from test_ssh import _inventory, pytestmark, sshd  # noqa: F401  (the module's fixture and skip marks)


@pytest.fixture(scope="module")
def bisected(tiny_run, sshd, tmp_path_factory):  # noqa: F811 - sshd is the imported fixture
    """A copy of the tiny run bisected on two loopback devices: one as the host runs (default kernels, XNNPACK),
    one set to LiteRT's reference kernels."""
    root = tmp_path_factory.mktemp("bisect")
    run = root / "run"
    shutil.copytree(tiny_run[0], run)
    inv = _inventory(root / "devices.yaml", [sshd.device("loop-same", threads=1),
                                             sshd.device("loop-ref", threads=1, tflite_kernels="reference")])
    t = time.monotonic()
    r = run_edgeq("bench", run, "--inventory", inv, "--device", "loop-same", "--device", "loop-ref", "--bisect",
                  "--images", "3", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    return {"run": run, "root": root, "stdout": r.stdout, "seconds": time.monotonic() - t,
            "same": json.loads((run / "bisect" / "loop-same" / "int8_tflite_ptq.json").read_text()),
            "ref": json.loads((run / "bisect" / "loop-ref" / "int8_tflite_ptq.json").read_text())}


def test_a_device_running_the_hosts_kernels_agrees_tensor_for_tensor(bisected):
    b = bisected["same"]
    assert b["first"] is None and b["ops_differing"] == 0 and b["images"] == 3
    assert b["verdict"].startswith("host and loop-same agree tensor for tensor")
    assert b["host"]["kernels_used"] == b["device_side"]["kernels_used"] and "XNNPACK" in b["host"]["kernels_used"]
    assert "host and loop-same agree tensor for tensor" in bisected["stdout"]
    # each side also checked that keeping every tensor left the model output as a plain run computes it
    assert b["host"]["output_vs_plain_run"] == 0 and b["device_side"]["output_vs_plain_run"] == 0
    assert "equals that of a plain run" in bisected["stdout"]


def test_a_device_on_reference_kernels_names_the_first_diverging_op_in_lsb(bisected):
    b = bisected["ref"]
    first = b["first"]
    assert first is not None and first["max_lsb"] >= 1 and first["differing"] > 0
    assert first["op"] in {o["op"] for o in b["ops"]} and first["tensor"]
    assert (first["host_kernel"], first["device_kernel"]) == ("XNNPACK", "reference")
    assert all(o["differing"] == 0 for o in b["ops"][:b["ops"].index(first)])  # nothing differs before it
    assert b["device_side"]["kernels_used"] == {"reference": len(b["ops"]) - 1}  # all but the input pseudo-op
    assert f"op {first['index']} {first['op']}" in b["verdict"] and f"{first['max_lsb']:g} LSB" in b["verdict"]
    md = (bisected["run"] / "bisect" / "loop-ref" / "int8_tflite_ptq.md").read_text()
    assert "| op | type |" in md and "XNNPACK / reference" in md
    assert "how it propagates" in bisected["stdout"]


def test_the_devices_tensors_came_back_over_ssh_as_a_plain_npz(bisected, sshd):  # noqa: F811
    import numpy as np

    local = bisected["run"] / "bisect" / "loop-ref" / "int8_tflite_ptq.loop-ref.tensors.npz"
    with np.load(local, allow_pickle=False) as z:
        assert len(z.files) == len(bisected["ref"]["ops"])
    remote = list((sshd.root / "device-home" / "loop-ref").rglob("tensors-*.npz"))
    assert remote, "the agent wrote the tensors on the device side"


def test_bisect_of_a_non_tflite_artifact_is_one_line(bisected):
    inv = bisected["root"] / "devices.yaml"
    r = run_edgeq("bench", bisected["run"], "--inventory", inv, "--device", "loop-same", "--bisect",
                  "--artifact", "fp32_keras")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--artifact fp32_keras: a keras artifact" in r.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_bisect_against_the_arm64_runtime_image_with_xnnpack_off(request, tmp_path):
    """The arm64 runtime image under QEMU as an `rpi` device (tests/conftest.py's `arm64_device`) on the default
    MobileNetV2 INT8: XNNPACK off there (aarch64 LiteRT's builtin kernels), the bisect names where it parts from
    this host's XNNPACK; XNNPACK on, they agree tensor for tensor."""
    try:
        inv, name = request.getfixturevalue("arm64_device")
    except pytest.FixtureLookupError:
        pytest.skip("the arm64_device fixture (tests/conftest.py) is not in this branch")
    devices = yaml.safe_load(inv.read_text())["devices"]
    for d in devices:
        if d["name"] == name:
            d["tflite_kernels"] = "builtin"
    inv_off = _inventory(tmp_path / "devices.yaml", devices)
    run = tmp_path / "run"
    r = run_edgeq("run", REPO / "models" / "mobilenet_v2.yaml", "--stages", "tflite_ptq", "--no-benchmark", "--out", run)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_edgeq("bench", run, "--inventory", inv_off, "--device", name, "--bisect", "--images", "2", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    b = json.loads((run / "bisect" / name / "int8_tflite_ptq.json").read_text())
    assert b["device_side"]["kernels_used"].keys() == {"builtin"}
    assert b["first"] is not None and b["first"]["max_lsb"] >= 1, b["verdict"]
    assert f"op {b['first']['index']} {b['first']['op']}" in r.stdout
    # the same device with XNNPACK on (its default): aarch64 XNNPACK matches this host's (docs/devices.md)
    r = run_edgeq("bench", run, "--inventory", inv, "--device", name, "--bisect", "--images", "2", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    b = json.loads((run / "bisect" / name / "int8_tflite_ptq.json").read_text())
    assert "XNNPACK" in b["device_side"]["kernels_used"]
    assert b["first"] is None, b["verdict"]
    assert "agree tensor for tensor" in r.stdout



def test_bisect_options_without_bisect_or_zero_images_are_one_line_errors(bisected):
    inv = bisected["root"] / "devices.yaml"
    r = run_edgeq("bench", bisected["run"], "--inventory", inv, "--device", "loop-same", "--bisect", "--images", "0")
    assert r.returncode == 2 and "--images 0: give at least 1" in r.stderr and "Traceback" not in r.stderr
    r = run_edgeq("bench", bisected["run"], "--inventory", inv, "--device", "loop-same", "--images", "3")
    assert r.returncode == 2 and "go with --bisect" in r.stderr
