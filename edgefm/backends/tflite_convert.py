"""PyTorch -> LiteRT through litert-torch (Google's successor of ai-edge-torch), run in an environment edgefm
manages itself.

Why a separate environment: litert-torch 0.10 pins litert-converter 0.5, which pins xdsl 0.28, which caps
typing-extensions below 4.13 and so forces pydantic down to 2.11 (and adds jax, ~700 MB). Installed into
the main environment that would downgrade packages other tools rely on. So edgefm creates a venv under
its cache folder that sees the main environment's packages (torch is reused, not downloaded again) but
keeps its own pins, and runs the conversion there in a subprocess:

  main process: torch.export the model (names from the ModelSpec) -> model.pt2
  converter env: litert_torch.convert -> fp32 .tflite -> ai-edge-quantizer (edgefm.quantize.litert)

The converter's own error for an op it cannot lower comes back as ``UnsupportedOpError`` naming the op and
the node; any other failure as ``ExportError``."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from edgefm.errors import ConfigError, ExportError, UnsupportedOpError

#: What the converter environment installs: exact versions in litert_torch.lock (edgefm.backends.litert_env).
LITERT_TORCH_SPEC = "litert-torch==0.10.0"
CONVERTER = "litert-torch"
_VERSIONED = ("litert-torch", "ai-edge-quantizer", "litert-converter", "ai-edge-litert", "torch", "jax")


def tools_dir() -> Path:
    """Where edgefm installs the tools it manages (converter environments, the arm64 root):
    ``$EDGEFM_TOOLS_DIR`` or ``~/.cache/edgefm/tools``. Kept apart from the export cache
    (``EDGEFM_CACHE_DIR``), which tests point at a fresh folder per session: tools are installations,
    not results, and rebuilding them each session would cost minutes and ~1 GB of downloads."""
    from edgefm.backends import litert_env

    return litert_env.tools_dir()


def env_dir() -> Path:
    """This interpreter's converter environment (keyed: see ``litert_env``)."""
    from edgefm.backends import litert_env

    return litert_env.env_dir()


def ensure_env(progress=None) -> Path:
    """The converter environment's Python, built from ``litert_torch.lock`` on first use (``litert_env``)."""
    from edgefm.backends import litert_env

    return litert_env.ensure_env(progress)


def converter_python(explicit: Optional[str] = None, progress=None) -> Path:
    """The Python that runs litert-torch: ``explicit`` or ``$EDGEFM_LITERT_PYTHON`` if given, this one
    if litert-torch is importable here, else the managed environment."""
    explicit = explicit or os.environ.get("EDGEFM_LITERT_PYTHON")
    if explicit:
        return Path(explicit)
    import importlib.util

    if importlib.util.find_spec("litert_torch") and importlib.util.find_spec("ai_edge_quantizer"):
        return Path(sys.executable)
    return ensure_env(progress)


# --- main-process side ---------------------------------------------------------------------------

def export_program(model, input_names: list[str], output_names: list[str], example: Mapping[str, np.ndarray],
                   path: Path) -> None:
    """``torch.export`` ``model`` (called positionally in ``input_names`` order) into ``path`` (.pt2) with
    keyword inputs and a dict of outputs, so the LiteRT signature carries the ModelSpec's names."""
    import torch

    class Named(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return _name_outputs(self.inner(*[kw[n] for n in input_names]), output_names)

    kwargs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.items()}
    try:
        with torch.no_grad():
            ep = torch.export.export(Named(model).eval(), (), kwargs, strict=False)
        torch.export.save(ep, str(path))
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.export raises many kinds; the user gets one line
        raise ExportError(f"tflite: torch.export of the model failed ({type(e).__name__}: "
                          f"{_first_line(e)})") from None


def _name_outputs(out, names: list[str]) -> dict:
    if isinstance(out, Mapping):
        vals = [out[n] for n in names] if all(n in out for n in names) else list(out.values())
    elif isinstance(out, (tuple, list)):
        vals = list(out)
    else:
        vals = [out]
    if len(vals) < len(names):
        raise ExportError(f"tflite: the model returns {len(vals)} output(s), but the spec names {len(names)}: {names}")
    return dict(zip(names, vals))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


