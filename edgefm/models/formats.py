"""What kind of checkpoint a path is, judged by its content (zip layout, magic bytes) rather than its
name, and safe reading of weights files: safetensors, or ``torch.load(weights_only=True)`` — never an
unpickling of arbitrary objects from a user's file."""

from __future__ import annotations

import io
import pickletools
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Optional

from edgefm.errors import CheckpointError

KINDS = ("hf", "state_dict", "torchscript", "exported_program", "onnx")
KIND_NAMES = {"hf": "a Hugging Face folder", "state_dict": "a state_dict", "torchscript": "a TorchScript file",
              "exported_program": "a torch.export program (.pt2)", "onnx": "an ONNX file"}
#: Kinds whose torch module has submodules a user can pick with ``--submodule``.
SUBMODULE_KINDS = ("state_dict", "torchscript")
_VALID = ("a Hugging Face folder (config.json), a state_dict (.pt/.pth/.safetensors, with --arch), "
          "a TorchScript file, a torch.export program (.pt2) or an .onnx file")
# Keys under which training scripts commonly nest the model's weights.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")


def detect_kind(path: Path, check_onnx: bool = True) -> str:
    """Return one of ``KINDS`` for ``path``; raise ``CheckpointError`` for missing, empty, truncated or
    unknown files. ``check_onnx=False`` judges an ONNX file by its first byte or name without parsing it
    (no onnx import: for planning)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file or folder")
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "modules.json").is_file():
            return "hf"
        raise CheckpointError(f"checkpoint {path}: a folder without config.json, so not a Hugging Face model "
                              f"folder; valid sources are {_VALID}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty")
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return _zip_kind(path)
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if n + 8 > size:
            raise CheckpointError(f"checkpoint {path}: a truncated safetensors file (its header says "
                                  f"{n} bytes, the file has {size})")
        return "state_dict"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "state_dict"  # torch.save's legacy (non-zip) format starts with a pickle
    if head[:1] == b"\x08" or path.suffix.lower() == ".onnx":
        if check_onnx:
            _check_onnx(path)  # ModelProto starts with field 1 (ir_version, varint): tag byte 0x08
        return "onnx"
    raise CheckpointError(f"checkpoint {path}: unknown file kind (first bytes {head[:8]!r}); valid sources "
                          f"are {_VALID}")


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"checkpoint {path}: corrupt or truncated (not a complete zip archive: {e})") from None
    # torch writes every archive under one top folder: <name>/data.pkl, <name>/code/…, <name>/models/…
    rel = {n.split("/", 1)[1] for n in names if "/" in n}
    if "archive_format" in rel or any(r.startswith("models/") for r in rel):
        return "exported_program"
    if "constants.pkl" in rel or any(r.startswith("code/") for r in rel):
        return "torchscript"
    if "data.pkl" in rel:
        return "state_dict"
    raise CheckpointError(f"checkpoint {path}: a zip archive, but not one torch wrote (no data.pkl, code/ or "
                          f"models/ inside); valid sources are {_VALID}")


def _check_onnx(path: Path) -> None:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise CheckpointError(f"checkpoint {path}: corrupt or truncated ONNX file ({_first_line(e)})") from None
    if not model.graph.node or not model.graph.output:
        raise CheckpointError(f"checkpoint {path}: corrupt or truncated ONNX file (the graph has no nodes or outputs)")


def read_state_dict(path: Path, expected: Optional[set[str]] = None) -> tuple[dict[str, Any], list[str]]:
    """Read tensors from a safetensors file or a torch.save file, safely. Returns (state_dict, notes).

    A training checkpoint that nests the weights (``{"model_state": ..., "optimizer_state": ..., "step": ...}``,
    ``{"state_dict": ...}``, Lightning's ``model.``-prefixed keys) gives the sub-dict whose keys match
    ``expected`` (the ``--arch`` module's keys); it is refused only when that is ambiguous.

    A pickle that needs arbitrary Python objects is refused with ``CheckpointError`` saying why; a whole
    pickled ``nn.Module`` gets a message on how to save it instead."""
    import torch

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), []
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path}: corrupt safetensors file ({_first_line(e)})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError from deep inside
        raise _load_error(path, e) from None
    return _tensor_dict(path, obj, expected)


def _load_error(path: Path, err: Exception) -> CheckpointError:
    msg = str(err)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
    if m or "Weights only load failed" in msg:
        glob = m.group(1) if m else "an arbitrary Python object"
        if _pickles_module(path):
            return CheckpointError(
                f"checkpoint {path}: a whole pickled nn.Module ({glob}), saved with torch.save(model); edgefm does "
                f"not unpickle it because that can run arbitrary code. Save the weights with "
                f"torch.save(model.state_dict(), PATH) and pass --arch, or save the model with "
                f"torch.jit.save(torch.jit.script(model), PATH) or torch.export.save(torch.export.export(...), PATH)")
        return CheckpointError(
            f"checkpoint {path}: refused: unpickling it needs the Python object {glob}, and edgefm only loads "
            f"weights safely (torch.load weights_only=True). Save a plain dict of tensors (model.state_dict()) "
            f"or a safetensors file")
    return CheckpointError(f"checkpoint {path}: corrupt or truncated torch file ({_first_line(err)})")


def _pickles_module(path: Path) -> bool:
    """Whether the pickle in ``path`` holds an ``nn.Module``: its state carries ``_modules`` and
    ``_parameters``. Read with pickletools, which only lists opcodes and executes nothing."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
                stream, count = io.BytesIO(z.read(name)), 1
        else:  # legacy format: pickles of magic, protocol, sys_info, then the object
            stream, count = io.BytesIO(path.read_bytes()), 4
        strings: set[str] = set()
        for _ in range(count):
            strings |= {arg for _, arg, _ in pickletools.genops(stream) if isinstance(arg, str)}
    except Exception:  # a scan that fails only loses the nicer message; the load was refused anyway
        return False
    return {"_modules", "_parameters"} <= strings


def _tensor_dict(path: Path, obj: Any, expected: Optional[set[str]] = None) -> tuple[dict[str, Any], list[str]]:
    import torch

    def is_sd(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    if is_sd(obj):
        return dict(obj), []
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path}: holds a {type(obj).__name__}, not a state_dict (dict of tensors)")
    cands = _candidates(obj, is_sd)
    if not cands:
        raise CheckpointError(f"checkpoint {path}: a dict with keys {sorted(map(str, obj))[:10]}, but no dict of "
                              f"tensors (a state_dict) at the top or nested under any key")
    others = sorted(str(k) for k in obj if str(k) != next(iter(cands)).split("/")[0])[:8]
    if len(cands) > 1 and expected:
        scored = {k: _match(d, expected) for k, d in cands.items()}
        best = max(scored.values())
        top = [k for k, v in scored.items() if v == best]
        if best > 0 and len(top) == 1:
            key = top[0]
            return dict(cands[key]), [f"took the weights from the '{key}' entry of {path.name} ({best:.0%} of the "
                                      f"--arch module's keys match; other entries: "
                                      f"{sorted(str(k) for k in obj if str(k) != key.split('/')[0])[:8]})"]
    if len(cands) > 1:
        listing = ", ".join(f"'{k}' ({len(d)} tensors)" for k, d in cands.items())
        raise CheckpointError(f"checkpoint {path}: several dicts of tensors could be the weights: {listing}; none "
                              f"matches the --arch module's keys better than the others. Save the one you mean "
                              f"alone (torch.save(ckpt[KEY], PATH))")
    key, sd = next(iter(cands.items()))
    return dict(sd), [f"took the weights from the '{key}' entry of {path.name} (other entries: {others})"]


def _candidates(obj: dict, is_sd, prefix: str = "", depth: int = 0) -> dict[str, dict]:
    """Dicts of tensors nested in ``obj`` (two levels deep), by key path ``a/b``; the usual names first."""
    out: dict[str, dict] = {}
    keys = sorted(obj, key=lambda k: (str(k) not in _NESTED_KEYS, str(k)))
    for k in keys:
        v = obj[k]
        name = f"{prefix}{k}"
        if is_sd(v):
            out[name] = v
        elif isinstance(v, dict) and depth < 1:
            out.update(_candidates(v, is_sd, f"{name}/", depth + 1))
    return out


def _match(sd: dict, expected: set[str]) -> float:
    """Share of ``expected`` keys found in ``sd`` (with a ``module.``/``model.`` prefix stripped)."""
    keys = set(sd)
    best = len(keys & expected)
    for p in ("module.", "model.", "net."):
        best = max(best, len({k[len(p):] for k in keys if k.startswith(p)} & expected))
    return best / max(1, len(expected))


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
