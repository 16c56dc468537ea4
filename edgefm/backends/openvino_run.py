"""Running OpenVINO IRs: the device to compile on (with CPU fallback), compile properties from a target
entry, what a compiled model really executes, and the thread-safe Predictor. No NNCF, no torch: this is
what ``edgefm.load`` needs on the device."""

from __future__ import annotations

import functools
import logging
import queue
import threading
import warnings
from typing import Any, Optional

import numpy as np

from edgefm.errors import BackendUnavailableError
from edgefm.models.spec import ModelSpec
from edgefm.predictor import BasePredictor

log = logging.getLogger(__name__)

#: With static shapes (NPU), one compiled model per input shape: this many are kept.
STATIC_SHAPES_KEPT = 8


@functools.lru_cache(maxsize=1)
def core() -> Any:
    import openvino as ov

    return ov.Core()


# --- devices and runtime configuration -----------------------------------------------------------------

def pick_device(asked: str, strict: bool) -> str:
    """The OpenVINO device to compile on: ``asked`` when present here, else CPU with a warning (or
    ``BackendUnavailableError`` when ``strict``)."""
    name = asked.upper()
    if name.split(":")[0] in ("AUTO", "HETERO", "MULTI", "BATCH"):
        return name
    available = core().available_devices
    if any(d == name or d.split(".")[0] == name for d in available):
        return name
    msg = f"OpenVINO device '{name}' is not available on this machine (available: {', '.join(available)})"
    if strict:
        raise BackendUnavailableError(msg + "; load without strict=True to fall back to CPU")
    warnings.warn(msg + "; falling back to CPU", RuntimeWarning, stacklevel=3)
    log.warning("%s; falling back to CPU", msg)
    return "CPU"


def runtime_config(options: dict[str, Any], device: str, threads: Optional[int] = None) -> dict[str, Any]:
    """compile_model properties from a target entry's options (``threads`` overrides)."""
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": options.get("performance_hint", "LATENCY")}
    if options.get("inference_precision"):
        cfg["INFERENCE_PRECISION_HINT"] = options["inference_precision"]
    elif device.upper().startswith("CPU"):
        from edgefm.hostcaps import onednn_bf16_allowed

        if not onednn_bf16_allowed():  # ONEDNN_MAX_CPU_ISA below bf16: OpenVINO's bf16 default would not compile
            cfg["INFERENCE_PRECISION_HINT"] = "f32"
    if options.get("num_streams") is not None:
        cfg["NUM_STREAMS"] = str(options["num_streams"])
    threads = threads or options.get("threads")
    if threads and device.startswith("CPU"):
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return cfg


def execution_info(compiled: Any) -> dict[str, Any]:
    """What the compiled model really runs: its inference precision and the runtime precision of its layers."""
    info: dict[str, Any] = {}
    try:
        info["inference_precision"] = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except RuntimeError:  # not every device reports it
        info["inference_precision"] = None
    counts: dict[str, int] = {}
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            kind = rt["layerType"].astype(str) if "layerType" in rt else ""
            if kind in ("Input", "Output", "Reorder", "Constant", "") or "runtimePrecision" not in rt:
                continue
            p = rt["runtimePrecision"].astype(str)
            counts[p] = counts.get(p, 0) + 1
    except RuntimeError:
        pass
    info["layer_precisions"] = dict(sorted(counts.items()))
    return info


def compile_model(model: Any, device: str, cfg: dict[str, Any]) -> Any:
    """``openvino.Core.compile_model`` with the shared Core."""
    return core().compile_model(model, device, cfg)


class OpenVINOPredictor(BasePredictor):
    """Runs an IR; thread-safe (each call borrows an InferRequest from a pool; concurrent calls get their
    own) and takes any batch size (dynamic batch, or one compiled model per shape when the device needs
    static shapes)."""

    def __init__(self, spec: ModelSpec, target: str, model: Any, device: str, cfg: dict[str, Any],
                 dynamic: bool = True):
        super().__init__(spec, target, "openvino")
        self.device, self.config, self._model, self._dynamic = device, cfg, model, dynamic
        self._lock = threading.Lock()
        self._compiled: dict[Any, tuple[Any, queue.SimpleQueue]] = {}
        if dynamic:
            self._get(None)
        first = self._compiled[next(iter(self._compiled))][0] if self._compiled else None
        self.execution = execution_info(first) if first is not None else {}

    def _get(self, key: Any) -> tuple[Any, queue.SimpleQueue]:
        with self._lock:
            if key not in self._compiled:
                model = self._model
                if key is not None:
                    model = self._model.clone()
                    model.reshape(dict(key))
                    if len(self._compiled) >= STATIC_SHAPES_KEPT:  # forget the oldest shape (dicts keep order)
                        self._compiled.pop(next(iter(self._compiled)))
                self._compiled[key] = (compile_model(model, self.device, self.config), queue.SimpleQueue())
            return self._compiled[key]

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = None if self._dynamic else tuple(sorted((k, tuple(v.shape)) for k, v in feed.items()))
        compiled, pool = self._get(key)
        try:
            req = pool.get_nowait()
        except queue.Empty:
            req = compiled.create_infer_request()
        try:
            req.infer(feed)
            names = self.output_names or [o.get_any_name() for o in compiled.outputs]
            return {n: req.get_output_tensor(i).data.copy() for i, n in enumerate(names)}
        finally:
            pool.put(req)
