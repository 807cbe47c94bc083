"""The device inventory: a YAML file listing the devices edgeq can benchmark on.

Credentials are referenced (key_file, ssh-agent, known_hosts), never written inline. Relative paths
are resolved against the inventory file's directory. Example: models/devices.example.yaml.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeq.core.config import format_validation_error, looks_like_secret
from edgeq.core.errors import ConfigError
from edgeq.core.formats import KINDS
from edgeq.core.yamlfile import read_yaml_mapping


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: str  # a row of edgeq.core.formats.KINDS
    # SSH; a `host` kind device without `host:` runs the agent on this machine, no SSH
    host: Optional[str] = None
    port: int = Field(22, ge=1, le=65535)
    user: Optional[str] = None
    key_file: Optional[Path] = None  # a private key file (never the key itself)
    use_ssh_agent: bool = False  # authenticate with the keys of a running ssh-agent
    known_hosts: Optional[Path] = None  # default ~/.ssh/known_hosts
    trust_on_first_use: bool = False  # accept and record an unknown host key (logged); never a changed one
    connect_timeout: float = Field(10.0, gt=0)  # seconds, TCP connect + SSH banner + auth
    command_timeout: float = Field(900.0, gt=0)  # seconds, one remote command (engine builds are slow)
    # on the device
    workdir: str = "edgeq-work"  # relative paths are under the login user's home directory
    python: str = "python3"  # interpreter that runs the agent
    threads: Optional[int] = Field(None, ge=1)
    # TFLite kernels the agent runs: default (XNNPACK where built in), builtin (XNNPACK off) or reference
    tflite_kernels: Literal["default", "builtin", "reference"] = "default"
    runs: Optional[int] = Field(None, ge=1)  # timed runs per artifact per interleaved round
    rounds: Optional[int] = Field(None, ge=1)
    warmup: Optional[int] = Field(None, ge=0)
    # edgetpu
    delegate: str = "libedgetpu.so.1"
    edgetpu_compiler: str = "edgetpu_compiler"  # on this machine (x86-64 only)
    # jetson
    trtexec: str = "trtexec"  # on the device; /usr/src/tensorrt/bin/trtexec is tried too
    fp16_fallback: bool = True  # --fp16 beside --int8: layers without INT8 kernels run FP16, not FP32
    # checking outputs: this many eval images are run on the device and compared with the host
    check_outputs: int = Field(16, ge=0)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"unknown device kind {v!r}; kinds: {', '.join(KINDS)}")
        return v

    @model_validator(mode="after")
    def _needs_host(self):
        if KINDS[self.kind].needs_address and not self.host:
            raise ValueError(f"device '{self.name}' of kind {self.kind} needs 'host' (its SSH address)")
        if self.key_file is not None and looks_like_secret(str(self.key_file)):
            raise ValueError(f"device '{self.name}': key_file holds what looks like a key itself (not shown); "
                             "put the key in a file (chmod 600) and give its path")
        return self

    @property
    def is_local(self) -> bool:
        return self.host is None

    @property
    def address(self) -> str:
        return "this machine" if self.is_local else f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    devices: list[Device]
    source: Optional[Path] = Field(None, exclude=True)

    @model_validator(mode="after")
    def _unique(self):
        seen = set()
        for d in self.devices:
            if d.name in seen:
                raise ValueError(f"device name '{d.name}' appears twice")
            if d.name == "host":
                raise ValueError("'host' is the name of edgeq's in-process host figures; name the device otherwise")
            seen.add(d.name)
        return self

    def get(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise ConfigError(f"{self.source or 'inventory'}: no device named '{name}' "
                          f"(devices: {', '.join(d.name for d in self.devices) or 'none'})")


def load_inventory(path: Path | str) -> Inventory:
    """Read and validate an inventory file; a problem is one ConfigError naming the file and key."""
    path = Path(path)
    raw = read_yaml_mapping(path, "inventory file", "a mapping with a 'devices:' list")
    try:
        inv = Inventory.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    base = path.parent
    for d in inv.devices:
        for f in ("key_file", "known_hosts"):
            p = getattr(d, f)
            if p is not None:
                p = p.expanduser()
                setattr(d, f, p if p.is_absolute() else base / p)
    inv.source = path
    return inv
