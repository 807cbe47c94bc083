"""The Docker images, built and run for real (marker `docker`; `pytest -m docker` runs exactly these).

No container registry is reachable where these run, so the base images are made the way a
locked-down user would: debootstrap a Debian bookworm rootfs (amd64, and arm64 under QEMU; cached),
make an image of it (docker/make-base.sh), pass it as BASE_IMAGE. pip inside the builds goes through the machine's TLS-intercepting proxy,
so the host's CA bundle is passed with the images' extra-CA-certificates option. The fixtures run
.ci/docker-setup (installs docker.io, qemu-user-static, binfmt-support, debootstrap; starts dockerd;
registers binfmt_misc), which needs root.

Figures (build times, image sizes, the arm64-vs-x86 output difference) are printed to the terminal.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, say

pytestmark = pytest.mark.docker

DOCKER = "/usr/bin/docker"  # Debian's client: BuildKit built in (another `docker` on PATH may lack buildx)
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIPELINE = "edgeq/pipeline:amd64"
RUNTIME = "edgeq/runtime:arm64"
RUNTIME_OPENVINO = "edgeq/runtime-openvino:arm64"  # the runtime image built with OPENVINO_SPEC (opt-in)
JETSON_STANDIN = "edgeq/jetson:standin-amd64"
RUNTIME_MAX_MB = 500
ARM_EVAL_IMAGES = 200
QEMU_CPU = "cortex-a72"  # Raspberry Pi 4


def sh(cmd: list[str], what: str, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run cmd; on failure, fail the test naming `what` with the command's last output lines."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"{what}: timed out after {timeout} s: {shlex.join(cmd)}\n{out[-3000:]}")
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).splitlines()[-40:])
        pytest.fail(f"{what} failed (exit {p.returncode}): {shlex.join(cmd)}\n{tail}")
    return p


def image_mb(tag: str) -> float:
    out = subprocess.run([DOCKER, "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True)
    return int(out.stdout.strip()) / 1e6


def build(request, image: str, tag: str, base: str, platform: str | None = None, build_args: tuple[str, ...] = ()
          ) -> None:
    cmd = [str(REPO / "docker" / "build.sh"), "--base-image", base, "--tag", tag,
           *(a for kv in build_args for a in ("--build-arg", kv)), image]
    if platform:
        cmd[1:1] = ["--platform", platform]
    if HOST_CA_BUNDLE.is_file():  # the corporate-proxy option: this machine's proxy re-signs TLS
        cmd[1:1] = ["--ca-certs", str(HOST_CA_BUNDLE)]
    t = time.monotonic()
    sh(cmd, f"building the {image} image", timeout=2400, env={"DOCKER": DOCKER})
    say(request, f"{image} image {tag}: built in {time.monotonic() - t:.0f} s "
                 "(seconds when docker's layer cache has it), "
                 f"{image_mb(tag):.0f} MB")


# ----------------------------------------------------------------------------- infrastructure
@pytest.fixture(scope="session")
def docker_host() -> str:
    """dockerd running and qemu-aarch64 registered, via .ci/docker-setup (idempotent)."""
    if os.geteuid() != 0:
        pytest.fail("the docker tests install packages, start dockerd and register binfmt_misc: run them as root")
    sh([str(REPO / ".ci" / "docker-setup")], ".ci/docker-setup (docker.io, qemu-user-static, dockerd, binfmt)",
       timeout=900)
    return DOCKER


def _base(request, arch: str) -> str:
    tag = f"edgeq/base:bookworm-{arch}"
    t = time.monotonic()
    sh([str(REPO / "docker" / "make-base.sh"), arch, tag, BASE_PACKAGES],
       f"making the Debian bookworm {arch} base image (debootstrap)", timeout=1800, env={"DOCKER": DOCKER})
    say(request, f"base {tag}: {time.monotonic() - t:.0f} s (debootstrap, or seconds from the cached rootfs), "
                 f"{image_mb(tag):.0f} MB")
    return tag


@pytest.fixture(scope="session")
def amd64_base(request, docker_host) -> str:
    return _base(request, "amd64")


@pytest.fixture(scope="session")
def arm64_base(request, docker_host) -> str:
    return _base(request, "arm64")


@pytest.fixture(scope="session")
def pipeline_image(request, amd64_base) -> str:
    build(request, "pipeline", PIPELINE, amd64_base)
    return PIPELINE


@pytest.fixture(scope="session")
def runtime_image(request, arm64_base) -> str:
    build(request, "runtime", RUNTIME, arm64_base)
    return RUNTIME


def docker_run(args: list[str], what: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return sh([DOCKER, "run", "--rm", *args], what, timeout)


@pytest.fixture(scope="session")
def emulated_cpu_sysfs(tmp_path_factory) -> Path:
    """A stand-in for /sys/devices/system/cpu in arm64 containers under QEMU.

    LiteRT's cpuinfo segfaults (or hangs) reading the host's real CPU topology under QEMU. An empty
    tmpfs there avoids that, but then cpuinfo fails, XNNPACK is silently not used, and the plain
    builtin kernels run instead: they differ from x86's XNNPACK by up to ~25 LSB on MobileNetV2, so
    that run says nothing about the kernels a Pi uses. With this small CPU list plus
    QEMU_CPU=cortex-a72 (a Raspberry Pi 4's core), XNNPACK runs with the NEON kernels a Pi 4 gets.
    (QEMU's default `max` CPU makes XNNPACK pick kernels that QEMU 7.2 mis-emulates: garbage outputs.)
    """
    d = tmp_path_factory.mktemp("cpu-sysfs")
    cpus = f"0-{max(1, os.cpu_count() or 1) - 1}"
    for name in ("possible", "present", "online"):
        (d / name).write_text(cpus + "\n")
    return d


def run_arm64(image: str, args: list[str], what: str, cpu_sysfs: Path, mounts: list[str] = (),
              timeout: int = 900) -> subprocess.CompletedProcess:
    return docker_run(["--platform", "linux/arm64", "-e", f"QEMU_CPU={QEMU_CPU}",
                       "-v", f"{cpu_sysfs}:/sys/devices/system/cpu:ro", *mounts, image, *args], what, timeout)


def agent_json(p: subprocess.CompletedProcess) -> dict:
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"the agent printed no JSON object:\n{p.stdout}\n{p.stderr[-2000:]}"
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- pipeline (amd64)
def edgeq_in_pipeline_image(image: str, args: list[str], out: Path, what: str, mounts: list[str] = (),
                            workdir: str | None = None) -> Path:
    """`edgeq ARGS` in the image as this user, the run directory on a volume at /out; the host path of /out."""
    out.mkdir(parents=True, exist_ok=True)
    docker_run(["--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp", "-v", f"{out}:/out", *mounts,
                *(["-w", workdir] if workdir else []), image, "edgeq", *args], what, timeout=1800)
    return out


def int8_tflite_of(run_dir: Path) -> Path:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    int8 = [a for a in manifest["artifacts"] if a["format"] == "tflite" and a["precision"] == "int8"]
    assert int8, f"no INT8 .tflite in {run_dir / 'manifest.json'}: {[a['name'] for a in manifest['artifacts']]}"
    path = run_dir / int8[0]["path"]
    assert path.stat().st_size == int8[0]["size_bytes"], f"{path}: size differs from the manifest's"
    return path


def test_pipeline_image_runs_edgeq_with_the_run_dir_on_a_mounted_volume(request, pipeline_image, tiny_project,
                                                                         tmp_path):
    out = edgeq_in_pipeline_image(pipeline_image, ["run", "tiny.yaml", "--out", "/out/tiny"], tmp_path / "out",
                                  "edgeq run on the tiny model inside the pipeline image",
                                  mounts=["-v", f"{tiny_project}:/project:ro"], workdir="/project")
    int8_tflite_of(out / "tiny")
    report = json.loads((out / "tiny" / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}  # the run inside the image evaluated and paired its INT8 model
    acc = arts["int8_tflite_ptq"]["accuracy"]
    assert acc["n"] == report["dataset"]["n_eval"] > 0 and acc["ci95"][0] <= acc["top1"] <= acc["ci95"][1]
    assert set(arts["int8_tflite_ptq"]["vs_fp32"]["mcnemar"]) == {"b", "c", "p"}
    say(request, f"pipeline image: `edgeq run tiny.yaml` wrote {sorted(p.name for p in (out / 'tiny').iterdir())} "
                 "to the mounted volume")


@pytest.fixture(scope="session")
def mobilenet_run(pipeline_image, tmp_path_factory) -> Path:
    """`edgeq run models/mobilenet_v2.yaml` (PTQ, no benchmark) inside the pipeline image, as a user types it."""
    if not (REPO / "models" / "mobilenet_v2.keras").exists():
        pytest.fail("models/mobilenet_v2.keras is missing (the image ships models/): "
                    "train it with `edgeq train-reference mobilenet_v2`")
    out = edgeq_in_pipeline_image(pipeline_image, ["run", "models/mobilenet_v2.yaml", "--stages", "tflite_ptq",
                                                   "--no-benchmark", "--out", "/out/mnv2"],
                                  tmp_path_factory.mktemp("mnv2"), "edgeq run models/mobilenet_v2.yaml in the image")
    return out / "mnv2"


def test_pipeline_image_runs_the_default_mobilenet_config(request, mobilenet_run):
    model = int8_tflite_of(mobilenet_run)
    report = json.loads((mobilenet_run / "report.json").read_text())
    row = next(a for a in report["artifacts"] if a["path"] == str(model.relative_to(mobilenet_run)))
    assert row["accuracy"]["n"] > 0, row["accuracy"]
    say(request, f"pipeline image: default MobileNetV2 INT8 {model.stat().st_size / 1e6:.2f} MB, top-1 "
                 f"{row['accuracy']['top1']:.4f} on {row['accuracy']['dataset']}")


# ----------------------------------------------------------------------------- runtime (arm64)
def eval_inputs(n: int) -> np.ndarray:
    """The first n evaluation images of the default MobileNetV2 config, preprocessed as edgeq does."""
    from edgeq.core.config import load_config
    from edgeq.run.inputs import load_splits, preprocess_of

    cfg = load_config(REPO / "models" / "mobilenet_v2.yaml")
    pre = preprocess_of(cfg)
    splits = load_splits(cfg, pre)
    assert len(splits.eval) >= n, f"only {len(splits.eval)} evaluation images, {n} wanted"
    return np.ascontiguousarray(pre(splits.eval.images[:n]), dtype=np.float32)


def output_scale(model: Path) -> float:
    from ai_edge_litert.interpreter import Interpreter

    scale, _ = Interpreter(model_path=str(model)).get_output_details()[0]["quantization"]
    assert scale > 0, f"{model}: output is not quantised"
    return float(scale)


def test_runtime_image_is_slim_and_has_litert_without_tensorflow(request, runtime_image, emulated_cpu_sysfs):
    info = agent_json(run_arm64(runtime_image, [], "the runtime image's default command (agent --info)",
                                emulated_cpu_sysfs))
    assert info["ok"], info
    assert info["device"]["machine"] == "aarch64", info["device"]
    assert "litert" in info["runtimes"] and "tf" not in info["runtimes"], info["runtimes"]
    mb = image_mb(runtime_image)
    say(request, f"runtime image {runtime_image}: {mb:.0f} MB (bar {RUNTIME_MAX_MB} MB), runtimes {info['runtimes']}")
    assert mb <= RUNTIME_MAX_MB, f"{runtime_image} is {mb:.0f} MB, over the {RUNTIME_MAX_MB} MB bar"


def test_runtime_image_int8_outputs_on_arm64_match_x86(request, runtime_image, emulated_cpu_sysfs, mobilenet_run,
                                                      tmp_path):
    """The INT8 MobileNetV2 made in the pipeline image runs in the arm64 image; outputs equal x86's."""
    work = tmp_path / "work"
    work.mkdir()
    model = work / "model.tflite"
    model.write_bytes(int8_tflite_of(mobilenet_run).read_bytes())
    np.save(work / "inputs.npy", eval_inputs(ARM_EVAL_IMAGES))
    common = ["--runs", "5", "--warmup", "1", "--threads", "1"]

    # x86: the same agent with this machine's LiteRT.
    host = subprocess.run([sys.executable, str(REPO / "edgeq" / "ondevice" / "agent.py"), "--model", str(model),
                           "--inputs", str(work / "inputs.npy"), "--outputs-out", str(work / "x86.npy"), *common],
                          capture_output=True, text=True, timeout=600)
    assert host.returncode == 0, f"agent on x86 failed:\n{host.stdout}\n{host.stderr[-2000:]}"
    x86 = agent_json(host)

    t = time.monotonic()
    arm = agent_json(run_arm64(runtime_image, ["--model", "/work/model.tflite", "--inputs", "/work/inputs.npy",
                                               "--outputs-out", "/work/arm64.npy", *common],
                               "the agent in the arm64 runtime image", emulated_cpu_sysfs,
                               mounts=["-v", f"{work}:/work"]))
    arm_s = time.monotonic() - t
    assert arm["ok"] and arm["device"]["machine"] == "aarch64", arm
    assert arm["runtime"].startswith("ai-edge-litert"), arm["runtime"]

    a, b = np.load(work / "arm64.npy"), np.load(work / "x86.npy")
    assert a.shape == b.shape and a.shape[0] == ARM_EVAL_IMAGES, (a.shape, b.shape)
    lsb = np.rint(np.abs(a - b) / output_scale(model)).astype(int)
    exact = float((lsb == 0).mean())
    top1 = float((a.argmax(1) == b.argmax(1)).mean())
    say(request, f"arm64 (QEMU {QEMU_CPU}, {arm['runtime']}) vs x86 ({x86['runtime']}), INT8 MobileNetV2, "
                 f"{len(a)} eval images x {a.shape[1]} outputs: max |diff| = {lsb.max()} LSB, "
                 f"{exact:.2%} of outputs bit-exact, top-1 agreement {top1:.2%} (arm64 run {arm_s:.0f} s)")
    assert lsb.max() <= 1, f"arm64 and x86 INT8 outputs differ by up to {lsb.max()} LSB (bar: 1)"


def test_bundle_runs_in_the_arm64_runtime_image_from_its_own_files(request, runtime_image, emulated_cpu_sysfs,
                                                                   mobilenet_run, tmp_path):
    """`edgeq bundle` of the INT8 MobileNetV2; the runtime image (numpy + LiteRT, no edgeq) runs its check."""
    from conftest import run_edgeq

    r = run_edgeq("bundle", mobilenet_run, "--artifact", "int8_tflite_ptq", "--config",
                  REPO / "models" / "mobilenet_v2.yaml", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    bundle = next(p for p in tmp_path.iterdir() if p.is_dir())
    ans = agent_json(run_arm64(runtime_image, ["python3", f"/bundle/{bundle.name}/classify.py", "--check"],
                               "the bundle's classify.py --check in the arm64 runtime image", emulated_cpu_sysfs,
                               mounts=["-v", f"{tmp_path}:/bundle:ro"]))
    say(request, f"bundle {bundle.name} in {runtime_image}: {ans['check']} ({ans['runtime']})")
    assert ans["check"]["ok"] and ans["runtime"].startswith("ai-edge-litert"), ans


def test_pipeline_image_turns_an_onnx_model_into_full_integer_tflite(request, pipeline_image, tiny_project, tmp_path):
    """onnx2tf is installed in the pipeline image (with --no-deps, as `make setup` does) and works there."""
    from edgeq.loaders.keras import load_keras_model
    from edgeq.methods.onnx.from_keras import keras_to_onnx

    project = tmp_path / "project"
    shutil.copytree(tiny_project / "images", project / "images")
    keras_to_onnx(load_keras_model(tiny_project / "tiny.keras"), project / "tiny.onnx", 17)
    (project / "tiny_onnx.yaml").write_text((tiny_project / "tiny.yaml").read_text().replace("tiny.keras", "tiny.onnx")
                                            .replace("benchmark: {", "benchmark: {enabled: false, "))
    out = edgeq_in_pipeline_image(pipeline_image, ["run", "tiny_onnx.yaml", "--out", "/out/onnx"], tmp_path / "out",
                                  "edgeq run on an ONNX model inside the pipeline image",
                                  mounts=["-v", f"{project}:/project:ro"], workdir="/project")
    rep = json.loads((out / "onnx" / "report.json").read_text())
    int8 = next(a for a in rep["artifacts"] if a["name"] == "int8_tflite_ptq")
    assert int8["notes"]["float_ops"] == [] and rep["tflite_ptq"]["vs_onnx"]["relative"] <= 1e-3
    say(request, f"pipeline image: ONNX -> INT8 TFLite via {rep['tflite_ptq']['translation']['translator']}")


# ----------------------------------------------------------------------------- jetson
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and line continuations joined."""
    out, cur = [], ""
    for line in path.read_text().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    assert not cur, f"{path}: ends inside a line continuation"
    return out


def test_jetson_dockerfile_uses_l4t_tensorrt_copies_the_agent_and_sets_the_entrypoint():
    ins = dockerfile_instructions(REPO / "docker" / "jetson.Dockerfile")
    args = dict(a.split("=", 1) for k, a in ins if k == "ARG" and "=" in a)
    assert args.get("BASE_IMAGE", "").startswith("nvcr.io/nvidia/l4t-tensorrt:"), args
    assert ("FROM", "${BASE_IMAGE}") in ins
    assert any(k == "COPY" and a.split()[-2:] == ["edgeq/ondevice/agent.py", "/opt/edgeq/agent.py"] for k, a in ins), ins
    assert ("ENTRYPOINT", '["/usr/local/bin/edgeq-entrypoint"]') in ins
    env = " ".join(a for k, a in ins if k == "ENV")
    assert re.search(r"PATH=/usr/src/tensorrt/bin:", env), f"trtexec's directory is not put on PATH: {env}"


def test_jetson_image_instructions_build_and_run_on_a_standin_base(request, amd64_base, tmp_path):
    """The L4T base (nvcr.io) is unreachable here, so the jetson image itself is NOT built.

    What is checked instead: BuildKit parses and runs every instruction of docker/jetson.Dockerfile on
    a Debian amd64 stand-in base, and the result has the agent, the entrypoint and trtexec's PATH.
    """
    build(request, "jetson", JETSON_STANDIN, amd64_base, platform="linux/amd64")
    say(request, "jetson image: NOT built on its real base (nvcr.io/nvidia/l4t-tensorrt is unreachable here); "
                 "its Dockerfile was built on a Debian stand-in base instead")
    info = agent_json(docker_run([JETSON_STANDIN], "the jetson image's default command (agent --info)"))
    assert info["ok"], info
    path = docker_run([JETSON_STANDIN, "sh", "-c", "echo $PATH"], "PATH in the jetson image").stdout
    assert path.startswith("/usr/src/tensorrt/bin:"), path
    agent = docker_run([JETSON_STANDIN, "cat", "/opt/edgeq/agent.py"], "the agent in the jetson image").stdout
    assert agent == (REPO / "edgeq" / "ondevice" / "agent.py").read_text()


# ----------------------------------------------------------------------------- runtime image with OpenVINO (opt-in)
@pytest.fixture(scope="session")
def runtime_openvino_image(request, arm64_base) -> str:
    """docker/runtime.Dockerfile with OPENVINO_SPEC: this machine's OpenVINO version, so device and host compare alike."""
    pytest.importorskip("openvino", reason="openvino is not installed here (pip install 'edgeq[openvino]')")
    from importlib.metadata import version

    build(request, "runtime", RUNTIME_OPENVINO, arm64_base, build_args=(f"OPENVINO_SPEC=openvino=={version('openvino')}",))
    return RUNTIME_OPENVINO


def test_runtime_image_with_openvino_runs_an_ir_and_an_onnx_at_f32_as_the_host_does(request, runtime_openvino_image,
                                                                                    tmp_path):
    """The agent's `--runtime openvino` in the arm64 image (QEMU cortex-a72) on the tiny CNN's FP32 IR and its ONNX:
    f32 forced and named, outputs equal the host's OpenVINO to 1e-4 of the largest output. No /sys stand-in here:
    OpenVINO does not use LiteRT's cpuinfo, and its CPU plugin waits forever on the stand-in's cut-down topology."""
    from conftest import build_tiny_cnn
    from edgeq.methods.onnx.from_keras import keras_to_onnx
    from edgeq.methods.openvino.convert import onnx_to_ir

    work = tmp_path / "work"
    work.mkdir()
    keras_to_onnx(build_tiny_cnn(train=False), work / "fp32.onnx", 17)
    onnx_to_ir(work / "fp32.onnx", work / "fp32.openvino")
    np.save(work / "inputs.npy", np.random.default_rng(0).uniform(-1, 1, (32, 16, 16, 3)).astype(np.float32))
    common = ["--runtime", "openvino", "--inputs", "inputs.npy", "--runs", "5", "--warmup", "1", "--threads", "1"]
    host = subprocess.run([sys.executable, str(REPO / "edgeq" / "ondevice" / "agent.py"), "--model", "fp32.openvino",
                           "--outputs-out", "x86.npy", *common], capture_output=True, text=True, timeout=300, cwd=work)
    assert host.returncode == 0, f"agent on x86 failed:\n{host.stdout}\n{host.stderr[-2000:]}"
    x86 = np.load(work / "x86.npy")
    mb = image_mb(runtime_openvino_image)
    for model in ("fp32.openvino", "fp32.onnx"):
        t = time.monotonic()
        arm = agent_json(docker_run(["--platform", "linux/arm64", "-e", f"QEMU_CPU={QEMU_CPU}", "-v", f"{work}:/work",
                                     runtime_openvino_image, "--model", f"/work/{model}", "--outputs-out",
                                     f"/work/{model}.arm64.npy", *common], f"the agent on {model} in the OpenVINO "
                                    "runtime image", timeout=600))
        assert arm["ok"] and arm["device"]["machine"] == "aarch64", arm
        assert arm["runtime"].startswith("openvino ") and arm["model"]["inference_precision"] == "f32", arm
        out = np.load(work / f"{model}.arm64.npy")
        rel = float((np.abs(out - x86).max(1) / np.abs(x86).max(1)).max())
        say(request, f"{runtime_openvino_image} ({mb:.0f} MB): {model} on arm64 (QEMU {QEMU_CPU}, {arm['runtime']}) "
                     f"vs x86 OpenVINO f32, {len(out)} images: max relative difference {rel:.2g} "
                     f"(agent run {time.monotonic() - t:.0f} s)")
        assert out.shape == x86.shape and rel <= 1e-4, (out.shape, rel)
    assert mb <= RUNTIME_MAX_MB, f"{runtime_openvino_image} is {mb:.0f} MB, over the {RUNTIME_MAX_MB} MB bar"
