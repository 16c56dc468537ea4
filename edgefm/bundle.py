"""Bundles: a folder with ``manifest.json`` and the artifacts it lists.

Bundles are written to a temporary sibling folder and renamed into place, so an interrupted run never
leaves a half bundle; every file's sha256 is in the manifest and checked on load."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefm.contract import Contract
from edgefm.errors import BundleError
from edgefm.models.spec import ModelSpec

log = logging.getLogger(__name__)
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
    direct: Optional[dict[str, Any]] = Field(
        None, description="The direct check (edgefm.direct): the artifact run by its runtime's own API call after "
                          "call, in order and reversed (runtime, calls, order_identical, the contract's verdict)")
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
    host: dict[str, Any] = Field(default_factory=dict,
                                 description="The CPU every figure in this manifest was measured on (edgefm.hostcaps: "
                                             "arch, cpu_model, int8 isa, caps): latencies and the int8 recipe "
                                             "choices hold for that CPU")
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
    """Read and check ``bundle/manifest.json``: a valid manifest whose every path is a relative path inside
    the bundle (no absolute path, no ``..``, no symlink leading out) and whose artifacts, reference, eval
    data, path-valued options and tokenizer files are all listed (hashed) in ``files``. A bundle is data:
    nothing named in it is imported or run. Raises ``BundleError`` naming the field."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if bundle.is_file():
        raise BundleError(f"{bundle} is a file; a bundle is a folder (the one holding {MANIFEST})")
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle}: no such folder")
    if not path.is_file():
        raise BundleError(f"bundle {bundle}: no {MANIFEST} (is this an edgefm bundle?)")
    _inside(bundle, MANIFEST, MANIFEST)
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except ValidationError as e:
        from edgefm.errors import describe_validation

        raise BundleError(f"bundle {bundle}: {MANIFEST} is not a valid manifest ({describe_validation(e)})") from None
    except (ValueError, OSError) as e:
        raise BundleError(f"bundle {bundle}: {MANIFEST} is not a valid manifest ({str(e).splitlines()[0]})") from None
    check_paths(bundle, manifest)
    return manifest


#: option keys whose value is a file of the bundle (TensorRT: the Q/DQ ONNX, the build settings, the engine)
OPTION_PATHS = ("onnx", "build", "engine")


def _inside(bundle: Path, rel: Any, field: str) -> Path:
    """``bundle/rel`` when ``rel`` is a plain relative path that stays inside the bundle, symlinks resolved."""
    where = f"bundle {bundle}: {MANIFEST} {field}"
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise BundleError(f"{where} = {rel!r}: must be a relative path inside the bundle")
    parts = Path(rel).parts
    if Path(rel).is_absolute() or rel.startswith("~") or ".." in parts or (parts and ":" in parts[0]):
        raise BundleError(f"{where} = {rel!r}: must be a relative path inside the bundle (no absolute path, "
                          f"no '..')")
    root = bundle.resolve()
    target = (bundle / rel).resolve()
    if target != root and root not in target.parents:
        raise BundleError(f"{where} = {rel!r}: leads outside the bundle (through a symlink) to {target}")
    return target


def check_paths(bundle: Path, manifest: Manifest) -> None:
    """Every path the manifest names is inside the bundle and every file a target or the runtime reads is
    listed, with its sha256, in ``files``. Raises ``BundleError`` naming the field."""
    bundle = Path(bundle)
    for rel, digest in manifest.files.items():
        _inside(bundle, rel, f"files[{rel!r}]")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise BundleError(f"bundle {bundle}: {MANIFEST} files[{rel!r}] = {digest!r}: not a sha256 hex digest")

    def listed(rel: Any, field: str) -> None:
        _inside(bundle, rel, field)
        if rel not in manifest.files:
            raise BundleError(f"bundle {bundle}: {MANIFEST} {field} = {rel!r} is not a listed, hashed file of "
                              f"the bundle (not in 'files')")

    for field in ("reference", "eval_data"):
        if getattr(manifest, field) is not None:
            listed(getattr(manifest, field), field)
    for name, entry in manifest.targets.items():
        listed(entry.artifact, f"targets.{name}.artifact")
        for i, rel in enumerate(entry.files):
            listed(rel, f"targets.{name}.files[{i}]")
        for key in OPTION_PATHS:
            if entry.options.get(key) is not None:
                listed(entry.options[key], f"targets.{name}.options.{key}")
    tok = manifest.spec.preprocessing.tokenizer
    if tok is not None:
        field = "spec.preprocessing.tokenizer"
        folder = _inside(bundle, tok, field)
        prefix = tok.rstrip("/") + "/"
        if not any(rel.startswith(prefix) for rel in manifest.files):
            raise BundleError(f"bundle {bundle}: {MANIFEST} {field} = {tok!r}: no file of that folder is listed "
                              f"(hashed) in 'files'")
        if folder.is_dir():
            for p in sorted(folder.rglob("*")):
                rel = str(p.relative_to(bundle.resolve()))
                if (p.is_file() or p.is_symlink()) and rel not in manifest.files:
                    raise BundleError(f"bundle {bundle}: tokenizer file '{rel}' is not listed (hashed) in "
                                      f"{MANIFEST}; the tokenizer was changed after the bundle was written")


