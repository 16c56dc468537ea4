"""``python -m edgefm.devices.agent COMMAND ROOT …``: the device side of edgefm's SSH commands. ROOT is the
device's edgefm workdir (the inventory's ``workdir``); under it:

    objects/<sha256>          every bundle file the host ever pushed, named by its content
    bundles/<manifest sha>/   a bundle rebuilt from objects (immutable; hard links into objects/)
    runs/<id>/                one remote compile's working copy, removed once the host pulled it

Commands (results are JSON on stdout; what edgefm prints on the way goes to stderr):

    have ROOT                          the object and bundle hashes the device holds
    receive ROOT MSHA                  a tar on stdin (objects/<sha>, manifest.json) -> bundles/MSHA
    bench ROOT MSHA -- BENCH-ARGS      ``edgefm bench`` of that bundle; the result JSON
    verify ROOT MSHA -- VERIFY-ARGS    ``edgefm verify``'s checks as JSON
    compile ROOT MSHA -- COMPILE-ARGS  ``edgefm compile`` on a copy; its path and new manifest
    pack ROOT RUN REL…                 a tar of those files of a run's bundle, on stdout
    clean ROOT RUN                     remove a run
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional

from edgefm.pylaunch import python_command

HEX64 = re.compile(r"[0-9a-f]{64}")


class AgentError(Exception):
    pass


def _root(arg: str) -> Path:
    root = Path(arg).expanduser().resolve()
    for sub in ("objects", "bundles", "runs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _sha(path: Path) -> str:
    from edgefm.bundle import sha256_file

    return sha256_file(path)


def _bundle(root: Path, msha: str) -> Path:
    if not HEX64.fullmatch(msha) or not (root / "bundles" / msha / "manifest.json").is_file():
        raise AgentError(f"bundle {msha[:12]} is not on this device (push it first)")
    return root / "bundles" / msha


def have(root: Path) -> dict[str, Any]:
    return {"objects": sorted(p.name for p in (root / "objects").iterdir() if HEX64.fullmatch(p.name)),
            "bundles": sorted(p.name for p in (root / "bundles").iterdir() if HEX64.fullmatch(p.name))}


def receive(root: Path, msha: str, stream) -> dict[str, Any]:
    """Store the pushed objects (each checked against its name) and rebuild the bundle from its manifest."""
    if not HEX64.fullmatch(msha):
        raise AgentError(f"'{msha}' is not a sha256")
    manifest_bytes = None
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            src = tar.extractfile(member)
            if member.name == "manifest.json":
                manifest_bytes = src.read()
                continue
            name = member.name.removeprefix("objects/")
            fd, tmp = tempfile.mkstemp(dir=root / "objects", prefix=".in-")
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as f:  # streamed and hashed on the way: files can be large
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    f.write(block)
            if not HEX64.fullmatch(name) or h.hexdigest() != name:
                os.unlink(tmp)
                raise AgentError(f"object {member.name} arrived damaged (its sha256 differs); push again")
            os.replace(tmp, root / "objects" / name)
    final = root / "bundles" / msha
    if final.is_dir():
        return {"bundle": str(final)}
    if manifest_bytes is None or hashlib.sha256(manifest_bytes).hexdigest() != msha:
        raise AgentError("the manifest did not arrive intact")
    files = json.loads(manifest_bytes)["files"]
    tmp = Path(tempfile.mkdtemp(prefix=f".{msha[:12]}-", dir=root / "bundles"))
    try:
        for rel, digest in files.items():
            src, dst = root / "objects" / digest, tmp / rel
            if not src.is_file() or not dst.resolve().is_relative_to(tmp.resolve()):
                raise AgentError(f"file '{rel}' ({digest[:12]}) is missing from the device's store")
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)  # objects are never written again, so sharing them is safe
            except OSError:
                shutil.copyfile(src, dst)
        (tmp / "manifest.json").write_bytes(manifest_bytes)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"bundle": str(final)}


def _edgefm(args: list[str]) -> None:
    """Run an edgefm command here; what it prints goes to stderr so stdout stays JSON. A failure raises with
    the command's own error line (what the host shows the user)."""
    r = subprocess.run([*python_command(), "-m", "edgefm.cli", *args], stdout=sys.stderr, stderr=subprocess.PIPE,
                       check=False, text=True)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
        why = next((ln.removeprefix("error:").strip() for ln in reversed(lines) if ln.startswith("error:")),
                   lines[-1] if lines else "no message")
        raise AgentError(f"edgefm {args[0]} exited with {r.returncode}: {why}")


