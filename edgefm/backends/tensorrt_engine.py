"""Device side of the TensorRT target: build the engine from a bundle (``edgefm compile``) and run it.

Needs TensorRT's Python bindings (on Jetson they come with JetPack: ``python3-libnvinfer``; on x86
``pip install tensorrt``) and ``cuda-python`` for device memory, as in NVIDIA's own samples. Written
against the TensorRT 8.5+ API (named I/O tensors, ``execute_async_v3``), which covers JetPack 5.1 (Xavier,
TensorRT 8.5) and JetPack 6 (Orin, TensorRT 10). Nothing here runs on a machine without TensorRT: the
pure parts (versions, compatibility) are in functions that need no TensorRT."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgefm.errors import (BackendUnavailableError, BundleError, DeviceMismatchError, UnsupportedOpError)
from edgefm.models.spec import ModelSpec
from edgefm.predictor import BasePredictor

log = logging.getLogger(__name__)

#: Jetson Linux (L4T) release -> JetPack, from NVIDIA's JetPack archive (used when dpkg has no answer).
L4T_TO_JETPACK = {"36.4.3": "6.2", "36.4": "6.1", "36.3": "6.0", "35.6": "5.1.4", "35.5": "5.1.3",
                  "35.4.1": "5.1.2", "35.3.1": "5.1.1", "35.2.1": "5.1", "35.1": "5.0.2", "32.7": "4.6"}


# --- pure helpers (no TensorRT needed) ---------------------------------------------------------------------

def parse_l4t(text: str) -> Optional[str]:
    """'36.4.3' from /etc/nv_tegra_release ('# R36 (release), REVISION: 4.3, GCID: ...')."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m[1]}.{m[2]}" if m else None


def jetpack_for_l4t(l4t: Optional[str]) -> Optional[str]:
    """JetPack release of an L4T version (longest known prefix)."""
    if not l4t:
        return None
    for key in sorted(L4T_TO_JETPACK, key=len, reverse=True):
        if l4t == key or l4t.startswith(key + "."):
            return L4T_TO_JETPACK[key]
    return None


def jetson_release(root: Path = Path("/")) -> dict[str, str]:
    """{'l4t': ..., 'jetpack': ...} on a Jetson, {} elsewhere."""
    rel = Path(root) / "etc" / "nv_tegra_release"
    if not rel.is_file():
        return {}
    l4t = parse_l4t(rel.read_text(errors="replace"))
    out = {"l4t": l4t} if l4t else {}
    jp = None
    if shutil.which("dpkg-query") and Path(root) == Path("/"):
        r = subprocess.run(["dpkg-query", "--showformat=${Version}", "--show", "nvidia-jetpack"],
                           capture_output=True, text=True, check=False)
        jp = r.stdout.split("+")[0].split("-")[0].strip() if r.returncode == 0 else None
    jp = jp or jetpack_for_l4t(l4t)
    if jp:
        out["jetpack"] = jp
    return out


def check_compatible(built: dict[str, Any], here: dict[str, Any], engine: Path) -> None:
    """Raise ``DeviceMismatchError`` naming both sides when an engine was built for another GPU or TensorRT."""
    diffs = []
    if (built.get("gpu"), built.get("compute_capability")) != (here.get("gpu"), here.get("compute_capability")):
        diffs.append(f"GPU {built.get('gpu', '?')} (compute {built.get('compute_capability', '?')}) vs this "
                     f"machine's {here.get('gpu', '?')} (compute {here.get('compute_capability', '?')})")
    if built.get("tensorrt") != here.get("tensorrt"):
        diffs.append(f"TensorRT {built.get('tensorrt', '?')} vs this machine's {here.get('tensorrt', '?')}")
    if diffs:
        raise DeviceMismatchError(f"engine {engine} cannot run here: " + "; ".join(diffs)
                                  + ". Rebuild it on this device with `edgefm compile BUNDLE`")


# --- TensorRT / CUDA access ---------------------------------------------------------------------------------

def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailableError("building or running a TensorRT engine needs TensorRT's Python bindings "
                                      "(JetPack: apt install python3-libnvinfer; x86: pip install tensorrt)"
                                      ) from None
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendUnavailableError("running a TensorRT engine needs cuda-python (pip install cuda-python)"
                                          ) from None
    return cudart


