"""Reaching a device: one SSH transport (paramiko) and its local twin, with the same three calls:
`run(argv)`, `put(local_file, sha256)` (content-addressed; a directory artifact is copied whole) and `close()`.

Host keys are verified against known_hosts (paramiko's RejectPolicy); an unknown key is accepted
only with the device's explicit `trust_on_first_use`, which is logged and recorded. A changed key is
always refused. Every remote argument is shell-quoted.
"""
from __future__ import annotations

import hashlib
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeq.core.errors import TargetError
from edgeq.targets.inventory import Device


class DeviceUnreachable(TargetError):
    """The device could not be reached or logged into; nothing was measured on it."""


@dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class CopyLog:
    copied: list[str] = field(default_factory=list)  # remote paths written in this session
    reused: list[str] = field(default_factory=list)  # remote paths already there with the same content
    bytes: int = 0


def quote_argv(argv: list[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def stderr_tail(text: str, lines: int = 8) -> str:
    tail = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return " | ".join(tail)


def remote_workdir(device: Device) -> str:
    """The device's workdir as SFTP and remote commands both read it (relative = under the login's home)."""
    wd = device.workdir.rstrip("/")
    return wd[2:] if wd.startswith("~/") else wd


def content_name(sha256: str, filename: str) -> str:
    """sha256-prefixed name: the same content always lands at the same remote path."""
    return f"{sha256[:16]}-{Path(filename).name}"


class LocalTransport:
    """The agent on this machine, as a subprocess: same calls as SSHTransport, nothing is copied."""

    def __init__(self, device: Device, log: Callable[[str], None] = print):
        self.device = device
        self.log = log
        self.copies = CopyLog()
        self._scratch: str | None = None

    def connect(self) -> "LocalTransport":
        return self

    def run(self, argv: list[str], timeout: float | None = None) -> CommandResult:
        t = time.perf_counter()
        try:
            p = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                               timeout=timeout or self.device.command_timeout)
        except FileNotFoundError as e:
            return CommandResult(argv, 127, "", f"{e.filename}: not found", time.perf_counter() - t)
        except subprocess.TimeoutExpired:
            raise TargetError(f"{self.device.name}: `{quote_argv(argv)[:120]}` did not finish within "
                              f"{timeout or self.device.command_timeout:.0f} s") from None
        return CommandResult(argv, p.returncode, p.stdout, p.stderr, time.perf_counter() - t)

    def put(self, local: Path, sha256: str, subdir: str) -> str:
        return str(Path(local).resolve())

    def remote_path(self, subdir: str, filename: str) -> str:
        """Where the agent may write a file for us: a local temporary directory (nothing is on a device)."""
        import tempfile

        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="edgeq-agent-")
        return str(Path(self._scratch) / filename)

    def get(self, remote: str, local: Path) -> None:
        import os
        import shutil

        shutil.copyfile(remote, f"{local}.part")
        os.replace(f"{local}.part", local)

    def close(self) -> None:
        import shutil

        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)


class _TrustOnFirstUse:
    """paramiko policy: accept an unknown host key, record it in known_hosts and log its fingerprint."""

    def __init__(self, known_hosts: Path, log: Callable[[str], None]):
        self.known_hosts = known_hosts
        self.log = log

    def missing_host_key(self, client, hostname, key):
        import base64

        fp = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        client.save_host_keys(str(self.known_hosts))
        self.log(f"  ! trust on first use: accepted host key {key.get_name()} SHA256:{fp} for {hostname}, "
                 f"recorded in {self.known_hosts}")


