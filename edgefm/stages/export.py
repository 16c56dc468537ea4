"""torch → ONNX, verified.

The export is always followed by a check against torch on real calibration samples, at batch 1 and at a
larger batch (a dynamic batch axis that silently froze shows up here), like Optimum's exporter."""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgefm.samples import Samples
from edgefm.bundle import StageRecord, sha256_file
from edgefm.errors import AccuracyError, ExportError, describe_write_error
from edgefm.fidelity import Limits, check, compare
from edgefm.models.onnx_fold import Resolved, resolve_ifs_file
from edgefm.models.spec import ModelSpec

log = logging.getLogger(__name__)

#: Exporters in the order tried. The TorchScript-based one (opset 17) gave faster ORT models for MiniLM
#: (TOOLCHAIN.md: 15.6 vs 20.5 ms fp32); the dynamo one handles what it cannot (ExportedPrograms).
EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 20}
VERIFY_BATCH = 8


def _torch_outputs(module, spec: ModelSpec, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    args = tuple(torch.from_numpy(np.array(feed[n])) for n in spec.input_names if n in feed)
    with torch.no_grad():
        out = module(*args)
    if not isinstance(out, (tuple, list)):
        out = (out,)
    return {name: t.detach().cpu().numpy() for name, t in zip(spec.output_names, out)}


def onnx_outputs(path: Path, feed: dict[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
    """Run an ONNX file in ONNX Runtime (CPU) and return outputs by name."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    res = sess.run(names, {k: v for k, v in feed.items() if k in wanted})
    return dict(zip(names, res))


def batched_outputs(run, samples: Samples, batch: int) -> dict[str, np.ndarray]:
    """Call ``run(feed) -> dict`` batch by batch and join on each output's sample axis (streams: chunk by
    chunk, state fed back; see ``Samples.run``)."""
    return samples.run(run, batch)


def _export_once(module, spec: ModelSpec, example: dict[str, np.ndarray], out: Path, exporter: str,
                 opset: Optional[int]) -> Resolved:
    """Write ``out`` with ``exporter``, then resolve the ``If`` nodes (scripted control flow: ``if len(state)``,
    rank checks, ``squeeze(dim)``) that the declared shapes and constants decide (edgefm.models.onnx_fold);
    returns what that did."""
    import torch

    args = tuple(torch.from_numpy(np.array(example[n])) for n in spec.input_names)
    # constants are fixed; the batch axis is named "batch" wherever it sits (a state's (layers, batch, hidden))
    axes = {s.name: {i: ("batch" if i == s.batch_axis else d) for i, d in s.dynamic_axes.items()}
            for s in spec.inputs if not s.constant and s.dynamic_axes}
    # Outputs share the batch axis (and the sequence axis for token-level outputs); named by position.
    out_axes = {o.name: {o.batch_axis: "batch"} for o in spec.outputs}
    opset = opset or DEFAULT_OPSET[exporter]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(module, args, str(out), dynamo=False, opset_version=opset,
                              input_names=spec.input_names, output_names=spec.output_names,
                              dynamic_axes={**axes, **out_axes}, do_constant_folding=True)
        else:
            batch = torch.export.Dim("batch", min=1)
            shapes = tuple({} if s.constant else
                           {i: (batch if i == s.batch_axis else torch.export.Dim.AUTO) for i in s.dynamic_axes}
                           for s in spec.inputs)
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                                     input_names=spec.input_names, output_names=spec.output_names,
                                     external_data=False, report=False)
            prog.save(str(out), external_data=False)
    return resolve_ifs_file(out, spec)


def verify_onnx(module, spec: ModelSpec, calib: Samples, path: Path, limits: Limits) -> dict[str, Any]:
    """Check an existing ONNX file against ``module`` exactly as ``export_onnx`` checks a fresh export (the
    same samples, batch 1 and batch ``VERIFY_BATCH``, the same ``limits``); returns the merged metrics or
    raises ``AccuracyError``. Used for a cached export, which must be as verified as a new one."""
    import onnx

    onnx.checker.check_model(str(path))
    verify_set = calib.take(slice(0, min(len(calib), 4 * VERIFY_BATCH)))
    ref = batched_outputs(lambda f: _torch_outputs(module, spec, f), verify_set, VERIFY_BATCH)
    got_b1 = batched_outputs(lambda f: onnx_outputs(path, f), verify_set.take(slice(0, 4)), 1)
    got_bn = batched_outputs(lambda f: onnx_outputs(path, f), verify_set, VERIFY_BATCH)
    metrics = compare(ref, got_bn, spec)
    n1 = len(verify_set.take(slice(0, 4)))
    metrics_b1 = compare({k: np.take(v, np.arange(n1), axis=verify_set.out_axes.get(k, 0)) for k, v in ref.items()},
                         got_b1, spec)
    check("export (torch vs ONNX, batch %d)" % VERIFY_BATCH, metrics, limits)
    check("export (torch vs ONNX, batch 1)", metrics_b1, limits)
    return {k: {**m, **{f"batch1_{mk}": mv for mk, mv in metrics_b1.get(k, {}).items()}} for k, m in metrics.items()}


def _why(err: Exception) -> str:
    """One line for an exporter failure, without terminal colour codes: the dynamo exporter's "Exception
    summary" (not its "step 1/3" boilerplate); the legacy exporter's message with the scripted source line
    it points at (not the graph dump around it); a TorchScript interpreter error's scripted line."""
    from edgefm.models.wrap import ANSI, script_error, scripted_line

    text = ANSI.sub("", str(err)).strip()
    name = type(err).__name__
    summary = re.search(r"## Exception summary\s*\n\s*(\S.*)", text)
    if summary:  # torch.onnx(dynamo=True): the underlying exception, as "<class 'ValueError'>: message"
        m = re.match(r"<class '(?:[\w.]*\.)?(\w+)'>:\s*(.*)", summary.group(1))
        inner = f"{m.group(1)}: {m.group(2)}" if m else summary.group(1)
        return f"{name}: {_clip(inner)}"
    if "TorchScript interpreter" in text:
        return script_error(text, Path("model")).split(": ", 1)[-1][:400]
    head = re.split(r"\s*\[Caused by|\n", text, maxsplit=1)[0] if text else ""
    found = scripted_line(text)
    where = f" at {Path(found[0]).name}:{found[1]}: `{found[3]}`" if found else ""
    return f"{name}: {_clip(' '.join(head.split()))}{where}"


def _clip(msg: str, limit: int = 240) -> str:
    """``msg`` cut at a sentence end (or a word) near ``limit`` characters: no half-words in a one-line reason."""
    if len(msg) <= limit:
        return msg
    cut = msg.rfind(". ", 0, limit)
    return msg[:cut + 1] if cut > 40 else msg[:msg.rfind(" ", 0, limit)] + " …"


def export_onnx(module, spec: ModelSpec, calib: Samples, out: Path, limits: Limits,
                opset: Optional[int] = None, exporters: tuple[str, ...] = EXPORTERS) -> StageRecord:
    """Export ``module`` to ``out`` and verify it against torch; returns the stage record.

    Tries each exporter in turn; one whose file fails to run, or runs with the wrong results, is
    recorded and the next is tried. Raises ``ExportError`` when none exports, ``AccuracyError`` when the
    best export is past ``limits``."""
    import onnx

    t0 = time.perf_counter()
    if len(calib) < 2:
        raise ExportError("export needs at least 2 calibration samples (a batch of 2 keeps the batch axis dynamic)")
    example = calib.take(slice(0, 2)).inputs
    verify_set = calib.take(slice(0, min(len(calib), 4 * VERIFY_BATCH)))
    ref = batched_outputs(lambda f: _torch_outputs(module, spec, f), verify_set, VERIFY_BATCH)
    attempts: list[str] = []
    last_err: Optional[Exception] = None
    for exporter in exporters:
        try:
            resolved = _export_once(module, spec, example, out, exporter, opset)
            onnx.checker.check_model(str(out))
            got_b1 = batched_outputs(lambda f: onnx_outputs(out, f), verify_set.take(slice(0, 4)), 1)
            got_bn = batched_outputs(lambda f: onnx_outputs(out, f), verify_set, VERIFY_BATCH)
        except OSError as e:
            if describe_write_error(e) is None:  # not disk full / read-only: try the next exporter
                attempts.append(f"{exporter}: OSError: {e}")
                last_err = e
                out.unlink(missing_ok=True)
                continue
            out.unlink(missing_ok=True)
            raise  # disk full: another exporter would fail the same way; the pipeline says it in one line
        except Exception as e:  # noqa: BLE001 - any exporter failure means: try the next one
            attempts.append(f"{exporter}: {_why(e)}")
            last_err = e
            log.debug("exporter %s failed", exporter, exc_info=True)
            out.unlink(missing_ok=True)
            continue
        n1 = len(verify_set.take(slice(0, 4)))
        ref_b1 = {k: np.take(v, np.arange(n1), axis=verify_set.out_axes.get(k, 0)) for k, v in ref.items()}
        metrics = {f"{k}": m for k, m in compare(ref, got_bn, spec).items()}
        metrics_b1 = compare(ref_b1, got_b1, spec)
        merged = {k: {**m, **{f"batch1_{mk}": mv for mk, mv in metrics_b1.get(k, {}).items()}}
                  for k, m in metrics.items()}
        try:
            check("export (torch vs ONNX, batch %d)" % VERIFY_BATCH, metrics, limits)
            check("export (torch vs ONNX, batch 1)", metrics_b1, limits)
        except AccuracyError as e:
            attempts.append(f"{exporter}: {e}")
            last_err = e
            out.unlink(missing_ok=True)
            continue
        model = onnx.load(str(out), load_external_data=False)
        settings: dict[str, Any] = {"exporter": exporter, "opset": model.opset_import[0].version,
                                    "verify_samples": len(verify_set), "verify_batches": [1, VERIFY_BATCH],
                                    "limits": limits.model_dump(exclude_none=True)}
        notes = [f"tried {a}" for a in attempts] + resolved.notes
        if resolved.folded:
            settings["static_ifs_folded"] = resolved.folded
        return StageRecord(name="export", settings=settings, output_sha256=sha256_file(out),
                           seconds=round(time.perf_counter() - t0, 3), metrics=merged, notes=notes)
    if isinstance(last_err, AccuracyError):
        raise last_err
    raise ExportError("ONNX export failed with every exporter: " + " | ".join(attempts))