def verify_files(bundle: Path, manifest: Manifest, only: Optional[list[str]] = None) -> None:
    """Raise ``BundleError`` when a listed file is missing, leads out of the bundle or its sha256 differs."""
    bundle = Path(bundle)
    check_paths(bundle, manifest)
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
    """Files one target needs: its own (artifact, files, path-valued options), the shared reference and
    eval data, and the tokenizer's files."""
    entry = manifest.targets[target]
    shared = [p for p in (manifest.reference, manifest.eval_data) if p]
    opts = [entry.options[k] for k in OPTION_PATHS if isinstance(entry.options.get(k), str)]
    tok = manifest.spec.preprocessing.tokenizer
    tokenizer = [r for r in manifest.files if tok and r.startswith(tok.rstrip("/") + "/")]
    own = set(entry.files) | {entry.artifact} | set(shared) | set(opts) | set(tokenizer)
    # an ONNX file's external data (model.onnx.data) travels with it
    data = {f for f in manifest.files for o in own if o.endswith(".onnx") and f.startswith(o + ".")}
    return sorted(own | data)


#: an .npz may unpack to at most this many times its size on disk (and at least NPZ_MIN_CAP bytes): a
#: crafted 0.5 MB file must not expand to 512 MB; real eval data (floats, token ids) compresses far less
NPZ_RATIO = 64
NPZ_MIN_CAP = 64 << 20


def read_npz(path: Path, what: str = "eval data") -> dict[str, Any]:
    """Every array of an ``.npz``, read without pickle and only after checking that the zip members'
    declared sizes and the arrays' headers stay within ``NPZ_RATIO`` × the file size (``NPZ_MIN_CAP`` at
    least). Raises ``CalibrationError`` naming the file."""
    import zipfile

    import numpy as np

    from edgefm.errors import CalibrationError

    path = Path(path)
    try:
        size = path.stat().st_size
        cap = max(NPZ_RATIO * size, NPZ_MIN_CAP)
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            total = sum(i.file_size for i in infos)
            if total > cap:
                raise CalibrationError(f"{what} {path}: unpacks to {total / 2**20:.0f} MiB from {size / 2**20:.1f} "
                                       f"MiB on disk, more than the {cap / 2**20:.0f} MiB allowed; refused")
            for info in infos:
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = header(f, max_header_size=10000)
                    if dtype.hasobject:
                        raise CalibrationError(f"{what} {path}: array '{info.filename}' holds Python objects "
                                               f"(needs pickle); only numeric arrays are read")
                    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                    if need > info.file_size:
                        raise CalibrationError(f"{what} {path}: array '{info.filename}' declares {need} bytes "
                                               f"but holds {info.file_size}; corrupt or crafted file")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except CalibrationError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CalibrationError(f"{what} {path}: cannot be read as .npz ({why})") from None


def read_eval(bundle: Path, manifest: Manifest) -> tuple[dict, dict, Any]:
    """(inputs, fp32 reference outputs, labels or None) from the bundle's eval data."""
    if not manifest.eval_data:
        raise BundleError(f"bundle {bundle} has no eval data to verify with")
    z = read_npz(Path(bundle) / manifest.eval_data, "bundle eval data")  # no pickle, unpacked size capped
    inputs = {k[3:]: v for k, v in z.items() if k.startswith("in/")}
    ref = {k[4:]: v for k, v in z.items() if k.startswith("ref/")}
    return inputs, ref, z.get("labels")