def bench(root: Path, msha: str, args: list[str]) -> dict[str, Any]:
    bundle = _bundle(root, msha)
    with tempfile.TemporaryDirectory(dir=root / "runs") as tmp:
        out = Path(tmp) / "bench.json"
        _edgefm(["bench", str(bundle), "--json", str(out), *args])
        if not out.is_file():
            raise AgentError("edgefm bench wrote no result")
        return json.loads(out.read_text())


def verify(root: Path, msha: str, args: list[str]) -> dict[str, Any]:
    import argparse

    from edgefm.verify import verify_bundle

    p = argparse.ArgumentParser(prog="verify")
    p.add_argument("--target", "-t", action="append")
    p.add_argument("--emulate")
    p.add_argument("--cpu")
    ns = p.parse_args(args)
    reports = verify_bundle(_bundle(root, msha), ns.target, emulate=ns.emulate, cpu=ns.cpu)
    return {"reports": [{"target": r.target, "backend": r.backend, "ok": r.ok,
                         "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in r.checks]}
                        for r in reports]}


def compile_(root: Path, msha: str, args: list[str]) -> dict[str, Any]:
    src = _bundle(root, msha)
    run = uuid.uuid4().hex[:12]
    work = root / "runs" / run / "bundle"
    shutil.copytree(src, work)  # a copy: compile rewrites the bundle, the store stays immutable
    try:
        _edgefm(["compile", str(work), *args])
    except AgentError:
        shutil.rmtree(work.parent, ignore_errors=True)
        raise
    return {"run": run, "bundle": str(work), "manifest": json.loads((work / "manifest.json").read_text())}


def pack(root: Path, run: str, rels: list[str], out) -> None:
    base = (root / "runs" / run / "bundle").resolve()
    if not re.fullmatch(r"[0-9a-f]{12}", run) or not base.is_dir():
        raise AgentError(f"run {run} is not on this device")
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for rel in rels:
            p = (base / rel).resolve()
            if not p.is_relative_to(base) or not p.is_file():
                raise AgentError(f"'{rel}' is not a file of run {run}")
            tar.add(p, arcname=rel)


def clean(root: Path, run: str) -> dict[str, Any]:
    if re.fullmatch(r"[0-9a-f]{12}", run):
        shutil.rmtree(root / "runs" / run, ignore_errors=True)
    return {"removed": run}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    if len(argv) < 2:
        print("error: usage: python -m edgefm.devices.agent COMMAND ROOT ...", file=sys.stderr)
        return 2
    cmd, root = argv[0], _root(argv[1])
    args = argv[2:]
    try:
        if cmd == "have":
            result = have(root)
        elif cmd == "receive":
            result = receive(root, args[0], sys.stdin.buffer)
        elif cmd == "bench":
            result = bench(root, args[0], rest)
        elif cmd == "verify":
            result = verify(root, args[0], rest)
        elif cmd == "compile":
            result = compile_(root, args[0], rest)
        elif cmd == "pack":
            pack(root, args[0], args[1:], sys.stdout.buffer)
            return 0
        elif cmd == "clean":
            result = clean(root, args[0])
        else:
            print(f"error: unknown agent command '{cmd}'", file=sys.stderr)
            return 2
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - edgefm's own errors carry a message meant for the user
        from edgefm.errors import EdgefmError

        if isinstance(e, EdgefmError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
