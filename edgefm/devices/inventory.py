"""``devices.yaml``: the boards edgefm may drive over SSH, validated like targets (extra="forbid").

    ssh_config: ~/.ssh/config          # optional; passed to ssh as -F
    devices:
      - name: orin-1
        host: orin1                    # a Host alias from ~/.ssh/config (or user@hostname)
        target: tensorrt-orin          # the target profile the board is
        python: ~/edgefm-venv/bin/python
        power_mode: MAXN               # nvpmodel mode the bench requires

Lookup order: ``--inventory FILE``, ``$EDGEFM_DEVICES``, ``./devices.yaml``, ``~/.config/edgefm/devices.yaml``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefm.errors import ConfigError, describe_validation

DEFAULT_PYTHON = "python3"
#: Where a device keeps bundles and runs (its own, edgefm-managed folder).
DEFAULT_WORKDIR = "~/.cache/edgefm"
#: The venv ``edgefm devices setup`` creates on a device without edgefm.
SETUP_VENV = "~/.local/share/edgefm/venv"


class Device(BaseModel):
    """One board."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Short name used on the command line (--device NAME)")
    host: str = Field(description="SSH destination: a Host alias from the ssh config, or [user@]hostname")
    target: Optional[str] = Field(None, description="Target profile of the board (targets/*.yaml name)")
    python: str = Field(DEFAULT_PYTHON, description="Python on the device that has edgefm (a venv's bin/python)")
    power_mode: Optional[str] = Field(None, description="nvpmodel power mode the bench requires (Jetson)")
    workdir: str = Field(DEFAULT_WORKDIR, description="Folder on the device for the bundle store and runs")
    port: Optional[int] = Field(None, ge=1, le=65535, description="SSH port (else the ssh config's)")
    user: Optional[str] = Field(None, description="SSH user (else the ssh config's)")
    identity: Optional[str] = Field(None, description="Private key file (else the ssh config's / the agent's)")
    connect_timeout: int = Field(10, ge=1, description="Seconds to wait for the SSH connection")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"'{v}' is not a valid device name (letters, digits, '.', '_', '-')")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not v or v.startswith("-") or any(c.isspace() for c in v):
            raise ValueError(f"'{v}' is not an SSH destination (no spaces, must not start with '-')")
        return v


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ssh_config: Optional[str] = Field(None, description="ssh config file (ssh -F); default: ssh's own")
    devices: list[Device] = Field(default_factory=list)
    path: Optional[str] = Field(None, exclude=True, description="Where it was read from (set by the loader)")

    @field_validator("devices")
    @classmethod
    def _unique(cls, v: list[Device]) -> list[Device]:
        seen: set[str] = set()
        for d in v:
            if d.name in seen:
                raise ValueError(f"device name '{d.name}' appears twice")
            seen.add(d.name)
        return v

    def get(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise ConfigError(f"device '{name}' is not in {self.path or 'the inventory'} "
                          f"(it has: {', '.join(d.name for d in self.devices) or 'none'})")

    def select(self, names: Optional[list[str]] = None, fleet: bool = False) -> list[Device]:
        """The devices named (in order, no repeats), or all of them with ``fleet``."""
        if fleet:
            if not self.devices:
                raise ConfigError(f"{self.path or 'the inventory'} lists no devices")
            return list(self.devices)
        return [self.get(n) for n in dict.fromkeys(names or [])]


def inventory_path(given: Optional[Path] = None) -> Path:
    """The inventory file to read (see the module docstring for the order)."""
    if given is not None:
        return Path(given)
    if os.environ.get("EDGEFM_DEVICES"):
        return Path(os.environ["EDGEFM_DEVICES"])
    for p in (Path("devices.yaml"), Path.home() / ".config" / "edgefm" / "devices.yaml"):
        if p.is_file():
            return p
    raise ConfigError("no device inventory: write devices.yaml (see README, 'Benchmark a fleet of boards') "
                      "or pass --inventory FILE")


def load_inventory(path: Optional[Path] = None) -> Inventory:
    """Read and validate the inventory; every error names the file and the bad field."""
    p = inventory_path(path)
    from edgefm.config import read_yaml_mapping

    data = read_yaml_mapping(p, "device inventory", "a mapping with a 'devices:' list")
    try:
        inv = Inventory.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"device inventory {p}: {describe_validation(e)}") from None
    inv.path = str(p)
    from edgefm.errors import TargetError
    from edgefm.targets import get_target

    for d in inv.devices:
        if d.target:
            try:
                get_target(d.target)
            except TargetError as e:
                raise ConfigError(f"device inventory {p}: device '{d.name}': {e}") from None
    if inv.ssh_config:  # relative to the inventory, so a project can keep both side by side
        cfg = Path(inv.ssh_config).expanduser()
        inv.ssh_config = str(cfg if cfg.is_absolute() else p.parent / cfg)
    return inv