def _ok(result):
    """Unwrap a cuda-python call: (err, value...) -> value; raise on error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


def device_info(device: int = 0) -> dict[str, Any]:
    """GPU name, compute capability, TensorRT and CUDA versions (and L4T/JetPack on a Jetson)."""
    trt, cudart = _trt(), _cudart()
    prop = _ok(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    rt = int(_ok(cudart.cudaRuntimeGetVersion()))
    info = {"gpu": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}",
            "tensorrt": trt.__version__, "cuda": f"{rt // 1000}.{rt % 1000 // 10}"}
    info.update(jetson_release())
    return info


def _logger(trt):
    """A TensorRT logger that keeps the errors, to put them into the exception a user sees."""

    class Collect(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)

    return Collect()


# --- building ----------------------------------------------------------------------------------------------

def build_engine(onnx_path: Path, build: dict[str, Any], engine_path: Path,
                 timing_cache: Optional[Path] = None) -> dict[str, Any]:
    """Parse ``onnx_path`` and build a serialized engine with the bundle's ``build.json`` settings."""
    trt = _trt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if build["flags"].get("strongly_typed"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UnsupportedOpError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: " + "; ".join(errs[:3]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build["workspace_mib"]) << 20)
    if build["flags"].get("int8"):
        config.set_flag(trt.BuilderFlag.INT8)
    if build["flags"].get("fp16"):
        config.set_flag(trt.BuilderFlag.FP16)
    if build["flags"].get("sparse_weights"):
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    dla = build.get("dla") or {}
    if dla.get("core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla["core"])
        if dla.get("gpu_fallback", True):
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if build.get("builder_optimization_level") is not None and hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(build["builder_optimization_level"])
    _pin_fp32(trt, network, config, {f["name"] for f in build.get("fp32_layers", [])})
    profile = builder.create_optimization_profile()
    for name, p in build["profiles"].items():
        profile.set_shape(name, p["min"], p["opt"], p["max"])
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.time()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UnsupportedOpError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path}: "
                                 + ("; ".join(logger.errors[-3:]) or "see the TensorRT log above"))
    engine_path.write_bytes(bytes(plan))
    if cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"seconds": round(time.time() - t0, 3), "layers": network.num_layers, "bytes": engine_path.stat().st_size}


def _pin_fp32(trt, network, config, names: set[str]) -> None:
    """Layers the user kept in fp32 (``--keep-fp32``): precision constraints TensorRT must obey."""
    if not names:
        return
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        # the ONNX parser names layers after their node, with a suffix when one node becomes several layers
        if any(layer.name == n or layer.name.startswith(n + "_") for n in names):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


# --- running -----------------------------------------------------------------------------------------------

class TrtPredictor(BasePredictor):
    """A TensorRT engine. Each calling thread gets its own execution context, CUDA stream and buffers; calls
    with more samples than the profile's largest batch are split."""

    def __init__(self, engine_path: Path, spec: ModelSpec, target: str, build: dict[str, Any]):
        super().__init__(spec, target, "tensorrt")
        self._trt, self._cudart = _trt(), _cudart()
        self._logger = _logger(self._trt)
        self._runtime = self._trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise DeviceMismatchError(f"TensorRT {self._trt.__version__} could not load {engine_path}: "
                                      + ("; ".join(self._logger.errors[-2:]) or "incompatible engine"))
        self.executes = "tensorrt"
        self._max_batch = min(p["max"][0] for p in build["profiles"].values())
        self._local = threading.local()

    def _state(self):
        st = self._local.__dict__
        if "ctx" not in st:
            st["ctx"] = self._engine.create_execution_context()
            st["stream"] = _ok(self._cudart.cudaStreamCreate())
            st["buf"] = {}
        return st

    def _device(self, st, name: str, nbytes: int) -> int:
        ptr, size = st["buf"].get(name, (None, 0))
        if size < nbytes:
            if ptr is not None:
                _ok(self._cudart.cudaFree(ptr))
            ptr = _ok(self._cudart.cudaMalloc(max(nbytes, 1)))
            st["buf"][name] = (ptr, nbytes)
        return ptr

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(feed.values())))
        parts = [self._run_chunk({k: v[s:s + self._max_batch] for k, v in feed.items()})
                 for s in range(0, n, self._max_batch)]
        return {k: np.concatenate([p[k] for p in parts]) for k in self.output_names}

    def _run_chunk(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cu, eng = self._trt, self._cudart, self._engine
        st = self._state()
        ctx, stream = st["ctx"], st["stream"]
        h2d, d2h = cu.cudaMemcpyKind.cudaMemcpyHostToDevice, cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.input_names:
            # TensorRT 8.x casts int64 inputs to int32: feed the engine's own type
            arr = np.ascontiguousarray(feed[name], dtype=trt.nptype(eng.get_tensor_dtype(name)))
            ctx.set_input_shape(name, arr.shape)
            ptr = self._device(st, name, arr.nbytes)
            _ok(cu.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, stream))
            ctx.set_tensor_address(name, ptr)
        outs = {}
        for name in self.output_names:
            host = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=trt.nptype(eng.get_tensor_dtype(name)))
            ptr = self._device(st, name, host.nbytes)
            ctx.set_tensor_address(name, ptr)
            outs[name] = (host, ptr)
        if not ctx.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT execution failed for target '{self.target}'")
        for host, ptr in outs.values():
            _ok(cu.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, stream))
        _ok(cu.cudaStreamSynchronize(stream))
        return {k: h for k, (h, _) in outs.items()}


