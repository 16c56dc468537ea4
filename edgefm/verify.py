"""``edgefm verify``: check a bundle where it will run.

For each target: the files match their sha256; the artifact runs in its runtime on the bundle's eval data
and stays within the manifest's limits of the fp32 reference; run by its runtime's own API call after call,
in order and reversed, it gives identical outputs that pass the same contract (``edgefm.direct``); the backend's own rules hold (e.g. TensorRT's
Q/DQ rules), and — when asked — the artifact runs under emulation of another CPU architecture with the same
results. A backend declares the last two in its ``CAPABILITIES`` (``check_rules``, ``verify_emulated``).

Fidelity is judged by the contract recorded in the target's manifest entry (the limits the bundle was built
with), never re-derived; bundles made before the contract existed get it derived from their recorded config,
and the report says so. A user metric named in the manifest is never imported here (user code runs at
compress time only): its recorded gate stands and the report says it was not re-run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgefm.backends import get_backend
from edgefm.backends.base import has
from edgefm.bundle import Manifest, read_manifest, target_files, verify_files
from edgefm.bundle import read_eval as bundle_read_eval
from edgefm.contract import enforce, judge, recorded, summarize
from edgefm.errors import BundleError, ConfigError, EdgefmError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    skipped: bool = False  # nothing to check (e.g. a target that failed at compress time), not a pass


@dataclass
class TargetReport:
    target: str
    backend: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def read_eval(bundle: Path, manifest: Manifest) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Any]:
    """(inputs, fp32 reference outputs, labels or None) from the bundle's eval.npz (see ``bundle.read_eval``)."""
    return bundle_read_eval(bundle, manifest)


def _run_all(predictor, inputs: dict[str, np.ndarray], batch: int = 32) -> dict[str, np.ndarray]:
    """Every eval sample through ``predictor``, on each input's batch axis; streams chunk by chunk with the
    state fed back (the manifest's spec says which)."""
    from edgefm.backends.base import Samples

    return Samples.for_spec(predictor.spec, inputs).run(predictor, batch)


def verify_target(bundle: Path, manifest: Manifest, name: str, emulate: Optional[str] = None,
                  cpu: Optional[str] = None) -> TargetReport:
    from edgefm.runtime import load

    entry = manifest.targets[name]
    report = TargetReport(name, entry.backend)
    try:
        verify_files(bundle, manifest, only=target_files(manifest, name))
        report.checks.append(Check("integrity", True, "every file matches its sha256"))
    except BundleError as e:
        report.checks.append(Check("integrity", False, str(e)))
        return report
    backend = get_backend(entry.backend, need_runtime=False)
    inputs, ref, labels = read_eval(bundle, manifest)
    contract, how = recorded(manifest, name)
    if backend.is_available():
        try:
            got = _run_all(load(bundle, name, verify=False), inputs)
            verdict = judge(contract, ref, got, labels, inputs)
            enforce(f"{name} on this machine ({how})", verdict)
            extra = "".join(f"; {n}" for n in verdict.notes)
            report.checks.append(Check("fidelity", True, f"{summarize(verdict.metrics)} ({how}{extra})"))
        except EdgefmError as e:
            report.checks.append(Check("fidelity", False, str(e)))
    else:
        report.checks.append(Check("fidelity", True, f"skipped: the {entry.backend} runtime is not installed here"))
    report.checks.append(_direct(bundle, manifest, name))
    if has(backend, "check_rules"):
        try:
            violations = backend.check_rules(bundle, name, entry, manifest)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # options the manifest got wrong
            key = e.args[0] if isinstance(e, KeyError) and e.args else str(e).splitlines()[0][:200]
            violations = [f"manifest.json targets.{name}.options is invalid for the {entry.backend} backend "
                          f"({type(e).__name__}: {key!r})"]
        report.checks.append(Check("rules", not violations, "; ".join(violations) or "all rules hold"))
    if emulate:
        if not has(backend, "verify_emulated"):
            report.checks.append(Check(f"emulate {emulate}", False,
                                       f"the {entry.backend} backend has no emulated run"))
        else:
            ok, detail = backend.verify_emulated(bundle, name, arch=emulate, cpu=cpu)
            report.checks.append(Check(f"emulate {emulate}", ok, detail))
    return report


def _direct(bundle: Path, manifest: Manifest, name: str) -> Check:
    """The artifact run by its runtime's own API, call after call in order and reversed (edgefm.direct)."""
    from edgefm.direct import check_target

    res = check_target(bundle, manifest, name)
    return Check("direct", res.ok is not False, res.detail, skipped=res.ok is None)


def verify_bundle(bundle: Path, targets: Optional[list[str]] = None, emulate: Optional[str] = None,
                  cpu: Optional[str] = None) -> list[TargetReport]:
    """Verify the named targets (default: all) of ``bundle``."""
    bundle = Path(bundle)
    if emulate is not None:
        from edgefm.emulate import ARCHES

        if emulate not in ARCHES:  # before anything runs, not as a FAIL row per target
            raise ConfigError(f"--emulate '{emulate}': only {' / '.join(ARCHES)} can be emulated")
    manifest = read_manifest(bundle)
    names = targets or list(manifest.targets) + list(manifest.failed)
    reports = []
    for t in names:
        if t in manifest.failed and t not in manifest.targets:
            # not in the bundle: the targets it holds still verify; asking for this one by name does not
            f = manifest.failed[t]
            reports.append(TargetReport(t, f.backend, [Check("built", not targets, f"failed at compress time, not in "
                                                                                    f"the bundle: {f.reason}",
                                                             skipped=not targets)]))
        elif t in manifest.targets:
            reports.append(verify_target(bundle, manifest, t, emulate, cpu))
        else:
            reports.append(_rules_for_other_device(bundle, manifest, t))
    return reports


def _rules_for_other_device(bundle: Path, manifest: Manifest, name: str) -> TargetReport:
    """A target the bundle was not built for: only its rules can be checked (e.g. a bundle made for Orin,
    checked against what Xavier's TensorRT accepts). Backends opt in with ``check_rules_for``."""
    from edgefm.targets import get_target

    spec = get_target(name)
    same = [n for n, e in manifest.targets.items() if e.backend == spec.backend]
    backend = get_backend(spec.backend, need_runtime=False)
    if not same or not has(backend, "check_rules_for"):
        raise BundleError(f"bundle {bundle} has no target {name!r}; it has: {', '.join(manifest.targets)}")
    violations = backend.check_rules_for(bundle, same[0], spec)
    detail = (f"{same[0]} checked against {name}'s rules: " + ("; ".join(violations) or "all rules hold"))
    return TargetReport(name, spec.backend, [Check("rules", not violations, detail)])
