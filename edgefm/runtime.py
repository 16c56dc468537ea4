"""``edgefm.load(bundle)``: verify a bundle and return a Predictor for one of its targets.

This module must not import torch: it is what runs on the device."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from edgefm.backends import get_backend
from edgefm.bundle import Manifest, read_manifest, target_files, verify_files
from edgefm.errors import BundleError
from edgefm.predictor import BasePredictor, LoadOptions, Predictor  # noqa: F401 - BasePredictor re-exported

log = logging.getLogger(__name__)


def choose_target(manifest: Manifest, target: Optional[str], bundle: Path) -> str:
    if target is not None:
        if target in manifest.failed:
            raise BundleError(f"bundle {bundle}: target '{target}' failed when the bundle was made "
                              f"({manifest.failed[target].reason}); it has: {', '.join(manifest.targets)}")
        if target not in manifest.targets:
            raise BundleError(f"bundle {bundle} has no target '{target}'; it has: {', '.join(manifest.targets)}")
        return target
    if not manifest.targets:
        raise BundleError(f"bundle {bundle} has no compiled targets")
    for name, entry in manifest.targets.items():
        try:
            if get_backend(entry.backend, need_runtime=True):
                return name
        except Exception:  # noqa: BLE001 - try the next target whose runtime is here
            continue
    return next(iter(manifest.targets))


def load(bundle: str | Path, target: Optional[str] = None, *, device: Optional[str] = None,
         threads: Optional[int] = None, strict: bool = False, verify: bool = True) -> Predictor:
    """Load a bundle and return a Predictor for ``target`` (default: the first whose runtime is installed).

    Every file the target needs is checked against its sha256 in the manifest (``verify=False`` skips it).
    ``device`` overrides the target's device (e.g. OpenVINO ``GPU``); when that device is missing the
    backend falls back to CPU with a warning, or raises with ``strict=True``."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    name = choose_target(manifest, target, bundle)
    entry = manifest.targets[name]
    if verify:
        verify_files(bundle, manifest, only=target_files(manifest, name))
    backend = get_backend(entry.backend)
    opts = LoadOptions(device=device, threads=threads, strict=strict)
    try:
        predictor = backend.load(bundle, name, entry, manifest.spec, opts)
    except (KeyError, TypeError, AttributeError) as e:  # options the manifest got wrong
        key = e.args[0] if isinstance(e, KeyError) and e.args else str(e).splitlines()[0][:200]
        raise BundleError(f"bundle {bundle}: manifest.json targets.{name}.options is invalid for the "
                          f"{entry.backend} backend ({type(e).__name__}: {key!r}); rebuild the bundle") from None
    log.debug("loaded %s target %s from %s", entry.backend, name, bundle)
    return predictor