class _Worker:
    """A converter process kept for the life of this one: importing litert-torch (jax, transformers) takes
    5-10 s, so later compiles reuse it. It reads request paths on stdin and writes ``result.json`` beside
    each request (atomically); its output goes to a log file, so no pipe can fill up and stall it."""

    def __init__(self, python: Path):
        import tempfile

        self.cwd = Path(tempfile.mkdtemp(prefix="edgefm-litert-"))
        # only the edgefm package on the converter's path, not the folder that holds it: installed from a wheel
        # that folder is this environment's site-packages, whose torch/numpy/pydantic would shadow the pins of
        # the converter's own environment
        root = self.cwd / "path"
        root.mkdir()
        (root / "edgefm").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
        env = {**os.environ, "TQDM_DISABLE": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
               "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
        self.log = open(self.cwd / "worker.log", "w")
        self.proc = subprocess.Popen([str(python), "-m", "edgefm.backends.tflite_convert", "--serve"],
                                     stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     cwd=self.cwd, env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, req: Path, res: Path, timeout: float) -> None:
        self.proc.stdin.write(f"{req}\n")
        self.proc.stdin.flush()
        deadline = time.time() + timeout
        while not res.exists():
            if not self.alive():
                raise ExportError(f"tflite: the litert-torch converter process died (exit {self.proc.returncode}): "
                                  f"{self.tail()}")
            if time.time() > deadline:
                self.close()
                raise ExportError(f"tflite: litert-torch conversion took longer than {timeout:.0f} s")
            time.sleep(0.05)

    def tail(self) -> str:
        lines = (self.cwd / "worker.log").read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:])

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        import shutil

        shutil.rmtree(self.cwd, ignore_errors=True)


_WORKERS: dict[str, _Worker] = {}
_WORKERS_LOCK = threading.Lock()


@atexit.register
def close_workers() -> None:
    """Stop every converter process (the next conversion starts a new one)."""
    with _WORKERS_LOCK:
        for w in _WORKERS.values():
            w.close()
        _WORKERS.clear()


