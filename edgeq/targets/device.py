"""A device with the edgeq agent on it: upload files, run the agent, read its one JSON answer.

Used by every remote target (rpi, edgetpu, jetson) and by a `host`-kind inventory device (the agent
as a local subprocess). The agent's protocol version must equal ours; anything else is refused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from edgeq.core.artifacts import sha256_of, size_of
from edgeq.core.errors import RuntimeUnavailable, TargetError
from edgeq.core.progress import spinner
from edgeq.ondevice import agent
from edgeq.targets.base import Deployable, LatencyStats, Target
from edgeq.targets.inventory import Device
from edgeq.targets.ssh import CommandResult, LocalTransport, stderr_tail

AGENT_SOURCE = Path(__file__).resolve().parent.parent / "ondevice" / "agent.py"


def expected_protocol() -> int:
    return agent.PROTOCOL


def run_key(run_dir: Path) -> str:
    """Name of this run's directory on a device: readable, and unique per run directory."""
    p = Path(run_dir).resolve()
    return f"{p.name}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}"


def parse_agent_answer(device: str, r: CommandResult) -> dict:
    """The agent's JSON, checked for our protocol version; a TargetError carrying stderr otherwise."""
    tail = stderr_tail(r.stderr, 4)
    lines = [ln for ln in r.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        if r.returncode == 127:  # the shell's "command not found"
            raise RuntimeUnavailable(f"{r.argv[0]} not found on {device}; set `python:` for it in the inventory to "
                                     f"an interpreter with numpy and ai-edge-litert or tflite-runtime ({tail})")
        raise TargetError(f"agent crashed on {device} (exit {r.returncode}) without an answer; stderr: "
                          f"{tail or '(empty)'}")
    try:
        ans = json.loads(lines[-1])
    except ValueError:
        raise TargetError(f"agent on {device} printed unreadable JSON (exit {r.returncode}); stderr: {tail}") from None
    ours = expected_protocol()
    if ans.get("protocol") != ours:
        raise TargetError(f"agent on {device} speaks protocol {ans.get('protocol')!r} but this edgeq speaks "
                          f"{ours}; refusing its figures (the agent copy on the device is stale or foreign)")
    if not ans.get("ok"):
        kind = ans.get("error_kind", "internal")
        msg = f"{ans.get('error', 'agent failed')} [agent on {device}, exit {r.returncode}]"
        if kind in ("runtime_missing", "delegate_unavailable"):
            raise RuntimeUnavailable(msg)
        raise TargetError(f"{msg}; stderr: {tail or '(empty)'}")
    return ans


class DeviceSession:
    """One open connection to one device, for one run directory."""

    def __init__(self, device: Device, transport, run_dir: Path, log: Callable[[str], None] = print,
                 agent_source: Path = AGENT_SOURCE):
        self.device = device
        self.transport = transport
        self.run_dir = Path(run_dir)
        self.subdir = run_key(run_dir)
        self.log = log
        self.agent_source = Path(agent_source)
        self._agent_remote: str | None = None
        self.info: dict = {}

    @property
    def name(self) -> str:
        return self.device.name

    def upload(self, local: Path, sha256: str | None = None) -> str:
        local = Path(local)
        sha256 = sha256 or sha256_of(local)
        if isinstance(self.transport, LocalTransport):  # a host device reads the file where it is: no copy
            return self.transport.put(local, sha256, self.subdir)
        size = size_of(local)  # a directory artifact (OpenVINO IR): its files together
        with spinner(f"upload {local.name} ({size / 1e6:.2f} MB) to {self.name}"):
            return self.transport.put(local, sha256, self.subdir)

    def agent_path(self) -> str:
        if self._agent_remote is None:
            self._agent_remote = self.upload(self.agent_source)
        return self._agent_remote

    def run_agent(self, args: list[str], timeout: float | None = None) -> dict:
        r = self.transport.run([self.device.python, self.agent_path(), *map(str, args)], timeout)
        return parse_agent_answer(self.name, r)

    def hello(self) -> dict:
        """Copy the agent if needed, check its protocol, and learn the device's identity and runtimes."""
        self.info = self.run_agent(["--info"], timeout=min(self.device.command_timeout, 120))
        return self.info

    def identity(self) -> str:
        d = self.info.get("device", {})
        return (f"{self.name}: {d.get('hostname', '?')} ({d.get('cpu', '?')}, {d.get('cores', '?')} cores, "
                f"{d.get('machine', '?')}{', EMULATED CPU' if d.get('emulated') else ''})")

    def runtimes(self) -> dict:
        return self.info.get("runtimes", {})

    def benchmark(self, model_remote: str, runs: int, warmup: int, threads: int | None, inputs_remote: str | None,
                  delegate: str | None = None, return_outputs: bool = False,
                  extra: list | None = None) -> tuple[LatencyStats, dict]:
        args = ["--model", model_remote, "--runs", runs, "--warmup", warmup, *(extra or [])]
        if threads:
            args += ["--threads", threads]
        if inputs_remote:
            args += ["--inputs", inputs_remote]
        if delegate:
            args += ["--delegate", delegate]
        if return_outputs:
            args += ["--return-outputs"]
        ans = self.run_agent(args)
        t = ans["timing"]
        stats = LatencyStats.from_samples(t["samples_ms"], warmup=t["warmup"], threads=t.get("threads"),
                                          runtime=ans["runtime"], device=self.identity())
        stats.emulated = (ans.get("device") or {}).get("emulated")
        return stats, ans


    def op_tensors(self, model_remote: str, inputs_remote: str, kernels: str, threads: int | None,
                   local: Path) -> dict:
        """Run the inputs through the model op by op on the device with every tensor kept (the agent's
        --tensors-out), fetch the tensors file to `local`; the agent's answer (ops, kernels, tensors' metadata)."""
        remote = self.transport.remote_path(self.subdir, f"tensors-{Path(local).stem}.npz")
        args = ["--model", model_remote, "--inputs", inputs_remote, "--tensors-out", remote, "--kernels", kernels]
        if threads:
            args += ["--threads", threads]
        ans = self.run_agent(args)
        self.transport.get(remote, Path(local))
        return ans


@runtime_checkable
class DeviceTarget(Target, Protocol):
    """A target on an inventory device, reached through a DeviceSession and constructed by
    edgeq.targets.fleet.make_target as Class(session, graph_optimization) from its edgeq.core.formats.KINDS row.

    `benchmark` times on the device's own inputs file (`inputs_remote`, image 0 is timed) and may ask for
    its outputs; the device's whole answer to the last call (per-run samples, outputs) is `last_answer`.
    """

    session: DeviceSession
    last_answer: dict

    def benchmark(self, deployable: Deployable, runs: int, warmup: int, threads: int | None,
                  inputs_remote: str | None = None, return_outputs: bool = False) -> LatencyStats: ...
