"""``edgefm verify BUNDLE --emulate arm64``: run a bundle's ``.tflite`` with the arm64 build of LiteRT under
qemu on the bundle's eval data and compare it with the x86 run of the same file (see ``arm64`` for how).

Both sides run ``edgefm/backends/tflite_run.py`` (the Predictor's own code), so a difference means the
ARM kernels compute something else than the x86 ones."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgefm.errors import BundleError, ConfigError

ARCHES = ("arm64", "aarch64")
DEFAULT_CORE = "cortex-a72"


@dataclass
class EmulationReport:
    """What the emulated run gave against the x86 run; ``ok`` when every logits output has the same
    top-1 on every sample and every other output has cosine >= 0.999 (min over samples)."""

    bundle: str
    target: str
    artifact: str
    arch: str
    cpu: str
    samples: int
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)  # per output: max_abs, top1_agreement, min_cosine
    accuracy: dict[str, float] = field(default_factory=dict)  # top1 x86 / arm64 (with labels)
    versions: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(m.get("top1_agreement", 1.0) == 1.0 and m["min_cosine"] >= 0.999 for m in self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        parts = [f"{self.target} on emulated {self.arch} {self.cpu}: {self.samples} samples"]
        for name, m in self.outputs.items():
            top = f", top-1 agreement {m['top1_agreement']:.4f}" if "top1_agreement" in m else ""
            parts.append(f"'{name}' max |arm64 - x86| {m['max_abs']:.3g}{top}, min cosine {m['min_cosine']:.6f}")
        if self.accuracy:
            parts.append(f"top-1 x86 {self.accuracy['x86_top1']:.4f} / arm64 {self.accuracy['arm64_top1']:.4f}")
        return "; ".join(parts) + (" — OK" if self.ok else " — DIFFERENT")


def _tflite_target(manifest, target: Optional[str], bundle: Path) -> str:
    tfl = [n for n, e in manifest.targets.items() if e.backend == "tflite"]
    if target is None:
        if not tfl:
            raise BundleError(f"bundle {bundle} has no tflite target to emulate (targets: {', '.join(manifest.targets)})")
        return tfl[0]
    if target not in manifest.targets:
        raise BundleError(f"bundle {bundle} has no target '{target}'; it has: {', '.join(manifest.targets)}")
    if target not in tfl:
        raise BundleError(f"target '{target}' of {bundle} is a {manifest.targets[target].backend} target; "
                          f"emulation runs .tflite artifacts (tflite targets: {', '.join(tfl) or 'none'})")
    return target


def verify_emulated(bundle: str | Path, target: Optional[str] = None, arch: str = "arm64", cpu: Optional[str] = None,
                    max_samples: Optional[int] = None, progress=None) -> EmulationReport:
    """Run the bundle's ``.tflite`` (``target``, default: its first tflite target) on an emulated ``arch`` CPU
    ``cpu`` (default: the target's ``cpu_core``, else cortex-a72) over the bundle's eval data, and the same
    file on this machine; return how the two differ. Builds the arm64 root on first use."""
    from edgefm.backends.tflite_run import Runner
    from edgefm.bundle import read_manifest, read_npz, target_files, verify_files
    from edgefm.emulate import arm64
    from edgefm.fidelity import compare

    t0 = time.time()
    if arch not in ARCHES:
        raise ConfigError(f"--emulate '{arch}': only arm64 can be emulated")
    bundle = Path(bundle).resolve()  # the emulated process runs in a temporary folder
    manifest = read_manifest(bundle)
    name = _tflite_target(manifest, target, bundle)
    entry = manifest.targets[name]
    verify_files(bundle, manifest, only=target_files(manifest, name))
    cpu = arm64.check_core(cpu or entry.hardware.get("cpu_core") or DEFAULT_CORE)
    if not manifest.eval_data:
        raise BundleError(f"bundle {bundle} has no eval data to run")
    data = read_npz(bundle / manifest.eval_data, "bundle eval data")  # no pickle, unpacked size capped
    missing = [s.name for s in manifest.spec.inputs if f"in/{s.name}" not in data]
    if missing:
        raise BundleError(f"bundle {bundle}: {manifest.eval_data} has no arrays for inputs {missing}")
    feed = {s.name: data[f"in/{s.name}"][:max_samples].astype(s.dtype) for s in manifest.spec.inputs}
    labels = data["labels"][:max_samples] if "labels" in data else None
    root = arm64.ensure_root(progress)
    with tempfile.TemporaryDirectory(prefix="edgefm-emulate-") as tmp:
        work = Path(tmp)
        script = work / "tflite_run.py"  # alone in its folder: nothing of edgefm shadows the arm64 imports
        shutil.copyfile(Path(__file__).resolve().parents[1] / "backends" / "tflite_run.py", script)
        np.savez(work / "in.npz", **{f"in/{k}": v for k, v in feed.items()})
        model = bundle / entry.artifact
        if progress:
            progress(f"running {entry.artifact} on emulated {cpu}")
        out = arm64.run_python(root, cpu, script, [str(model), str(work / "in.npz"), str(work / "out.npz"),
                                                    "--threads", "1"])
        arm = {k[4:]: v for k, v in np.load(work / "out.npz").items()}
    x86 = Runner(str(model), 1).run(feed)
    outputs = compare(x86, arm, manifest.spec)
    report = EmulationReport(bundle=str(bundle), target=name, artifact=entry.artifact, arch="arm64", cpu=cpu,
                             samples=len(next(iter(feed.values()))),
                             outputs={k: {m: v[m] for m in ("max_abs", "top1_agreement", "min_cosine") if m in v}
                                      for k, v in outputs.items()},
                             versions={"arm64": json.loads(out.strip().splitlines()[-1]), "qemu": _qemu_version()})
    logits = [o.name for o in manifest.spec.outputs if o.kind == "logits"]
    if labels is not None and logits:
        report.accuracy = {"x86_top1": float((x86[logits[0]].argmax(-1) == labels).mean()),
                           "arm64_top1": float((arm[logits[0]].argmax(-1) == labels).mean())}
    report.seconds = round(time.time() - t0, 2)
    return report


def _qemu_version() -> str:
    import subprocess

    from edgefm.emulate.arm64 import qemu

    return subprocess.run([qemu(), "--version"], capture_output=True, text=True).stdout.splitlines()[0]


__all__ = ["EmulationReport", "verify_emulated"]