def finalize(tmp: Path, manifest: Manifest) -> Manifest:
    """Hash every file in ``tmp`` into the manifest and write it."""
    tmp = Path(tmp)
    manifest.files = {str(p.relative_to(tmp)): sha256_file(p)
                      for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return manifest


def check_replaceable(out: Path, force: bool, protect: Iterable[Optional[Path]] = ()) -> None:
    """Raise ``BundleError`` unless ``out`` may be written: it does not exist, or ``force`` is given and it is
    an edgefm bundle (a folder whose ``manifest.json`` is valid and lists every file in it) that holds none
    of the ``protect`` paths (the source, the calibration data …). Touches nothing."""
    out = Path(out)
    if not os.path.lexists(out):
        return
    if not force:
        raise BundleError(f"{out} exists already; pass --force to replace it (only an edgefm bundle is replaced)")
    what = ("a symlink" if out.is_symlink() else "a file" if not out.is_dir() else None)
    if what is None:
        try:
            manifest = read_manifest(out)
        except BundleError as e:
            what = f"a folder that is not a valid edgefm bundle ({e})"
        else:
            stray = [str(p.relative_to(out)) for p in sorted(out.rglob("*"))
                     if not p.is_dir() and p.name != MANIFEST and str(p.relative_to(out)) not in manifest.files]
            if stray:
                what = f"a folder with files no edgefm bundle lists ({', '.join(stray[:3])})"
    if what is None:
        root = out.resolve()
        for p in protect:
            if p is not None and (Path(p).resolve() == root or root in Path(p).resolve().parents):
                what = f"the folder holding {p}, an input of this run"
                break
    if what is not None:
        raise BundleError(f"--output {out} is {what}; --force only replaces an edgefm bundle, so nothing was "
                          f"touched. Choose another --output")


# Staging and replaced-bundle folders carry their writer's pid and that process's start time, so a later run
# can tell a killed run's leftovers (pid gone, or reused by another process) from a live run's.
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.edgefm-(?P<kind>staging|old)-(?P<pid>\d+)-(?P<start>\d+)-\w+$")


def _start_time(pid: int) -> Optional[str]:
    """A process's start time (clock ticks since boot, from /proc) as a string; None when no such process.
    Without /proc: "0" for any live pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
    except (OSError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:
        pass
    return "0"


def reap_stale(parent: Path) -> list[Path]:
    """Remove staging folders in ``parent`` left by runs that were killed (SIGKILL, power loss): those whose
    writer pid is gone or now belongs to a process started at another time. Returns what was removed."""
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _LEFTOVER.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and _start_time(int(m["pid"])) != m["start"]:
            out = p.parent / m["name"]
            if m["kind"] == "old" and not os.path.lexists(out):
                p.rename(out)  # killed between moving the old bundle aside and putting the new one in place
                log.info("restored %s from %s, left by a run that was killed", out, p)
                continue
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed %s, left by a run that was killed", p)
            removed.append(p)
    return removed


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Hold ``.<name>.edgefm-lock`` beside ``out`` (flock, released by the kernel if this process dies).
    A second writer of the same ``out`` fails at once instead of silently replacing the first one's bundle."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): single-writer use only
        yield
        return
    path = out.parent / f".{out.name}.edgefm-lock"
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BundleError(f"{out}: another edgefm run (pid {holder}) is writing this bundle now; wait for it "
                              f"to finish or choose another --output") from None
        try:  # the file we locked must still be the one at ``path`` (its last holder unlinks it on exit)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise BundleError(f"{out}: could not take the lock {path}")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _sigterm_handler(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _plain_sigterm_in_child() -> None:
    """A process forked while our handler is installed (a library's multiprocessing worker: OpenVINO's
    telemetry sender forks one per event) gets SIGTERM's default action back. Our handler is Python code: a
    forked child stuck on a lock another thread held at the fork never runs it, so ``terminate()`` could not end
    it and its parent waited forever (seen once in CI, after the test summary)."""
    if signal.getsignal(signal.SIGTERM) is _sigterm_handler:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_plain_sigterm_in_child)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a container stop) unwinds like Ctrl-C, so the staging folder is removed either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    old = signal.signal(signal.SIGTERM, _sigterm_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def staging(out: Path, force: bool = False, protect: Iterable[Optional[Path]] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it is renamed to ``out``, on failure (an error,
    Ctrl-C or SIGTERM) removed. ``out`` existing is refused unless ``force`` and it is an edgefm bundle
    (``check_replaceable``); the old bundle is only removed once the new one is complete. One writer per
    ``out`` at a time (a lock); staging folders of killed runs are reaped first. A full disk is one
    ``BundleError`` with nothing left behind."""
    out = Path(out).absolute()
    check_replaceable(out, force, protect)
    out.parent.mkdir(parents=True, exist_ok=True)
    reap_stale(out.parent)
    tag = f"{os.getpid()}-{_start_time(os.getpid()) or 0}"
    with sigterm_as_interrupt(), _lock(out):
        check_replaceable(out, force, protect)  # again, now that no other edgefm run can change it
        tmp = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.edgefm-staging-{tag}-", dir=out.parent))
            yield tmp
            if not (tmp / MANIFEST).is_file():
                raise BundleError(f"internal: bundle for {out} was not finalized")
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a bundle gets the user's usual permissions
            check_replaceable(out, force, protect)
            old = None
            if os.path.lexists(out):
                old = out.parent / f".{out.name}.edgefm-old-{tag}-{tmp.name.rsplit('-', 1)[-1]}"
                out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                if old is not None:  # put the old bundle back: a failed replace loses nothing
                    old.rename(out)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BundleError(f"{out}: no space left on the device while writing {e.filename or 'the bundle'}; "
                                  f"nothing was written. Free some space or choose another --output") from None
            raise
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise


def manifest_summary(manifest: Manifest) -> dict[str, Any]:
    """A compact dict for logs and JSON output."""
    return json.loads(manifest.model_dump_json(include={"source", "targets", "reference"}))
