"""``compress(config)``: checkpoint → verified fp32 ONNX → one compiled, verified artifact per target →
bundle. Plans first (targets, backends, output folder, data) so bad input fails before minutes of work."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import edgefm
from edgefm import hostcaps
from edgefm.backends import get_backend
from edgefm.backends.base import CompileJob, Samples
from edgefm.bundle import (FailedTarget, Manifest, SourceInfo, StageRecord, check_replaceable, finalize, sha256_file,
                           staging)
from edgefm.config import CompressConfig
from edgefm.contract import check_metric, enforce, resolve
from edgefm.errors import (BundleError, CalibrationError, ConfigError, DirectCheckError, EdgefmError, TargetFailedError,
                           describe_write_error)
from edgefm.targets import TargetSpec, backend_options, get_target

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
STREAM_CHUNKS = 4  # chunks per random stream when a streaming model gets no --calib


@dataclass
class Plan:
    """What ``compress`` will do, resolved from the config before any heavy work."""

    config: CompressConfig
    targets: list[TargetSpec]
    precisions: dict[str, str]

    def describe(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(mode="json"),
                "targets": {t.name: {"backend": t.backend, "precision": self.precisions[t.name],
                                     "device": t.device} for t in self.targets}}


def plan(config: CompressConfig) -> Plan:
    """Resolve targets and precisions and check what can be checked cheaply (paths, flags, backends).

    Nothing here imports torch, onnx or a runtime (backends are looked up with importlib.util.find_spec), so
    a mistake that needs no model is reported in well under a second."""
    from edgefm.datasets import check_data_path
    from edgefm.models.arch import check_arch
    from edgefm.models.spec import input_from_config

    if not config.source.exists():
        raise ConfigError(f"checkpoint {config.source}: no such file or folder")
    for name in ("calib", "eval", "train_data"):
        p = getattr(config, name)
        if p is not None:
            check_data_path(p, f"--{name.replace('_', '-')}")
    for decl in config.inputs:
        input_from_config(decl)  # a string NAME:DIMS[:DTYPE][=VALUE] or a recipe mapping
    if config.arch is not None:
        check_arch(config.arch)
    if config.submodule is not None:
        _check_submodule_source(config)
    if config.metric is not None:
        check_metric(config.metric)
    if config.distill is not None and config.prune is None:
        raise ConfigError("--distill needs --prune (or a prune section in the recipe): distillation trains the "
                          "pruned student from the original model")
    check_replaceable(config.output, config.force, _inputs(config))  # --force replaces an edgefm bundle only
    _check_writable(config.output)
    targets = [get_target(t) for t in config.targets]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ConfigError(f"--target given twice: {names}")
    for t in targets:
        backend = get_backend(t.backend)  # is_available() uses find_spec, imports no runtime; names the extra
        backend_options(backend.OPTIONS, t)  # a typo in the target's options: now, not after loading the model
    precisions = {t.name: config.quantize or t.precision for t in targets}
    if config.calib is None and any(p == "int8" for p in precisions.values()):
        raise CalibrationError("int8 needs calibration data: pass --calib FILE (.npz, .txt or an image folder), "
                               "or --quantize fp32")
    return Plan(config, targets, precisions)


def _check_submodule_source(config: CompressConfig) -> None:
    """--submodule picks a part of a torch module: refused for sources that have none (read from the file's
    first bytes or zip listing, without torch or onnx)."""
    from edgefm.models.formats import KIND_NAMES, SUBMODULE_KINDS, detect_kind

    kind = detect_kind(config.source, check_onnx=False)
    if kind not in SUBMODULE_KINDS:
        raise ConfigError(f"--submodule '{config.submodule}' needs a TorchScript file or a state_dict with --arch, "
                          f"but {config.source} is {KIND_NAMES[kind]}")
    if kind == "state_dict" and config.arch is None:
        raise ConfigError(f"--submodule '{config.submodule}' with the state_dict {config.source} needs --arch (the "
                          f"model whose submodule it is)")


def _check_writable(out: Path) -> None:
    """OUT's nearest existing ancestor must be a folder this process may write (before minutes of work)."""
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BundleError(f"output {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only_fs(parent) else "is not writable by this user"
        raise BundleError(f"output {out}: the folder {parent} {why}; choose an OUT in a folder you can write")


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def _writing(out: Path):
    """Disk full, a read-only or vanished folder while writing the bundle: one BundleError naming OUT (the
    staging folder is already removed by ``staging``, so nothing is left behind)."""
    try:
        yield
    except OSError as e:
        why = describe_write_error(e)
        if why is None:
            raise
        raise BundleError(f"cannot write the bundle {out}: {why}; nothing was written") from None


def _inputs(config: CompressConfig) -> list[Optional[Path]]:
    """Paths a run reads: an OUT holding one of them is never replaced."""
    return [config.source, config.calib, config.eval, config.train_data, config.cache_dir]


def _data(config: CompressConfig, loaded) -> tuple[Samples, Samples, list[str]]:
    """Calibration and evaluation samples; eval is held back from calib when --eval is absent."""
    from edgefm.datasets import load_samples, split
    from edgefm.models.load import example_inputs

    kw = dict(tokenizer_dir=loaded.tokenizer_dir, max_length=config.max_length, seed=config.seed)
    notes = []
    if config.calib is None:
        spec = loaded.spec
        if spec.streaming:
            chunks = [example_inputs(spec, batch=16, seed=config.seed + c) for c in range(STREAM_CHUNKS)]
            feed = {i.name: (chunks[0][i.name] if i.constant or i.name in spec.state_map
                             else np.stack([c[i.name] for c in chunks])) for i in spec.inputs}
            notes.append(f"no --calib: export verified on 16 random streams of {STREAM_CHUNKS} chunks; accuracy "
                         f"figures are not meaningful")
        else:
            feed = example_inputs(spec, batch=16, seed=config.seed)
            notes.append("no --calib: export verified on 16 random inputs; accuracy figures are not meaningful")
        calib = Samples.for_spec(spec, feed)
        return calib, calib, notes
    if config.eval is not None:
        calib = load_samples(config.calib, loaded.spec, limit=config.max_calib_samples, **kw)
        ev = load_samples(config.eval, loaded.spec, limit=config.max_eval_samples, **kw)
    else:
        everything = load_samples(config.calib, loaded.spec, **kw)
        if len(everything) < 4:
            raise CalibrationError(f"--calib {config.calib}: {len(everything)} samples; at least 4 are needed "
                                   f"(or pass --eval)")
        calib, ev = split(everything, config.eval_fraction, seed=config.seed)
        notes.append(f"no --eval: {len(ev)} of {len(everything)} --calib samples held back for evaluation")
        calib = calib.take(slice(0, config.max_calib_samples))
        ev = ev.take(slice(0, config.max_eval_samples))
    return calib, ev, notes


def _save_eval(path: Path, ev: Samples, reference: dict[str, np.ndarray]) -> None:
    arrays = {f"in/{k}": v for k, v in ev.inputs.items()}
    arrays.update({f"ref/{k}": v for k, v in reference.items()})
    if ev.labels is not None:
        arrays["labels"] = ev.labels
    np.savez_compressed(path, **arrays)


def compress(config: CompressConfig, progress: Optional[Progress] = None) -> Manifest:
    """Run the whole pipeline and write the bundle at ``config.output``; returns its manifest."""
    say = progress or (lambda msg: log.info(msg))
    p = plan(config)  # before torch & co. are imported: a mistake that needs no model fails in under a second
    from edgefm.models.load import load_checkpoint
    from edgefm.stages.export import _torch_outputs, batched_outputs, onnx_outputs

    t0 = time.perf_counter()
    say(f"loading {config.source}")
    loaded = load_checkpoint(config.source, config.arch, config.inputs, trust_source=config.trust_source,
                             submodule=config.submodule)
    from edgefm.models.output_kinds import declare, infer_kinds

    loaded.spec = declare(loaded.spec, config.outputs)  # a wrong output name fails before minutes of work
    from edgefm.models.spec import guess_state_pairs, parse_state_decl

    if config.state:
        loaded.spec.declare_state([parse_state_decl(s) for s in config.state], f"checkpoint {config.source}")
    elif config.state_guess and guess_state_pairs(loaded.spec):
        pairs = guess_state_pairs(loaded.spec)
        loaded.spec.declare_state(pairs, f"checkpoint {config.source}", how="state pair guessed from the names")
        loaded.notes.append(f"state inferred from the names: {', '.join(f'{p.input} <- {p.output}' for p in pairs)} "
                            f"(the data are streams); declare --state to change, state_guess: false to turn off")
        say(loaded.notes[-1])
    spec = loaded.spec
    stages = [StageRecord(name="load", settings={"kind": loaded.kind, "family": spec.family, "task": spec.task},
                          output_sha256=loaded.sha256, seconds=round(time.perf_counter() - t0, 3),
                          notes=list(loaded.notes))]
    calib, ev, data_notes = _data(config, loaded)
    stages[0].notes += data_notes
    if spec.preprocessing.kind == "text" and calib.inputs:
        # what the text was really padded to (--max-length, or a fixed length the model declares)
        spec.preprocessing.max_length = int(next(iter(calib.inputs.values())).shape[1])
    if calib.streamed and (config.prune is not None or config.distill is not None):
        # pruning and distillation see single calls, with the state the original model carried there
        run = lambda f: _torch_outputs(loaded.module, spec, f)  # noqa: E731
        model, extra_stages = _torch_stages(config, loaded, calib.steps(run, 32), ev.steps(run, 32), say)
    else:
        model, extra_stages = _torch_stages(config, loaded, calib, ev, say)
    stages += extra_stages
    if spec.streaming:
        stages[0].notes.append(f"streaming: state {', '.join(f'{p.input} <- {p.output}' for p in spec.state)}; "
                               f"{len(calib)} calibration and {len(ev)} eval streams of {ev.chunks} chunks, each run "
                               f"chunk by chunk with the state fed back")

    with _writing(config.output), staging(config.output, force=config.force, protect=_inputs(config)) as tmp:
        ref_path = tmp / "fp32" / "model.onnx"
        ref_path.parent.mkdir()
        if loaded.kind == "onnx":
            from edgefm.models.onnx_graph import copy_onnx, source_sha256

            copied = copy_onnx(loaded.onnx_path, ref_path)
            resolved = _resolve_ifs(loaded.onnx_path, ref_path, spec, ev, say)
            settings = {"exporter": "none (source is ONNX)", "resolve_ifs": bool(resolved.notes)}
            if resolved.folded:
                settings["static_ifs_folded"] = resolved.folded  # as an export records it
            stages.append(StageRecord(name="export", settings=settings,
                                      output_sha256=source_sha256(ref_path) if resolved.notes else loaded.sha256,
                                      notes=copied + resolved.notes))
            _mark_baked(spec, ref_path)
        else:
            # the export is checked call by call; a stream's calls carry the state torch fed back
            export_calib = calib.steps(lambda f: _torch_outputs(model, spec, f), 32) if calib.streamed else calib
            stages.append(_export_cached(config, loaded, model, export_calib, ref_path,
                                         cacheable=not extra_stages, say=say))
            _mark_baked(spec, ref_path)
        _write_sensitivity(tmp, stages)
        # the reference is the fp32 ONNX, streamed like the device will run it
        reference = batched_outputs(lambda f: onnx_outputs(ref_path, f), ev, 32)
        if calib.streamed:  # calibration sees every call of the fp32 streams, with the state they carried
            calib = calib.steps(lambda f: onnx_outputs(ref_path, f), 32)
        baked = [i.name for i in spec.inputs if i.baked]
        job_calib, job_eval = calib.without(baked), ev.without(baked)  # runtimes are fed graph inputs only
        spec, guesses = infer_kinds(spec, ref_path, reference)
        for note in guesses:
            say(note)
        stages[-1].notes += guesses
        _save_eval(tmp / "eval.npz", ev, reference)
        if loaded.tokenizer_dir is not None:
            _copy_tokenizer(loaded.tokenizer_dir, tmp / "tokenizer")
            spec = spec.model_copy(deep=True)
            spec.preprocessing.tokenizer = "tokenizer"

        entries, failed = {}, {}
        # torch.export (litert-torch, OpenVINO's torch frontend) cannot trace TorchScript: converters that start
        # from a torch module start from the verified ONNX instead
        torch_model = None if loaded.kind == "torchscript" else model
        for i, target in enumerate(p.targets):
            later = [t.backend for t in p.targets[i + 1:]]
            precision = p.precisions[target.name]
            say(f"compiling {target.name} ({target.backend}, {precision})")
            contract = resolve(spec, config, precision)
            say(f"{target.name} contract: {contract.describe()}")
            job = CompileJob(onnx_path=ref_path, spec=spec, target=target, precision=precision, calib=job_calib,
                             eval=job_eval, reference=reference, out_dir=tmp / target.name, bundle_dir=tmp,
                             config=config, model=torch_model, contract=contract,
                             progress=say)
            try:
                result = get_backend(target.backend).compile(job)
                _direct_check(result.entry, tmp, spec, ev, reference, result.entry.contract or contract, say)
            except Exception as e:  # noqa: BLE001 - with several targets, one failure must not discard the others
                if len(p.targets) == 1 or (isinstance(e, OSError) and describe_write_error(e)):
                    raise  # disk full fails every target alike: one line about the bundle, not N failures
                failed[target.name] = _failure(target, precision, contract, e, tmp, say)
                _release(target.backend, later)
                continue
            result.entry.contract = result.entry.contract or contract  # a backend may say what it was held to
            _note_size(result.entry, tmp, ref_path.parent)
            entries[target.name] = result.entry
            stages += result.stages
            del job, result
            _release(target.backend, later)
        if not entries:  # nothing to put in a bundle
            raise TargetFailedError("every target failed: " + "; ".join(f"{n}: {f.reason}" for n, f in failed.items()))
        manifest = Manifest(edgefm_version=edgefm.__version__, host=hostcaps.detect().as_dict(),
                            source=SourceInfo(path=str(config.source.resolve()), kind=loaded.kind,
                                              sha256=loaded.sha256),
                            spec=spec, config=config.model_dump(mode="json"), reference="fp32/model.onnx",
                            eval_data="eval.npz", targets=entries, failed=failed, stages=stages)
        finalize(tmp, manifest)
    say(f"wrote {config.output} in {time.perf_counter() - t0:.1f} s"
        + (f"; {len(failed)} target(s) failed: {', '.join(failed)}" if failed else ""))
    return manifest


def _resolve_ifs(source: Path, ref_path: Path, spec, ev: Samples, say: Progress):
    """Resolve the ``If`` nodes of the bundle's copy of an ONNX source that the declared inputs decide
    (edgefm.models.onnx_fold), then check the result against the source on the eval data, call after call:
    any difference beyond float rounding puts the plain copy back. Returns the ``Resolved`` record (nothing
    folded when the copy was put back)."""
    from edgefm.models.onnx_fold import Resolved, resolve_ifs_file
    from edgefm.models.onnx_graph import copy_onnx

    resolved = resolve_ifs_file(ref_path, spec)
    notes = resolved.notes
    if not resolved.folded:
        return resolved
    a, b = _session(source), _session(ref_path)
    want, got = ev.run(a, 32), ev.run(b, 32)
    diff = max((float(np.max(np.abs(want[k].astype(np.float64) - got[k]))) if want[k].size else 0.0)
               for k in want)
    scale = max(1.0, max(float(np.max(np.abs(v))) if v.size else 0.0 for v in want.values()))
    if set(want) != set(got) or not diff <= 1e-5 * scale:
        copy_onnx(source, ref_path)  # the plain copy, as if nothing had been tried
        return Resolved(resolved.before, resolved.before,
                        [f"{notes[0]}; but its outputs moved from the source's by {diff:.3g} on the eval data, so "
                         f"the source graph is used unchanged"])
    on = f"{len(ev)} eval stream(s) of {ev.chunks} calls" if ev.streamed else f"{len(ev)} eval sample(s)"
    notes[0] += f"; outputs = the source's on {on} (max abs diff {diff:.3g})"
    say(notes[0])
    return resolved


def _session(path: Path) -> Callable[[dict], dict]:
    """One ONNX Runtime CPU session for ``path``, as a feed -> outputs function (graph inputs only)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names, wanted = [o.name for o in sess.get_outputs()], {i.name for i in sess.get_inputs()}
    return lambda feed: dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in wanted})))


def _mark_baked(spec, onnx_path: Path) -> None:
    """Constants the exported graph has no input for (e.g. an ``int`` argument of scripted code, folded in at
    export) are marked ``baked``: a Predictor checks and drops them instead of feeding them."""
    import onnx

    graph_inputs = {i.name for i in onnx.load(str(onnx_path), load_external_data=False).graph.input}
    for inp in spec.inputs:
        if inp.constant and inp.name not in graph_inputs:
            inp.baked = True


def _direct_check(entry, tmp: Path, spec, ev: Samples, reference, contract, say: Progress) -> None:
    """Run the staged artifact through its runtime's own API, call after call in order and reversed
    (edgefm.direct), record it in ``entry.direct``; DirectCheckError when the outputs depend on the call order,
    AccuracyError when the contract refuses them."""
    from edgefm.direct import check_entry

    res = check_entry(tmp, entry, spec, ev.inputs, reference, ev.labels, contract)
    entry.direct = res.record()
    say(f"direct check: {res.detail}")
    if res.ok is False:
        if res.verdict is not None and res.order_identical:  # the contract's own one-line refusal
            enforce(f"direct check ({res.runtime})", res.verdict)
        raise DirectCheckError(f"direct check: {res.detail}")


def _release(backend: str, later: list[str]) -> None:
    """Between targets: a backend no later target uses gives back what it keeps (the LiteRT converter
    process), and memory the finished target freed goes back to the system, so that a multi-target compress
    peaks at its heaviest target rather than at the sum of them."""
    import gc

    if backend not in later:
        release = getattr(get_backend(backend), "release", None)
        if release is not None:
            release()
    gc.collect()
    try:  # glibc keeps freed heap pages mapped; hand them back (no-op elsewhere)
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _failure(target: TargetSpec, precision: str, contract, e: Exception, tmp: Path, say: Progress) -> FailedTarget:
    """Record a target that failed (its half-written folder removed) so that the others still make a bundle."""
    shutil.rmtree(tmp / target.name, ignore_errors=True)
    if isinstance(e, EdgefmError):
        reason = str(e)
    else:  # a bug or a library failing inside: still one line, the traceback in the debug log
        log.debug("target %s failed", target.name, exc_info=True)
        reason = f"unexpected {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} " \
                 f"(--verbose shows the traceback)"
    say(f"target {target.name} FAILED: {reason}")
    return FailedTarget(backend=target.backend, precision=precision, error=type(e).__name__, reason=reason,
                        contract=contract)


def _note_size(entry, bundle: Path, fp32_dir: Path) -> None:
    """An int8 artifact that is not smaller than the fp32 model (e.g. LSTM weights left in float) says so."""
    if entry.precision != "int8":
        return
    fp32 = sum(f.stat().st_size for f in fp32_dir.rglob("*") if f.is_file())
    files = {f for f in entry.files if f != entry.options.get("build")} or {entry.artifact}
    size = sum((bundle / f).stat().st_size for f in files if (bundle / f).is_file())
    if fp32 and size >= fp32:
        entry.notes.append(f"int8 artifact is not smaller than the fp32 model ({size / 1e6:.3g} MB vs {fp32 / 1e6:.3g} "
                           f"MB): int8 buys no size here (weights left in float, e.g. LSTM/GRU or layers kept in "
                           f"float, or a model so small that the format's overhead dominates)")


def _cache_dir(config: CompressConfig) -> Optional[Path]:
    if config.cache_dir is not None:
        return config.cache_dir
    env = os.environ.get("EDGEFM_CACHE_DIR")
    if env == "0":
        return None
    return Path(env) if env else Path.home() / ".cache" / "edgefm"


def _export_cached(config: CompressConfig, loaded, model, calib: Samples, out: Path, cacheable: bool,
                   say: Progress) -> StageRecord:
    """Export (and verify) once per content. The key covers everything that defines the model (the
    checkpoint's bytes, the --arch code, the module's class sources, structure and weights), the spec, the
    samples the export is verified on, the limits and the torch/edgefm versions. A hit is verified against
    torch again, with the same limits as a fresh export, before it is used; a torn, corrupt or failing
    entry is a miss."""
    from edgefm.stages.export import export_onnx, verify_onnx

    cache = _cache_dir(config) if cacheable else None
    key = _export_key(config, loaded, model, calib) if cache is not None else None
    if key is not None:
        hit_onnx, hit_rec = cache / "exports" / f"{key}.onnx", cache / "exports" / f"{key}.json"
        record = _cache_entry(hit_onnx, hit_rec)
        if record is not None:
            shutil.copyfile(hit_onnx, out)
            try:
                record.metrics = verify_onnx(model, loaded.spec, calib, out, config.tolerances.export)
            except Exception as e:  # noqa: BLE001 - AccuracyError or an ONNX that no longer runs: export afresh
                log.warning("the cached export %s failed verification against torch (%s); exporting again",
                            hit_onnx, str(e).splitlines()[0] if str(e) else type(e).__name__)
                out.unlink(missing_ok=True)
            else:
                record.notes.append(f"reused the verified export from the cache ({hit_onnx}); verified against torch "
                                    f"again with the same limits")
                say("reusing the ONNX export from the cache (verified against torch again)")
                return record
    say("exporting to ONNX and verifying against torch")
    record = export_onnx(model, loaded.spec, calib, out, config.tolerances.export, opset=config.opset)
    if key is not None:
        _cache_put(cache / "exports", key, out, record)
    return record


def _cache_entry(onnx_path: Path, rec_path: Path) -> Optional[StageRecord]:
    """The cached record when both files are there, whole, and the ONNX matches its recorded sha256."""
    if not (onnx_path.is_file() and rec_path.is_file()):
        return None
    try:
        record = StageRecord.model_validate_json(rec_path.read_text())
    except (ValueError, OSError) as e:  # torn or corrupt (a full disk, a killed run): a miss
        log.debug("export cache entry %s is unreadable (%s): a miss", rec_path, str(e).splitlines()[0])
        return None
    if sha256_file(onnx_path) != record.output_sha256:
        log.debug("export cache entry %s: the ONNX does not match its record: a miss", onnx_path)
        return None
    return record


def _cache_put(folder: Path, key: str, onnx_path: Path, record: StageRecord) -> None:
    """Write an entry atomically: each file to a temporary name, renamed into place, the record last."""
    tmp_onnx = folder / f".{key}.{os.getpid()}.onnx.tmp"
    tmp_rec = folder / f".{key}.{os.getpid()}.json.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path, tmp_onnx)
        tmp_onnx.replace(folder / f"{key}.onnx")
        tmp_rec.write_text(record.model_dump_json())
        tmp_rec.replace(folder / f"{key}.json")
    except OSError as e:  # a read-only or full cache must not fail the run
        log.warning("could not write the export cache %s: %s", folder, e)
        for t in (tmp_onnx, tmp_rec):
            t.unlink(missing_ok=True)


#: Bumped when the export writes different files for the same inputs (static If folding: 2; If folding by
#: onnxscript, edgefm.models.onnx_fold: 3), so that cached exports made before are not reused.
EXPORT_REVISION = "3"


def _export_key(config: CompressConfig, loaded, model, calib: Samples) -> str:
    import onnx
    import torch

    h = hashlib.sha256()
    for part in (loaded.sha256, model_fingerprint(model), _arch_code(config.arch), loaded.spec.model_dump_json(),
                 config.tolerances.export.model_dump_json(), str(config.opset), torch.__version__, onnx.__version__,
                 edgefm.__version__, EXPORT_REVISION):
        h.update(part.encode())
        h.update(b"\0")
    if config.submodule:  # (the fingerprint differs too; said outright, and old keys stay valid without it)
        h.update(f"submodule={config.submodule}\0".encode())
    for name in sorted(calib.inputs):
        h.update(name.encode())
        h.update(np.array(calib.take(slice(0, 64)).inputs[name]).tobytes())  # each input on its batch axis
    return h.hexdigest()[:32]


def _arch_code(arch: Optional[str]) -> str:
    """sha256 of the file that defines an --arch factory (``file.py:fn`` or an imported ``module:fn``)."""
    import importlib.util
    import sys

    if not arch or ":" not in arch or arch.startswith("timm:"):
        return arch or ""
    where = arch.rsplit(":", 1)[0]
    path = Path(where) if where.endswith(".py") or "/" in where else None
    if path is None:
        mod = sys.modules.get(where)
        origin = getattr(mod, "__file__", None) if mod else None
        if origin is None:
            spec = importlib.util.find_spec(where)
            origin = spec.origin if spec else None
        path = Path(origin) if origin else None
    return f"{arch}:{sha256_file(path)}" if path is not None and path.is_file() else arch


def model_fingerprint(model) -> str:
    """sha256 of what defines a torch module's behaviour: the source files of its classes (every class in
    their MRO; scripted and graph modules' generated code), its structure (``repr``: hyper-parameters such
    as the activation or dropout) and every tensor of its state_dict."""
    import inspect

    import torch

    h = hashlib.sha256()
    files: set[str] = set()
    for m in model.modules():
        for klass in type(m).__mro__:
            try:
                f = inspect.getsourcefile(klass)
            except TypeError:  # built-in classes
                f = None
            if f and Path(f).is_file():
                files.add(f)
            else:
                h.update(f"{klass.__module__}.{klass.__qualname__}".encode())
        code = getattr(m, "code", None)
        if isinstance(code, str):
            h.update(code.encode())
    for f in sorted(files):
        h.update(f.encode())
        h.update(Path(f).read_bytes())
    h.update(repr(model).encode())
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r}".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _torch_stages(config: CompressConfig, loaded, calib: Samples, ev: Samples, say: Progress):
    """Torch-side transformations before export (prune, distill). Returns (model, stage records).

    Each record carries params, MACs and accuracy (or fidelity to the original model) after its stage."""
    if config.prune is None and config.distill is None:
        return loaded.module, []
    if config.prune is None:
        raise ConfigError("--distill needs --prune (or a prune section in the recipe): distillation trains the "
                          "pruned student from the original model")
    if loaded.kind not in ("hf", "state_dict"):
        raise ConfigError(f"pruning needs an eager torch module (a Hugging Face folder, or a state_dict with --arch); "
                          f"{config.source} is a {loaded.kind} checkpoint")
    from edgefm.stages.prune import prune_model

    say("pruning")
    model, record = prune_model(loaded.module, loaded.spec, config.prune, ev)
    stages = [record]
    if config.distill is not None:
        from edgefm.stages.distill import distill_model

        train, val = _train_data(config, loaded, calib, ev)
        say(f"distilling on {len(train)} samples" + (" (no labels: the teacher labels them)" if train.labels is None else ""))
        model, record = distill_model(loaded.module, model, loaded.spec, config.distill, train, val, report=say)
        # early stopping looked at `val`; the figures comparable with the other stages are on the eval set
        from edgefm.stages.prune import outputs, quality

        record.metrics["eval"] = quality(loaded.spec, outputs(loaded.module, loaded.spec, ev),
                                         outputs(model, loaded.spec, ev), ev.labels)
        stages.append(record)
    return model, stages


def _write_sensitivity(bundle: Path, stages: list[StageRecord]) -> None:
    """With prune.auto, the sensitivity analysis goes into the bundle as a table and a plot."""
    for st in stages:
        if st.name == "prune" and "sensitivity" in st.metrics:
            from edgefm.stages.sensitivity import SensitivityTable

            table = SensitivityTable.from_dict(st.metrics["sensitivity"])
            (bundle / "prune").mkdir(exist_ok=True)
            (bundle / "prune" / "sensitivity.md").write_text(table.markdown() + "\n")
            table.plot(bundle / "prune" / "sensitivity.png")
            st.notes.append("sensitivity table and plot: prune/sensitivity.md, prune/sensitivity.png")


def _train_data(config: CompressConfig, loaded, calib: Samples, ev: Samples) -> tuple[Samples, Samples]:
    """(train, validation) for distillation: --train-data (default --calib), a tenth held back for early
    stopping when there is enough of it, so the eval figures in the manifest stay unbiased."""
    from edgefm.datasets import load_samples, split

    if config.train_data is not None:
        train = load_samples(config.train_data, loaded.spec, tokenizer_dir=loaded.tokenizer_dir,
                             max_length=config.max_length, seed=config.seed)
    else:
        train = calib
    if len(train) >= 50:
        return split(train, 0.1, seed=config.seed)
    return train, ev


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                    "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    """The tokenizer travels with the bundle so a device can turn text into input_ids the same way."""
    dst.mkdir()
    for name in _TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, dst / name)