# --- edgefm compile ----------------------------------------------------------------------------------------

def compile_engine(bundle: Path, target: Optional[str] = None, *, allow_other_device: bool = False,
                   workspace_mib: Optional[int] = None, dla_core: Optional[int] = None):
    """Build the engine of each TensorRT target of ``bundle`` (or of ``target``) on this machine, check its
    outputs against the fp32 reference, and record GPU, TensorRT, CUDA and JetPack/L4T in the manifest.

    The bundle is rewritten atomically (a new copy is renamed into place). A target made for another
    compute capability is refused unless ``allow_other_device``. Returns the new manifest."""
    from edgefm.bundle import StageRecord, finalize, read_manifest, sha256_file, staging, verify_files
    from edgefm.contract import enforce, recorded

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    names = [n for n, e in manifest.targets.items() if e.backend == "tensorrt" and (target in (None, n))]
    if not names:
        raise BundleError(f"bundle {bundle} has no TensorRT target{f' named {target!r}' if target else ''} "
                          f"(it has: {', '.join(manifest.targets) or 'none'})")
    here = device_info()
    with staging(bundle, force=True) as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)
        for name in names:
            entry = manifest.targets[name]
            build = json.loads((tmp / entry.options["build"]).read_text())
            want = build.get("expects", {}).get("compute_capability")
            if want and str(want) != here["compute_capability"] and not allow_other_device:
                raise DeviceMismatchError(
                    f"target '{name}' is made for compute capability {want} ({build['expects'].get('gpu')}), "
                    f"this GPU is {here['gpu']} ({here['compute_capability']}); pass allow_other_device "
                    f"(--allow-other-device) to build for it anyway")
            if workspace_mib is not None:
                build["workspace_mib"] = workspace_mib
            if dla_core is not None:
                build["dla"] = {**(build.get("dla") or {}), "core": dla_core}
            folder = (tmp / entry.options["build"]).parent
            engine, cache = folder / "model.engine", folder / "timing.cache"
            info = build_engine(tmp / entry.options["onnx"], build, engine,
                                cache if build.get("timing_cache", True) else None)
            contract, how = recorded(manifest, name)
            verdict = _engine_verdict(tmp, manifest, engine, name, build, contract)
            metrics = verdict.metrics
            enforce(f"engine ({name}, TensorRT {here['tensorrt']}; {how})", verdict)
            rel = lambda p: str(p.relative_to(tmp))  # noqa: E731
            entry.artifact = rel(engine)
            entry.files = sorted(set(entry.files) | {rel(engine)} | ({rel(cache)} if cache.is_file() else set()))
            entry.options.update(engine=rel(engine), executes="tensorrt")
            entry.runtime_versions["tensorrt"] = here["tensorrt"]
            entry.hardware["engine"] = here
            entry.metrics["engine"] = metrics
            manifest.stages.append(StageRecord(
                name="engine", target=name, settings={k: build[k] for k in ("flags", "workspace_mib", "dla")},
                input_sha256=sha256_file(tmp / entry.options["onnx"]), output_sha256=sha256_file(engine),
                seconds=info["seconds"], metrics=metrics,
                notes=[f"built on {here['gpu']} (compute {here['compute_capability']}), TensorRT "
                       f"{here['tensorrt']}, CUDA {here['cuda']}"
                       + (f", JetPack {here['jetpack']} / L4T {here.get('l4t')}" if here.get("jetpack") else "")]))
        finalize(tmp, manifest)
    return manifest


def _engine_verdict(tmp: Path, manifest, engine: Path, name: str, build: dict, contract):
    """The engine's outputs on the bundle's eval data, judged by the target's recorded contract."""
    from edgefm.bundle import read_eval
    from edgefm.contract import Verdict, judge

    if not manifest.eval_data:
        return Verdict(ok=True, notes=["no eval data in the bundle: the engine was not checked"])
    feeds, ref, labels = read_eval(tmp, manifest)
    got = TrtPredictor(engine, manifest.spec, name, build)(feeds)
    return judge(contract, ref, got, labels, feeds)
