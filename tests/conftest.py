"""Shared fixtures: tiny real Keras models and ImageFolder data built on the spot (never downloaded), the one
run-config factory (`make_config`) and the shipped model configs it starts from."""
from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

REPO = Path(__file__).resolve().parent.parent

from edgeq.stages import registry  # noqa: E402  (the stage table: config validation reads it)


def _colour_image(rng, cls: int, size: int = 16) -> np.ndarray:
    a = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    a[..., cls % 3] += 150
    return a


def write_image_folder(root: Path, n: int, classes: int = 3, size: int = 16, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        d = root / f"class_{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_colour_image(rng, i % classes, size)).save(d / f"{i:04d}.png")
    return root


def build_tiny_cnn(classes: int = 3, size: int = 16, train: bool = True, seed: int = 0):
    """A small real CNN (conv, depthwise, BN, residual add, pooling, dense) trained briefly on colour blobs."""
    import edgeq  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
    from edgeq.core.tfcompat import keras, set_seed

    set_seed(seed)
    k = keras()
    inp = k.Input((size, size, 3))
    x = k.layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.ReLU()(x)
    y = k.layers.DepthwiseConv2D(3, padding="same")(x)
    y = k.layers.BatchNormalization()(y)
    x = k.layers.Add()([x, y])
    x = k.layers.ReLU(6.0)(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    out = k.layers.Dense(classes, activation="softmax")(x)
    m = k.Model(inp, out, name="tiny_cnn")
    if train:
        rng = np.random.default_rng(seed)
        X = np.stack([_colour_image(rng, i % classes, size) for i in range(300)])
        Y = np.arange(300) % classes
        m.compile(k.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
        m.fit((X.astype(np.float32) - 127.5) / 127.5, Y, epochs=4, batch_size=32, verbose=0)
    return m


TINY_CONFIG = """name: tiny
model: {{path: {model}, input_shape: [16, 16, 3], num_classes: 3}}
data: {{kind: image_folder, path: {images}, calibration_size: 40}}
stages: {{tflite_ptq: {{representative_images: 40}}}}
benchmark: {{runs: 20, warmup: 2}}
"""


# ------------------------------------------------------------------ run configs
def shipped_model_configs() -> dict[str, Path]:
    """Every run config under models/ (name -> file): a new models/*.yaml is picked up by every test using this."""
    found = {}
    for p in sorted((REPO / "models").glob("*.yaml")):
        raw = yaml.safe_load(p.read_text())
        if isinstance(raw, dict) and "model" in raw:  # devices.example.yaml is an inventory, not a run config
            found[p.stem] = p
    return found


# ------------------------------------------------------------------ per-stage test parametrization (from the registry)
HEAVY_MODEL_BYTES = 20e6  # a stage marked heavy is `slow` on a model with more weights than this (ResNet-50)


def _weights_bytes(config: Path) -> int:
    p = config.parent / yaml.safe_load(config.read_text())["model"]["path"]
    return p.stat().st_size if p.exists() else 0


def stage_test_params(rows, models: dict[str, Path]) -> list:
    """pytest params (model, stage) of every row on each shipped model config its tests ask for (row.tests)."""
    out = []
    for model, config in models.items():
        for row in rows:
            if row.tests.models is not None and model not in row.tests.models:
                continue
            slow = row.tests.heavy and _weights_bytes(config) > HEAVY_MODEL_BYTES
            out.append(pytest.param(model, row.name, id=f"{model}-{row.name}",
                                    marks=[pytest.mark.slow] if slow else []))
    return out


def stage_made(row, rows) -> tuple[list[str], list[str]]:
    """(always, maybe): the report.json names a stage's test run adds, with those of the stages it runs with."""
    by_name = {r.name: r for r in rows}
    runs = [by_name[n] for n in row.tests.run_with] + [row]
    return [n for r in runs for n in r.tests.artifacts], [n for r in runs for n in r.tests.may_make]


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _base_config(model: str | Path) -> dict:
    if isinstance(model, Path) and model.is_dir():  # a tiny project: tiny.keras + images/
        return yaml.safe_load(TINY_CONFIG.format(model=model / "tiny.keras", images=model / "images"))
    src = shipped_model_configs()[model] if isinstance(model, str) else Path(model)
    raw = yaml.safe_load(src.read_text())
    raw["model"]["path"] = str((src.parent / raw["model"]["path"]).resolve())
    return raw


def make_config(directory: Path, model: str | Path, /, *, stages: list[str] | dict[str, dict] | None = None,
                filename: str = "config.yaml", **overrides) -> Path:
    """Write a run config YAML into `directory` and return its path.

    model: a shipped model's name ("mobilenet_v2"), a config file, or a tiny project directory (`tiny_project`).
    stages: enable exactly these, as names or {name: options merged into the base's} (None: as the base has them).
    overrides: top-level sections merged key by key, e.g. data={"eval_size": 200}, model={"path": ...}.
    """
    cfg = _base_config(model)
    if stages is not None:
        options = stages if isinstance(stages, dict) else {n: {} for n in stages}
        names = registry.names()  # `--stages` names, run order
        unknown = set(options) - set(names)
        assert not unknown, f"unknown stages {sorted(unknown)}; choose from {names}"
        base = cfg.get("stages", {})
        cfg["stages"] = {n: _merge({**base.get(n, {}), "enabled": n in options}, options.get(n, {})) for n in names}
    cfg = _merge(cfg, overrides)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


# ------------------------------------------------------------------ recorded device tools
def fake_edgetpu_compiler(directory: Path, log: str, exit_code: int = 0) -> Path:
    """An `edgetpu_compiler` that prints a recorded log and, when it exits 0, writes `<stem>_edgetpu.tflite`
    into its -o directory as the real compiler does (a copy of the input: nothing here runs it on a TPU)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "compiler.log").write_text(log)
    exe = directory / "edgetpu_compiler"
    exe.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import shutil, sys
        from pathlib import Path
        args = sys.argv[1:]
        out, model = Path(args[args.index("-o") + 1]), Path(args[-1])
        sys.stdout.write((Path(__file__).parent / "compiler.log").read_text())
        if {exit_code} == 0:
            shutil.copyfile(model, out / (model.stem + "_edgetpu.tflite"))
        sys.exit({exit_code})
        """))
    exe.chmod(0o755)
    return exe


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A directory with tiny.keras, images/<class>/*.png (120 images) and tiny.yaml pointing at them."""
    root = tmp_path_factory.mktemp("tiny")
    build_tiny_cnn().save(root / "tiny.keras")
    write_image_folder(root / "images", 120)
    (root / "tiny.yaml").write_text(TINY_CONFIG.format(model="tiny.keras", images="images"))
    return root


def run_edgeq(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """The real `edgeq` command line in a subprocess."""
    return subprocess.run([sys.executable, "-m", "edgeq", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture(scope="session")
def tiny_run(tiny_project, tmp_path_factory):
    """One real `edgeq run` of the tiny project (TFLite PTQ, evaluation, interleaved host benchmark)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    proc = run_edgeq("run", tiny_project / "tiny.yaml", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="session")
def tiny_run_report(tiny_run) -> dict:
    import json

    return json.loads((tiny_run[0] / "report.json").read_text())


def convert_tflite(model, int8: bool, x: np.ndarray) -> bytes:
    """A Keras model as FP32 or full-integer INT8 (int8 I/O) .tflite bytes, calibrated on `x`."""
    from edgeq.core.tfcompat import tf

    conv = tf().lite.TFLiteConverter.from_keras_model(model)
    if int8:
        conv.optimizations = [tf().lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
        conv.target_spec.supported_ops = [tf().lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf().int8
        conv.inference_output_type = tf().int8
    return conv.convert()


def say(request, msg: str, tag: str = "docker") -> None:
    """A figure for the test output: shown in the terminal even when the test passes."""
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None:
        print(f"[{tag}] {msg}")
        return
    with capman.global_and_fixture_disabled():
        tr.write_line(f"[{tag}] {msg}")


# ------------------------------------------------------------------ SSH devices: keys, ports, inventories
def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    """A fresh passphrase-less ed25519 key pair at path (+ .pub); returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeq-test", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


def write_inventory(path: Path, devices: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"devices": devices}, sort_keys=False))
    return path


# ------------------------------------------------------------------ the arm64 runtime image as an SSH device
DOCKER = "/usr/bin/docker"  # Debian's client: BuildKit built in (another `docker` on PATH may lack buildx)
ARM64_RUNTIME = "edgeq/runtime:arm64"
ARM64_SSH = "edgeq/runtime-ssh:arm64"
ARM64_DEVICE = "arm64-qemu"
QEMU_CPU = "cortex-a72"  # a Raspberry Pi 4's core: XNNPACK's NEON kernels as on a Pi (QEMU's `max`: garbage)
ARM64_CPU_LIST = "0-1"  # the stand-in /sys/devices/system/cpu of docker/runtime.Dockerfile's header


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ... failed (exit {p.returncode}): {p.stderr[-2000:]}")
    return p


def arm64_docker_missing() -> str | None:
    """Why arm64 containers cannot run here (no docker client, no engine, no QEMU binfmt), or None."""
    if not os.path.exists(DOCKER) or not shutil.which("ssh-keygen"):
        return f"{DOCKER} or ssh-keygen not installed (.ci/docker-setup installs docker.io; openssh-client)"
    p = subprocess.run([DOCKER, "info"], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return f"no Docker engine reachable (docker info: {p.stderr.strip()[-200:]}); start it with .ci/docker-setup"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "qemu-aarch64 is not registered with binfmt_misc: arm64 containers cannot run (.ci/docker-setup)"
    return None


def _ensure_arm64_images() -> dict:
    """edgeq/runtime:arm64 (docker/build.sh, from a debootstrapped base, if missing) and the test-only SSH image
    on top of it (docker/runtime-ssh.Dockerfile; cached after the first build). Returns build seconds."""
    seconds = {}
    if _docker("image", "inspect", ARM64_RUNTIME, check=False).returncode != 0:
        t = time.monotonic()
        cmd = [str(REPO / "docker" / "build.sh"), "--debootstrap-base", "runtime"]
        ca = Path("/etc/ssl/certs/ca-certificates.crt")
        if ca.is_file():  # a TLS-intercepting proxy re-signs pip's downloads here
            cmd[1:1] = ["--ca-certs", str(ca)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=2400, env={**os.environ, "DOCKER": DOCKER})
        if p.returncode != 0:
            raise RuntimeError(f"building {ARM64_RUNTIME} failed: {(p.stdout + p.stderr)[-3000:]}")
        seconds["runtime"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    p = subprocess.run([DOCKER, "build", "--platform", "linux/arm64", "-f", str(REPO / "docker" / "runtime-ssh.Dockerfile"),
                        "-t", ARM64_SSH, "--progress=plain", str(REPO)], capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "DOCKER_BUILDKIT": "1"})
    if p.returncode != 0:
        raise RuntimeError(f"building {ARM64_SSH} failed: {(p.stdout + p.stderr)[-3000:]}")
    seconds["runtime-ssh"] = round(time.monotonic() - t, 1)
    return seconds


class Arm64Device:
    """An edgeq/runtime-ssh:arm64 container under QEMU, reachable by SSH on a loopback port, as an `rpi` device."""

    def __init__(self, root: Path):
        self.root = root
        self.build_seconds = _ensure_arm64_images()
        cpu = root / "cpu"
        cpu.mkdir()
        for name in ("possible", "present", "online"):
            (cpu / name).write_text(ARM64_CPU_LIST + "\n")
        self.user_key = root / "id_ed25519"
        keygen(self.user_key)
        t = time.monotonic()
        self.container = f"edgeq-arm64-device-{uuid.uuid4().hex[:8]}"
        _docker("run", "-d", "--rm", "--name", self.container, "--platform", "linux/arm64", "-e", f"QEMU_CPU={QEMU_CPU}",
                "-v", f"{cpu}:/sys/devices/system/cpu:ro",
                "-v", f"{self.user_key.with_suffix('.pub')}:/run/edgeq/authorized_keys:ro",
                "-p", "127.0.0.1::22", ARM64_SSH)
        try:
            self.port = int(_docker("port", self.container, "22/tcp").stdout.split()[0].rsplit(":", 1)[1])
            host_key = self._wait_for_sshd(deadline=time.monotonic() + 120)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = round(time.monotonic() - t, 1)
        kt, kb = host_key.split()[:2]  # read inside the container: the key edgeq then verifies on every connection
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {kt} {kb}\n")

    def _wait_for_sshd(self, deadline: float) -> str:
        """The container's host public key, once sshd answers with its SSH banner on the published port."""
        while time.monotonic() < deadline:
            if _docker("inspect", "-f", "{{.State.Running}}", self.container, check=False).stdout.strip() != "true":
                raise RuntimeError(f"the {ARM64_SSH} container stopped: {self.logs()}")
            key = _docker("exec", self.container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub", check=False)
            if key.returncode == 0:
                try:  # docker's port proxy accepts at once; only sshd itself sends the banner
                    with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                        if s.recv(64).startswith(b"SSH-2.0"):
                            return key.stdout.strip()
                except OSError:
                    pass
            time.sleep(0.5)
        raise RuntimeError(f"sshd in {self.container} did not answer within 120 s: {self.logs()}")

    def exec(self, *cmd: str) -> str:
        """stdout of a command run inside the container (not over SSH): to look at what edgeq left there."""
        return _docker("exec", self.container, *cmd).stdout

    def logs(self) -> str:
        p = _docker("logs", "--tail", "40", self.container, check=False)
        return (p.stdout + p.stderr)[-3000:]

    def device(self, name: str = ARM64_DEVICE, **kw) -> dict:
        d = {"name": name, "kind": "rpi", "host": "127.0.0.1", "port": self.port, "user": "root",
             "key_file": str(self.user_key), "known_hosts": str(self.known_hosts), "workdir": "/root/edgeq",
             "python": "/opt/venv/bin/python3", "threads": 2, "connect_timeout": 30, "command_timeout": 1200}
        d.update(kw)
        return d

    def stop(self) -> None:
        _docker("rm", "-f", self.container, check=False)


@pytest.fixture(scope="session")
def arm64_container(tmp_path_factory):
    """The running Arm64Device (port, keys, build/start seconds); most tests want `arm64_device` instead."""
    why = arm64_docker_missing()
    if why:
        pytest.skip(why)
    dev = Arm64Device(tmp_path_factory.mktemp("arm64-device"))
    yield dev
    dev.stop()


@pytest.fixture(scope="session")
def arm64_device(arm64_container) -> tuple[Path, str]:
    """(inventory_path, device_name): the arm64 runtime image under QEMU as an `rpi` SSH device.

    One container per test session (edgeq/runtime-ssh:arm64 = docker/runtime.Dockerfile + OpenSSH, built here and
    cached by docker; edgeq/runtime:arm64 is built first by docker/build.sh if missing). It runs with
    QEMU_CPU=cortex-a72 and a stand-in /sys/devices/system/cpu listing CPUs 0-1, so LiteRT's XNNPACK runs the NEON
    kernels a Raspberry Pi 4 runs: outputs are the aarch64 build's real ones, timings are of an emulated CPU (the
    agent detects it; reports mark them). sshd publishes on a free 127.0.0.1 port, logs in as root with a key made
    here (mounted, never baked in), and the inventory's known_hosts holds the container's own host key (read with
    `docker exec`): host-key checking stays on. Use it as any inventory:
    `run_edgeq("bench", run, "--inventory", inv, "--device", name)`. Skips, saying why, without docker/QEMU.
    """
    inv = write_inventory(arm64_container.root / "devices.yaml", [arm64_container.device()])
    return inv, ARM64_DEVICE
