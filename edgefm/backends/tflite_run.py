"""Run a .tflite model on named NumPy arrays with the LiteRT interpreter.

This file needs only NumPy and ``ai_edge_litert`` and imports nothing from edgefm, because the arm64
emulated check copies it next to an arm64 Python that has nothing else (see ``edgefm.emulate``). The
x86 Predictor uses the same code, so both sides of that comparison run identical logic.

As a script: ``python tflite_run.py MODEL.tflite IN.npz OUT.npz [--threads N]``; IN holds ``in/<name>``
arrays (first axis = samples), OUT gets ``out/<name>``."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import numpy as np

SIGNATURE = "serving_default"


def litert_version() -> str:
    try:
        from importlib.metadata import version
        return version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - a bare wheel unpacked without metadata
        return "unknown"


@contextlib.contextmanager
def _stderr_to_devnull():
    """File descriptor 2 to /dev/null for the duration (C++ writes bypass sys.stderr)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class Runner:
    """One interpreter and its signature runner. Not thread-safe (LiteRT interpreters are not): the
    Predictor keeps a pool of these.

    Users pass and get floats: int8/uint8 model inputs are quantized with the tensor's scale and zero
    point, integer outputs are dequantized. The models edgefm writes have a fixed batch (LiteRT has
    static shapes), so a call with more samples runs them one batch at a time."""

    def __init__(self, model_path: str, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        # AUTO applies XNNPACK, the fast CPU path on x86 and ARM.
        self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        if os.environ.get("EDGEFM_QUIET") == "1":
            # The first allocation in a process applies XNNPACK, and LiteRT prints "INFO: Created TensorFlow
            # Lite XNNPACK delegate for CPU." on stderr (C++, no switch): the edgefm CLI asks for quiet output.
            with _stderr_to_devnull():
                self.interpreter.allocate_tensors()
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()
        # No state handling here: edgefm's fused LSTM models zero their own state at the end of every call
        # (tflite_lstm.reset_state_after_call), so they give the same results in any LiteRT as here.

    @property
    def batch(self) -> int:
        return int(next(iter(self.inputs.values()))["shape"][0])

    def input_shapes(self) -> dict[str, list[int]]:
        return {k: [int(d) for d in v["shape"]] for k, v in self.inputs.items()}

    def _to_model(self, name: str, arr: np.ndarray) -> np.ndarray:
        d = self.inputs[name]
        dtype = np.dtype(d["dtype"])
        scale, zero = d["quantization"]
        if dtype.kind in "iu" and scale:  # a quantized input: float -> int with the tensor's parameters
            info = np.iinfo(dtype)
            q = np.round(np.asarray(arr, np.float32) / scale) + zero
            return np.clip(q, info.min, info.max).astype(dtype)
        return np.asarray(arr).astype(dtype, copy=False)

    def _from_model(self, name: str, arr: np.ndarray) -> np.ndarray:
        scale, zero = self.outputs[name]["quantization"]
        if arr.dtype.kind in "iu" and scale:
            return ((arr.astype(np.float32) - zero) * scale).astype(np.float32)
        return arr

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for every sample of ``feed`` (any number of samples)."""
        n = int(next(iter(feed.values())).shape[0])
        b = self.batch
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.outputs}
        for s in range(0, n, b):
            chunk = {k: v[s:s + b] for k, v in feed.items()}
            got = chunk[next(iter(chunk))].shape[0]
            if got < b:  # pad the last chunk to the compiled batch, drop the padding after
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], b - got, 0)]) for k, v in chunk.items()}
            out = self.runner(**{k: self._to_model(k, v) for k, v in chunk.items()})
            for k in parts:
                parts[k].append(self._from_model(k, np.asarray(out[k]))[:got])
        if n == 0:  # no samples: empty outputs of the right trailing shape
            return {k: np.empty((0, *d["shape"][1:]), np.float32) for k, d in self.outputs.items()}
        return {k: np.concatenate(v) for k, v in parts.items()}


def model_ops(model_path: str) -> list[dict]:
    """The model's operators before any delegate takes them: [{'op': 'CONV_2D', 'node': 'tensor name'}]."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(model_path),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t["name"] for t in it.get_tensor_details()}
    ops = []
    for d in it._get_ops_details():  # the only listing of op types LiteRT exposes in Python
        outs = [tensors.get(int(i), "") for i in d.get("outputs", [])]
        ops.append({"op": d["op_name"], "node": outs[0] if outs else ""})
    return ops


def main(argv: list[str]) -> int:
    args = list(argv)
    threads = None
    if "--threads" in args:
        i = args.index("--threads")
        threads = int(args[i + 1])
        del args[i:i + 2]
    model, src, dst = args
    data = np.load(src)
    feed = {k[3:]: data[k] for k in data.files if k.startswith("in/")}
    runner = Runner(model, threads)
    out = runner.run(feed)
    np.savez(dst, **{f"out/{k}": v for k, v in out.items()})
    print(json.dumps({"ai-edge-litert": litert_version(), "numpy": np.__version__, "batch": runner.batch}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