class SSHTransport:
    def __init__(self, device: Device, log: Callable[[str], None] = print):
        self.device = device
        self.log = log
        self.client = None
        self.sftp = None
        self.copies = CopyLog()
        self._lock = threading.Lock()

    @property
    def known_hosts(self) -> Path:
        return Path(self.device.known_hosts or Path("~/.ssh/known_hosts")).expanduser()

    def connect(self) -> "SSHTransport":
        import logging

        import paramiko

        # paramiko logs a failed handshake with a traceback from its own thread; we report it as one line
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
        d = self.device
        where = f"device '{d.name}' ({d.address})"
        client = paramiko.SSHClient()
        kh = self.known_hosts
        if kh.is_file():
            client.load_host_keys(str(kh))
        elif not d.trust_on_first_use:
            raise TargetError(f"{where}: known_hosts file {kh} not found; add the device's host key "
                              f"(ssh-keyscan -p {d.port} {d.host} >> {kh}, after checking its fingerprint) "
                              "or set trust_on_first_use: true")
        client.set_missing_host_key_policy(_TrustOnFirstUse(kh, self.log) if d.trust_on_first_use
                                           else paramiko.RejectPolicy())
        if d.key_file is not None and not Path(d.key_file).is_file():
            raise TargetError(f"{where}: key_file {d.key_file} not found; give the path of the private key file")
        t = d.connect_timeout
        try:
            client.connect(d.host, port=d.port, username=d.user,
                           key_filename=str(d.key_file) if d.key_file else None,
                           allow_agent=d.use_ssh_agent, look_for_keys=False,
                           timeout=t, banner_timeout=t, auth_timeout=t, channel_timeout=t)
        except paramiko.BadHostKeyException as e:
            client.close()
            raise TargetError(f"{where}: host key {e.key.get_name()} does not match the one in {kh} — refusing to "
                              "connect (the device was reinstalled, or someone is in the middle); fix known_hosts "
                              "only after checking the new fingerprint") from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise DeviceUnreachable(f"{where}: authentication failed for user {d.user or '(default)'} "
                                    f"({e}); check key_file / use_ssh_agent") from None
        except paramiko.SSHException as e:
            client.close()
            msg = str(e)
            if "not found in known_hosts" in msg:
                raise TargetError(f"{where}: host key not in {kh}; refusing to connect. Add it (ssh-keyscan -p "
                                  f"{d.port} {d.host} >> {kh}, after checking its fingerprint) or set "
                                  "trust_on_first_use: true") from None
            # paramiko gives up the handshake silently at `timeout` and then reports "No existing session"
            if any(w in msg.lower() for w in ("banner", "timed out", "no existing session", "negotiation failed")):
                raise DeviceUnreachable(f"{where}: unreachable (no SSH answer within {t:g} s)") from None
            raise DeviceUnreachable(f"{where}: SSH failed ({msg})") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise DeviceUnreachable(f"{where}: unreachable (timed out after {t:g} s)") from None
        except OSError as e:
            client.close()
            raise DeviceUnreachable(f"{where}: unreachable ({e.strerror or e})") from None
        self.client = client
        return self

    # -- commands
    def run(self, argv: list[str], timeout: float | None = None) -> CommandResult:
        """Run argv on the device (each argument shell-quoted); never raises on a non-zero exit."""
        import paramiko

        timeout = timeout or self.device.command_timeout
        cmd = quote_argv(argv)
        t = time.perf_counter()
        try:
            _, out, err = self.client.exec_command(cmd, timeout=timeout)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
            rc = out.channel.recv_exit_status()
        except (socket.timeout, TimeoutError):
            raise TargetError(f"{self.device.name}: `{cmd[:120]}` did not finish within {timeout:.0f} s") from None
        except (paramiko.SSHException, OSError) as e:
            raise DeviceUnreachable(f"{self.device.name}: connection lost running `{cmd[:80]}` ({e})") from None
        return CommandResult(argv, rc, stdout, stderr, time.perf_counter() - t)

    # -- files
    def _sftp(self):
        if self.sftp is None:
            self.sftp = self.client.open_sftp()
        return self.sftp

    def _mkdirs(self, path: str) -> None:
        sftp = self._sftp()
        parts = [p for p in path.split("/") if p]
        cur = "/" if path.startswith("/") else ""
        for p in parts:
            cur = f"{cur}{p}" if cur in ("", "/") else f"{cur}/{p}"
            try:
                sftp.stat(cur)
            except OSError:
                sftp.mkdir(cur)

    def put(self, local: Path, sha256: str, subdir: str) -> str:
        """Copy `local` to <workdir>/<subdir>/<sha256-prefix>-<name> unless that file is already there."""
        local = Path(local)
        remote_dir = f"{remote_workdir(self.device)}/{subdir}"
        remote = f"{remote_dir}/{content_name(sha256, local.name)}"
        if local.is_dir():
            return self._put_dir(local, remote)
        size = local.stat().st_size
        with self._lock:
            sftp = self._sftp()
            try:
                if sftp.stat(remote).st_size == size:
                    self.copies.reused.append(remote)
                    return remote
            except OSError:
                pass
            self._mkdirs(remote_dir)
            tmp = f"{remote}.part"
            sftp.put(str(local), tmp)
            try:
                sftp.posix_rename(tmp, remote)
            except OSError:
                sftp.rename(tmp, remote)
            self.copies.copied.append(remote)
            self.copies.bytes += size
        return remote

    def _put_dir(self, local: Path, remote: str) -> str:
        """A directory artifact (an OpenVINO IR: model.xml + model.bin) copied into <remote>.part and renamed into
        place whole, so a directory at its content-addressed path is always complete."""
        import stat

        files = sorted(f for f in local.rglob("*") if f.is_file())
        with self._lock:
            sftp = self._sftp()
            try:
                if stat.S_ISDIR(sftp.stat(remote).st_mode or 0):
                    self.copies.reused.append(remote)
                    return remote
            except OSError:
                pass
            tmp = f"{remote}.part"
            for f in files:  # a killed copy's leftovers in tmp are overwritten file by file
                rel = f.relative_to(local).as_posix()
                self._mkdirs(f"{tmp}/{rel}".rsplit("/", 1)[0])
                sftp.put(str(f), f"{tmp}/{rel}")
                self.copies.bytes += f.stat().st_size
            try:
                sftp.posix_rename(tmp, remote)
            except OSError:
                sftp.rename(tmp, remote)
            self.copies.copied.append(remote)
        return remote

    def remote_path(self, subdir: str, filename: str) -> str:
        """A path under <workdir>/<subdir> for a file the agent writes (the directory is made here)."""
        remote_dir = f"{remote_workdir(self.device)}/{subdir}"
        with self._lock:
            self._mkdirs(remote_dir)
        return f"{remote_dir}/{filename}"

    def get(self, remote: str, local: Path) -> None:
        """Fetch a file the agent wrote on the device; it lands at `local` whole or not at all."""
        import os

        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                self._sftp().get(remote, f"{local}.part")
        except OSError as e:
            raise TargetError(f"{self.device.name}: cannot fetch {remote} ({e})") from None
        os.replace(f"{local}.part", local)

    def close(self) -> None:
        if self.sftp is not None:
            self.sftp.close()
        if self.client is not None:
            self.client.close()


def open_transport(device: Device, log: Callable[[str], None] = print):
    t = LocalTransport(device, log) if device.is_local else SSHTransport(device, log)
    return t.connect()
