"""Host side: push a bundle to a device (content-addressed), run edgefm there, pull results back.

A push sends only the files the device lacks: the manifest's sha256s name the files, the device lists the
objects it holds (``agent have``), and the missing ones travel as one tar over the SSH channel into the
device's store, where ``bundles/<manifest sha256>/`` is rebuilt. Pushing an unchanged bundle again sends
nothing but the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

from edgefm.bundle import MANIFEST, read_manifest, verify_files
from edgefm.devices.inventory import Device, Inventory
from edgefm.devices.ssh import Ssh
from edgefm.errors import BundleError, DeviceError, EdgefmError

T = TypeVar("T")
AGENT = "edgefm.devices.agent"


@dataclass
class Pushed:
    """Where a bundle is on a device, and what it took to get it there."""

    manifest_sha: str
    path: str
    sent_files: int
    sent_bytes: int
    total_files: int


@dataclass
class Outcome:
    """One device's result in a fleet run: ``value`` on success, ``error`` (one line) otherwise."""

    device: str
    value: Any = None
    error: Optional[str] = None
    pushed: Optional[Pushed] = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class Remote:
    """edgefm on one device."""

    def __init__(self, device: Device, inventory: Optional[Inventory] = None):
        self.device = device
        self.ssh = Ssh(device, inventory.ssh_config if inventory else None)

    def _agent(self, cmd: str, *args: str, rest: Sequence[str] = (), stdin=None,
               timeout: Optional[float] = None) -> Any:
        words = [self.device.python, "-m", AGENT, cmd, self.device.workdir, *args] + (["--", *rest] if rest else [])
        r = self.ssh.run(words, stdin=stdin, timeout=timeout, what=f"edgefm {cmd}")
        return r.stdout if cmd == "pack" else json.loads(r.stdout or b"null")

    def probe(self) -> dict[str, Any]:
        """The device's probe JSON (``python -m edgefm.devices.probe``)."""
        r = self.ssh.run([self.device.python, "-m", "edgefm.devices.probe", self.device.workdir], check=False,
                         timeout=120, what="probe")
        if r.returncode != 0:
            err = r.stderr.decode(errors="replace")
            if "No module named 'edgefm" in err or r.returncode == 127:
                raise DeviceError(f"device {self.device.name}: edgefm is not installed for {self.device.python} "
                                  f"there; run: edgefm devices setup {self.device.name} (then set its python: in "
                                  f"the inventory)")
            raise DeviceError(f"device {self.device.name}: probe failed (exit {r.returncode}): "
                              f"{err.strip().splitlines()[-1] if err.strip() else 'no message'}")
        return json.loads(r.stdout)

    def push(self, bundle: Path) -> Pushed:
        """Make ``bundle`` present on the device (checked against its manifest first); send only what is missing."""
        bundle = Path(bundle)
        manifest = read_manifest(bundle)
        verify_files(bundle, manifest)  # never ship a bundle that was changed after it was written
        raw = (bundle / MANIFEST).read_bytes()
        msha = hashlib.sha256(raw).hexdigest()
        held = self._agent("have")
        if msha in held["bundles"]:
            return Pushed(msha, str(Path(self.device.workdir) / "bundles" / msha), 0, 0, len(manifest.files))
        have = set(held["objects"])
        missing = {digest: rel for rel, digest in manifest.files.items() if digest not in have}
        with tempfile.TemporaryFile() as buf:  # streamed from disk: bundles can be larger than memory allows
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for digest, rel in sorted(missing.items()):
                    tar.add(bundle / rel, arcname=f"objects/{digest}")
                info = tarfile.TarInfo(MANIFEST)
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
            size = buf.tell()
            buf.seek(0)
            got = self._agent("receive", msha, stdin=buf, timeout=max(120.0, size / 1e6))
        return Pushed(msha, got["bundle"], len(missing), sum((bundle / r).stat().st_size for r in missing.values()),
                      len(manifest.files))

    def bench(self, bundle: Path, args: Sequence[str] = ()):
        """Push and run ``edgefm bench`` on the device; the result, marked with the device's name."""
        from edgefm.bench.schema import BenchResult

        pushed = self.push(bundle)
        data = self._agent("bench", pushed.manifest_sha, rest=list(args))
        data["device_name"] = self.device.name
        if data.get("bundle"):
            data["bundle"]["path"] = str(bundle)  # the host's path: the device's is a store folder
        try:
            return BenchResult.model_validate(data), pushed
        except ValueError as e:
            raise DeviceError(f"device {self.device.name}: its bench result does not fit this edgefm's schema "
                              f"({str(e).splitlines()[0]}); run edgefm devices setup {self.device.name}") from None

    def verify(self, bundle: Path, args: Sequence[str] = ()) -> tuple[list[dict], Pushed]:
        pushed = self.push(bundle)
        return self._agent("verify", pushed.manifest_sha, rest=list(args))["reports"], pushed

    def compile(self, bundle: Path, out: Path, args: Sequence[str] = ()) -> tuple[Path, Pushed]:
        """Build on the device (``edgefm compile``) and pull what it made into a NEW bundle ``out``."""
        pushed = self.push(bundle)
        res = self._agent("compile", pushed.manifest_sha, rest=list(args), timeout=3600)
        try:
            path = self.pull_revision(bundle, res["run"], res["manifest"], out)
        finally:
            self._agent("clean", res["run"])
        return path, pushed

    def pull_revision(self, source: Path, run: str, manifest_data: dict, out: Path) -> Path:
        """Write ``out``: the device's bundle of ``run`` — files the host has (same sha256) are copied from
        ``source``, the others pulled — checked against the device's manifest, plus a stage naming the device."""
        from edgefm.bundle import Manifest, StageRecord, sha256_file, staging

        source = Path(source)
        manifest = Manifest.model_validate(manifest_data)
        local = {d: r for r, d in read_manifest(source).files.items()}
        need = sorted(r for r, d in manifest.files.items() if d not in local)
        with staging(out) as tmp:
            for rel, digest in manifest.files.items():
                if digest in local:
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source / local[digest], tmp / rel)
            if need:
                blob = self._agent("pack", run, *need, timeout=3600)
                with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
                    for member in tar:
                        if member.name not in need or not member.isfile():
                            raise DeviceError(f"device {self.device.name}: sent '{member.name}', not asked for")
                        (tmp / member.name).parent.mkdir(parents=True, exist_ok=True)
                        (tmp / member.name).write_bytes(tar.extractfile(member).read())
            for rel, digest in manifest.files.items():
                if sha256_file(tmp / rel) != digest:
                    raise BundleError(f"device {self.device.name}: '{rel}' arrived damaged (sha256 differs from the "
                                      f"device's manifest); nothing was written")
            manifest.stages.append(StageRecord(
                name="remote-build", settings={"device": self.device.name, "host": self.device.host,
                                               "pulled": need, "from_manifest": _manifest_sha(source)},
                notes=[f"built on device {self.device.name}; {len(need)} new file(s) pulled back"]))
            (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))  # files dict is the device's, checked
        return Path(out)


def _manifest_sha(bundle: Path) -> str:
    return hashlib.sha256((Path(bundle) / MANIFEST).read_bytes()).hexdigest()


def on_devices(devices: Sequence[Device], inventory: Optional[Inventory], fn: Callable[[Remote], T],
               progress: Optional[Callable[[str], None]] = None) -> list[Outcome]:
    """``fn`` on every device at once (one thread each, as the work is on the devices); a device that fails
    or drops gives an Outcome with its error while the others finish. Results keep the devices' order."""

    def one(d: Device) -> Outcome:
        try:
            value = fn(Remote(d, inventory))
            if progress:
                progress(f"{d.name}: done")
            return Outcome(d.name, value=value)
        except EdgefmError as e:
            if progress:
                progress(f"{d.name}: failed: {e}")
            return Outcome(d.name, error=str(e))

    if not devices:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(devices))) as pool:
        return list(pool.map(one, devices))
