"""The system OpenSSH client, driven through subprocess, so ``~/.ssh/config``, keys, agents and jump hosts
behave as the user expects. Host keys are always checked (``StrictHostKeyChecking=yes``): an unknown or
changed host key is an error telling the user to add the key to known_hosts, never accepted silently.
``BatchMode=yes`` makes ssh fail instead of prompting for a password."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from typing import BinaryIO, Optional, Sequence, Union

from edgefm.devices.inventory import Device
from edgefm.errors import DeviceError

#: ssh's exit status for a connection or authentication failure (a remote command's own status otherwise).
SSH_FAILED = 255


def remote_path(path: str) -> str:
    """A shell word for a device path: ``~/x`` becomes ``"$HOME"/'x'`` (quoting would stop tilde expansion)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def remote_command(words: Sequence[str]) -> str:
    """A command line for the device's shell; the first word (the python) may start with ``~/``.
    Every other word is quoted: nothing in a bundle path or option can reach the shell."""
    return " ".join([remote_path(words[0])] + [shlex.quote(str(w)) for w in words[1:]])


class Ssh:
    """Commands on one device over the system ``ssh``."""

    def __init__(self, device: Device, ssh_config: Optional[str] = None):
        if shutil.which("ssh") is None:
            raise DeviceError("the OpenSSH client 'ssh' is not installed here (Debian/Ubuntu: apt install "
                              "openssh-client)")
        self.device = device
        self.ssh_config = ssh_config

    def argv(self, command: str) -> list[str]:
        d = self.device
        argv = ["ssh"] + (["-F", self.ssh_config] if self.ssh_config else [])
        argv += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={d.connect_timeout}",
                 "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
        if d.port:
            argv += ["-p", str(d.port)]
        if d.user:
            argv += ["-l", d.user]
        if d.identity:
            argv += ["-i", d.identity, "-o", "IdentitiesOnly=yes"]
        return argv + ["--", d.host, command]

    def run(self, words: Sequence[str], stdin: Union[bytes, BinaryIO, None] = None, timeout: Optional[float] = None,
            check: bool = True, what: str = "") -> subprocess.CompletedProcess:
        """Run one edgefm command (``words``, quoted here) on the device; stdout/stderr captured as bytes.
        ``stdin``: bytes, or an open file streamed to the command. A connection failure always raises; a
        failing command raises when ``check``; a device without edgefm says how to set it up."""
        cmd = remote_command(words)
        feed = {"stdin": stdin} if hasattr(stdin, "read") else {"input": stdin if stdin is not None else b""}
        try:
            r = subprocess.run(self.argv(cmd), capture_output=True, timeout=timeout, **feed)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"device {self.device.name}: {what or words[-1]} did not finish within "
                              f"{timeout:.0f} s") from None
        err = r.stderr.decode(errors="replace")
        if r.returncode == SSH_FAILED:
            raise DeviceError(self._connection_error(err))
        if check and r.returncode != 0 and ("No module named 'edgefm" in err or r.returncode == 127):
            raise DeviceError(f"device {self.device.name}: edgefm is not installed for {words[0]} there; run: "
                              f"edgefm devices setup {self.device.name} (then set its python: in the inventory)")
        if check and r.returncode != 0:
            raise DeviceError(f"device {self.device.name}: {what or ' '.join(words[1:3])} failed "
                              f"(exit {r.returncode}): {last_error_line(err) or 'no message'}")
        return r

    def _connection_error(self, err: str) -> str:
        d = self.device
        low = err.lower()
        if "host key verification failed" in low or "no matching host key" in low or "host key is known" in low:
            return (f"device {d.name}: the host key of '{d.host}' is not in known_hosts (or has changed); edgefm never "
                    f"accepts host keys by itself. Check the key, then add it: "
                    f"ssh-keyscan {d.host} >> ~/.ssh/known_hosts"
                    f" (or connect once with ssh {d.host})")
        if "permission denied" in low:
            return (f"device {d.name}: SSH login to '{d.host}' refused (no usable key; edgefm uses BatchMode and never "
                    f"asks for a password): add your key with ssh-copy-id {d.host}")
        if "could not resolve" in low:
            return f"device {d.name}: host '{d.host}' is unknown (not in the ssh config, not in DNS)"
        return f"device {d.name}: cannot reach '{d.host}' over SSH ({last_error_line(err) or 'connection lost'})"


def last_error_line(text: str) -> str:
    """The line of a remote stderr that says what went wrong: edgefm's ``error:`` line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:") or "Error:" in ln:
            return ln.removeprefix("error:").strip()
    return lines[-1] if lines else ""
