"""Bundles: a folder with ``manifest.json`` and the artifacts it lists.

Bundles are written to a temporary sibling folder and renamed into place, so an interrupted run never
leaves a half bundle; every file's sha256 is in the manifest and checked on load."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefm.contract import Contract
from edgefm.errors import BundleError
from edgefm.models.spec import ModelSpec

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder (sorted relative names and contents)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


class StageRecord(BaseModel):
    """What one stage did: its settings, input/output hashes, time taken and fidelity to fp32."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="export, quantize, compile, prune, distill …")
    target: Optional[str] = Field(None, description="Target the stage ran for; None for shared stages")
    settings: dict[str, Any] = Field(default_factory=dict)
    input_sha256: Optional[str] = None
    output_sha256: Optional[str] = None
    seconds: float = 0.0
    metrics: dict[str, Any] = Field(default_factory=dict,
                                    description="Fidelity to the fp32 reference (per output) and accuracy")
    notes: list[str] = Field(default_factory=list, description="Decisions taken, fallbacks applied")


class TargetEntry(BaseModel):
    """One compiled target inside the bundle."""

    model_config = ConfigDict(extra="forbid")
    backend: str
    precision: str
    device: str = "cpu"
    artifact: str = Field(description="Main artifact, relative to the bundle")
    files: list[str] = Field(default_factory=list, description="Every file of this target (incl. artifact)")
    runtime_versions: dict[str, str] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict, description="Backend settings the Predictor needs")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Fidelity/accuracy against fp32")
    hardware: dict[str, Any] = Field(default_factory=dict,
                                     description="What the artifact was built for/on (GPU, versions …)")
    kept_in_float: list[str] = Field(default_factory=list,
                                     description="Nodes/layers/ops the accuracy fallback (--max-accuracy-drop) kept "
                                                 "out of int8, in the backend's own names")
    fallback: Optional[dict[str, Any]] = Field(
        None, description="The accuracy fallback's record: rounds (what was kept, the verdict after), budget, "
                          "the precision kept parts run in; None when it did not run")
    contract: Optional[Contract] = Field(None, description="The accuracy contract this target was built and "
                                                           "checked against (None in bundles made before it)")
    notes: list[str] = Field(default_factory=list, description="What a user of this artifact should know (e.g. an "
                                                               "int8 artifact no smaller than fp32)")


class FailedTarget(BaseModel):
    """A target asked for that could not be built; the other targets of the bundle are unaffected."""

    model_config = ConfigDict(extra="forbid")
    backend: str
    precision: str
    error: str = Field(description="Exception type, e.g. AccuracyError")
    reason: str = Field(description="The one-line message the user saw")
    contract: Optional[Contract] = None


class SourceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    kind: str
    sha256: Optional[str] = None


class Manifest(BaseModel):
    """The bundle's ``manifest.json``."""

    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    edgefm_version: str
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    source: SourceInfo
    spec: ModelSpec
    config: dict[str, Any] = Field(default_factory=dict, description="The resolved CompressConfig")
    reference: Optional[str] = Field(None, description="The verified fp32 ONNX, relative to the bundle")
    eval_data: Optional[str] = Field(None, description=".npz with eval inputs, labels and fp32 reference outputs")
    targets: dict[str, TargetEntry] = Field(default_factory=dict)
    failed: dict[str, FailedTarget] = Field(default_factory=dict,
                                            description="Targets that were asked for and failed, with the reason")
    stages: list[StageRecord] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256 of every file")


def read_manifest(bundle: Path) -> Manifest:
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle}: no such folder")
    if not path.is_file():
        raise BundleError(f"bundle {bundle}: no {MANIFEST} (is this an edgefm bundle?)")
    try:
        return Manifest.model_validate_json(path.read_text())
    except (ValidationError, ValueError) as e:
        raise BundleError(f"bundle {bundle}: {MANIFEST} is not a valid manifest ({str(e).splitlines()[0]})") from None


def verify_files(bundle: Path, manifest: Manifest, only: Optional[list[str]] = None) -> None:
    """Raise ``BundleError`` when a listed file is missing or its sha256 differs."""
    bundle = Path(bundle)
    for rel, digest in manifest.files.items():
        if only is not None and rel not in only:
            continue
        p = bundle / rel
        if not p.is_file():
            raise BundleError(f"bundle {bundle}: file '{rel}' listed in the manifest is missing")
        if sha256_file(p) != digest:
            raise BundleError(f"bundle {bundle}: file '{rel}' was modified after the bundle was written "
                              f"(sha256 differs from the manifest)")


def target_files(manifest: Manifest, target: str) -> list[str]:
    """Files one target needs (its own, plus the shared reference and eval data)."""
    entry = manifest.targets[target]
    shared = [p for p in (manifest.reference, manifest.eval_data) if p]
    return sorted(set(entry.files) | {entry.artifact} | set(shared))


def read_eval(bundle: Path, manifest: Manifest) -> tuple[dict, dict, Any]:
    """(inputs, fp32 reference outputs, labels or None) from the bundle's eval data."""
    import numpy as np

    if not manifest.eval_data:
        raise BundleError(f"bundle {bundle} has no eval data to verify with")
    with np.load(Path(bundle) / manifest.eval_data) as z:
        inputs = {k[3:]: z[k] for k in z.files if k.startswith("in/")}
        ref = {k[4:]: z[k] for k in z.files if k.startswith("ref/")}
        labels = z["labels"] if "labels" in z.files else None
    return inputs, ref, labels


def finalize(tmp: Path, manifest: Manifest) -> Manifest:
    """Hash every file in ``tmp`` into the manifest and write it."""
    tmp = Path(tmp)
    manifest.files = {str(p.relative_to(tmp)): sha256_file(p)
                      for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return manifest


@contextlib.contextmanager
def staging(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it is renamed to ``out``, on failure removed.

    ``out`` existing is refused unless ``force``; with ``force`` the old bundle is only removed once the
    new one is complete."""
    out = Path(out).resolve()
    if out.exists() and not force:
        raise BundleError(f"{out} exists already; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            raise BundleError(f"internal: bundle for {out} was not finalized")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a bundle gets the user's usual permissions
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{tmp.name[-8:]}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def manifest_summary(manifest: Manifest) -> dict[str, Any]:
    """A compact dict for logs and JSON output."""
    return json.loads(manifest.model_dump_json(include={"source", "targets", "reference"}))