def convert(python: Path, request: dict[str, Any], workdir: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run ``request`` (see ``_handle``) in the converter worker for ``python``; raise typed errors on failure."""
    req = workdir / "request.json"
    res = workdir / "result.json"
    req.write_text(json.dumps(request))
    with _WORKERS_LOCK:  # one conversion at a time per worker; they are CPU-bound anyway
        w = _WORKERS.get(str(python))
        if w is None or not w.alive():
            w = _WORKERS[str(python)] = _Worker(python)
        w.ask(req, res, timeout)
    result = json.loads(res.read_text())
    if result.get("ok"):
        return result
    where = f"litert-torch {result.get('versions', {}).get('litert-torch', '?')}"
    if result.get("keep_unmatched"):
        raise ConfigError(f"tflite: --keep-fp32 names nodes not found in the LiteRT graph (patterns "
                          f"{result['keep_unmatched']}); name op types instead (e.g. Conv, Gemm)")
    if result.get("op"):
        src = f", from {result['source']}" if result.get("source") else ""
        raise UnsupportedOpError(
            f"tflite: {where} cannot convert op {result['op']} (node '{result.get('node', '?')}'{src}): "
            f"{result.get('reason', '')}. Replace that op in the model or choose another target.")
    raise ExportError(f"tflite: {where} conversion failed at {result.get('step', 'convert')}: {result.get('message')}")


# --- converter-environment side --------------------------------------------------------------------

def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in _VERSIONED:
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


_LOWERING = re.compile(r"Lowering not found: (\S+)")
_NODE = re.compile(r"While executing %(\S+) : .*?call_function\[target=([^\]]+)\]")
_SOURCE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')


def classify_error(e: BaseException) -> dict[str, str]:
    """Pull the op and node out of a litert-torch failure (its messages name the FX node being lowered)."""
    msg = str(e)
    out = {"message": f"{type(e).__name__}: {_first_line(e)}"}
    node = _NODE.search(msg)
    low = _LOWERING.search(msg)
    if node or low:
        out["op"] = low.group(1) if low else node.group(2).replace("torch.ops.", "")
        out["node"] = node.group(1) if node else "?"
        out["reason"] = "no LiteRT lowering exists for it" if low else out["message"]
        # The innermost frame of the node's original stack is the user's line (the outer ones are ours).
        frames = _SOURCE.findall(msg.split("Original traceback:", 1)[1]) if "Original traceback:" in msg else []
        if frames:
            file, line, func = frames[-1]
            out["source"] = f"{Path(file).name}:{line} in {func}"
    return out


class _Reported(Exception):
    """The failure is already written into the result."""


def _serve() -> int:
    """The worker loop: one request path per line on stdin, until stdin closes."""
    for line in sys.stdin:
        if line.strip():
            _handle(line.strip())
    return 0


def _convert_program(req: dict[str, Any], result: dict[str, Any]) -> None:
    """The exported program -> fp32 ``.tflite`` (``req['fp32_out']``) with short tensor names."""
    import torch
    import litert_torch

    example = np.load(req["example"])
    kwargs = {k: torch.from_numpy(example[k]) for k in example.files}
    t = time.time()
    if req.get("fused_lstm"):
        from edgefm.backends import tflite_lstm

        tflite_lstm.register_lowering()  # before loading: the program calls edgefm::lstm_layer
    program = torch.export.load(req["program"]).module()
    litert_torch.convert(program, sample_kwargs=kwargs).export(req["fp32_out"])
    shorten_names(Path(req["fp32_out"]))
    if req.get("fused_lstm"):
        result["fused_lstm"] = tflite_lstm.rewrite(Path(req["fp32_out"]))
    result["seconds"]["convert"] = time.time() - t


def _handle(request_path: str) -> None:
    req = json.loads(Path(request_path).read_text())
    result: dict[str, Any] = {"ok": False, "versions": _versions(), "seconds": {}}
    step = "convert"
    try:
        if not req.get("quantize_only"):  # quantize_only: the accuracy fallback re-quantizes fp32_out as it is
            _convert_program(req, result)
        if req.get("quantize"):
            step = "quantize"
            from edgefm.quantize import litert

            t = time.time()
            calib = _calib_feeds(req["fp32_out"], req.get("calib"))
            if result.get("fused_lstm") and req["quantize"]["mode"] == "full":
                # AI Edge Quantizer does not know the fused LSTM op; TFLite's own quantizer does.
                from edgefm.backends import tflite_lstm

                result["quantize"] = tflite_lstm.quantize_full(Path(req["fp32_out"]), Path(req["out"]), calib,
                                                               io=req["quantize"].get("io", "float"))
            else:
                missing = litert.unmatched(Path(req["fp32_out"]), req["quantize"].get("keep"))
                if missing:  # a --keep-fp32 node not found in the LiteRT graph: refuse rather than ignore it
                    result.update(step="quantize", keep_unmatched=missing, message=f"keep_fp32 patterns {missing} "
                                  "match no tensor of the converted model")
                    raise _Reported()
                result["quantize"] = litert.quantize(Path(req["fp32_out"]), Path(req["out"]), calib=calib,
                                                     **req["quantize"])
            result["seconds"]["quantize"] = time.time() - t
        if result.get("fused_lstm") and req.get("lstm_state", "reset") == "reset":
            # After quantization (the zeroing ops' values are chosen, not calibrated): every call starts from
            # a zero state in any LiteRT. "carry" (a caller that declared the state) keeps it between calls.
            from edgefm.backends import tflite_lstm

            for name in ("fp32_out", "out"):
                if req.get(name) and Path(req[name]).exists():
                    result["lstm_state_reset"] = tflite_lstm.reset_state_after_call(Path(req[name]))
        result["ok"] = True
    except _Reported:
        pass
    except Exception as e:  # noqa: BLE001 - reported to the main process as data, typed there
        result.update(classify_error(e), step=step)
    tmp = Path(request_path).with_name("result.json.part")
    tmp.write_text(json.dumps(result))
    tmp.rename(tmp.with_name("result.json"))  # the main process polls for this name


def short_name(name: str) -> str:
    """litert-torch names a tensor by its module path, each step written ``package.module.Class_attribute``,
    behind edgefm's wrappers; keep ``Class_attribute`` per step and drop the wrappers. On the digits CNN
    the long names are ~6 KB of a 70 KB int8 file, so this matters for small models; names stay readable."""
    out = []
    for part in name.split("/"):
        if ".<locals>." in part or part.startswith("edgefm.models.wrap."):
            continue  # edgefm's own wrappers around the user's model
        i = part.find("_")
        out.append(part[:i].rsplit(".", 1)[-1] + part[i:] if i > 0 else part)
    return "/".join(out)


def shorten_names(path: Path) -> None:
    """Rewrite ``path`` with ``short_name`` tensor names (inputs/outputs keep theirs: the signature refers to them)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    buf = path.read_bytes()
    if len(buf) > 1 << 30:  # the object API cannot round-trip models near the 2 GB flatbuffer limit
        return
    model = schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    for sg in model.subgraphs:
        keep = set(sg.inputs) | set(sg.outputs)
        used = {t.name for i, t in enumerate(sg.tensors) if i in keep}
        for i, t in enumerate(sg.tensors):
            if i in keep or not t.name:
                continue
            new = short_name(t.name.decode(errors="replace")).encode()
            # The quantizer needs unique names: where shortening collides, the long name stays.
            t.name = new if new and new not in used else t.name
            used.add(t.name)
    b = flatbuffers.Builder(len(buf) + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(b.Output())


def _calib_feeds(model_path: str, calib_npz: Optional[str]) -> list[dict[str, np.ndarray]]:
    """Calibration feeds in the converted model's batch and dtypes (litert-torch turns int64 into int32)."""
    if not calib_npz:
        return []
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=model_path).get_signature_runner().get_input_details()
    data = np.load(calib_npz)
    n = min(data[k].shape[0] for k in data.files)
    b = int(next(iter(details.values()))["shape"][0])
    return [{k: data[k][s:s + b].astype(details[k]["dtype"]) for k in data.files} for s in range(0, n - b + 1, b)]


if __name__ == "__main__":
    sys.exit(_serve() if sys.argv[1:] == ["--serve"] else _handle(sys.argv[1]))
