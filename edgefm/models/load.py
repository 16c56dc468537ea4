"""``load_checkpoint``: any supported SOURCE → a ``LoadedModel`` (an fp32 torch module in eval mode whose
``forward(*inputs in spec order)`` returns a tuple of tensors in spec output order, plus its ``ModelSpec``).

Kinds are told apart by content (see ``formats``); weights are read safely; everything is offline."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from edgefm.bundle import sha256_path
from edgefm.errors import CheckpointError, ConfigError
from edgefm.models import wrap
from edgefm.models.formats import KIND_NAMES, SUBMODULE_KINDS, detect_kind, read_state_dict
from edgefm.models.script_state import check_stateless, select_submodule
from edgefm.models.guess import family_of, task_and_preprocessing
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec, Preprocessing, input_from_config

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A checkpoint, loaded. ``module`` is None for ``.onnx`` sources (``onnx_path`` is the model)."""

    module: Optional["torch.nn.Module"]
    spec: ModelSpec
    kind: str  # "hf" | "state_dict" | "torchscript" | "exported_program" | "onnx"
    source: Path
    sha256: str
    onnx_path: Optional[Path] = None
    tokenizer_dir: Optional[Path] = None
    notes: list[str] = field(default_factory=list)


def load_checkpoint(source: Path, arch: Optional[str] = None,
                    inputs: Sequence[Union[str, InputSpec]] = (), trust_source: bool = False,
                    submodule: Optional[str] = None) -> LoadedModel:
    """Load ``source`` (HF folder, state_dict + ``arch``, TorchScript, ``.pt2``, ``.onnx``).

    A torch.export program (``.pt2``, whatever its name: the kind is judged by content) is only loaded with
    ``trust_source=True`` (``--trust-source``): ``torch.export.load`` unpickles parts of the archive with
    ``weights_only=False`` and resolves names in it, so a crafted file runs code.

    ``inputs`` are ``--input`` declarations (``NAME:DIMS[:DTYPE]`` strings or ``InputSpec``): they define the
    inputs of state_dict/TorchScript modules and override same-named inputs of the other kinds. Raises
    ``CheckpointError`` (file problems) or ``ConfigError`` (bad ``--arch``/``--input``).

    ``submodule`` (``--submodule``, a dotted path as in ``named_modules()``) loads that part of a TorchScript
    or ``--arch`` model instead of the whole, e.g. the inner model of a scripted module that keeps its state
    in attributes (which is refused with ``ExportError``: see ``script_state``)."""
    source = Path(source)
    decls = [input_from_config(d) for d in inputs]
    kind = detect_kind(source)
    if arch is not None and kind != "state_dict":
        raise ConfigError(f"--arch '{arch}' is only used with a state_dict, but {source} is a {kind} checkpoint")
    if submodule is not None and kind not in SUBMODULE_KINDS:
        raise ConfigError(f"--submodule '{submodule}' needs a TorchScript file or a state_dict with --arch, but "
                          f"{source} is {KIND_NAMES[kind]}")
    loader = {"hf": _hf, "state_dict": _state_dict, "torchscript": _torchscript,
              "exported_program": _exported_program, "onnx": _onnx}[kind]
    if kind == "exported_program" and not trust_source:
        raise CheckpointError(
            f"checkpoint {source}: a torch.export program (.pt2); edgefm does not load it by default because "
            f"torch.export.load unpickles parts of the file, which can run arbitrary code. Pass --trust-source "
            f"(trust_source=True) only for a file you made or trust, or export it to ONNX and pass the .onnx")
    loaded = (loader(source, arch, decls, submodule) if kind in SUBMODULE_KINDS
              else loader(source, arch, decls))
    if kind == "onnx":
        from edgefm.models.onnx_graph import source_sha256

        loaded.sha256 = source_sha256(source)  # the weights in external data files count too
    else:
        loaded.sha256 = sha256_path(source)
    for note in loaded.notes:
        log.info("%s", note)
    return loaded


def example_inputs(spec: ModelSpec, batch: int = 2, seq: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for tracing/export: ``batch`` on axis 0, ``seq`` on other dynamic axes. Floats uniform in
    [0, 1); ``*mask`` ones; ``token_type_ids`` zeros; ``input_ids`` in [1, 100) (valid in any real vocab);
    other integers 0/1 (valid for any embedding table)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in spec.inputs:
        shape, dt = inp.example_shape(batch, seq), np.dtype(inp.dtype)
        if inp.constant:
            feed[inp.name] = inp.constant_array()
            continue
        if inp.name in spec.state_map:  # a stream starts from zeros
            feed[inp.name] = np.zeros(shape, dtype=dt)
            continue
        if dt.kind == "f":
            arr = rng.random(shape, dtype=np.float32).astype(dt)
        elif dt.kind == "b":
            arr = np.ones(shape, dtype=dt)
        elif inp.name.endswith("mask"):
            arr = np.ones(shape, dtype=dt)
        elif inp.name == "token_type_ids":
            arr = np.zeros(shape, dtype=dt)
        elif inp.name == "input_ids":
            arr = rng.integers(1, 100, shape).astype(dt)
        else:
            arr = rng.integers(0, 2, shape).astype(dt)
        feed[inp.name] = arr
    return feed


def _override(inputs: list[InputSpec], decls: Sequence[InputSpec], source: Path) -> list[InputSpec]:
    """Declared inputs replace the same-named ones read from the checkpoint."""
    names = [i.name for i in inputs]
    unknown = [d.name for d in decls if d.name not in names]
    if unknown:
        raise ConfigError(f"checkpoint {source}: --input names {unknown} are not inputs of the model; its inputs are {names}")
    by_name = {d.name: d for d in decls}
    return [by_name.get(i.name, i) for i in inputs]


def _hf(source: Path, arch, decls) -> LoadedModel:
    from edgefm.models.hf import load_hf

    hf = load_hf(source)
    names = hf.input_names
    module = wrap.wrap(hf.module, names, as_kwargs=True, select=[hf.select] if hf.select else None)
    inputs = _override([InputSpec(name=n, shape=["batch", "sequence"], dtype="int64") for n in names], decls, source)
    fixed = [i.shape[1] for i in inputs if len(i.shape) > 1 and isinstance(i.shape[1], int)]
    if fixed:  # the tokenizer pads every input to one length: a length declared for one holds for all
        declared = {d.name for d in decls}
        inputs = [i if i.name in declared else InputSpec(name=i.name, shape=["batch", fixed[0]], dtype=i.dtype)
                  for i in inputs]
    spec = ModelSpec(family="transformer", task=hf.task, inputs=inputs,
                     outputs=[OutputSpec(name=hf.output, kind=hf.output_kind, reason=_hf_reason(hf))],
                     num_classes=hf.num_classes,
                     arch=hf.arch, preprocessing=Preprocessing(kind="text", tokenizer=str(hf.model_dir),
                                                               max_length=fixed[0] if fixed else hf.max_length))
    wrap.probe(module, example_inputs(spec), source)  # e.g. an encoder-decoder that needs decoder inputs fails here
    return LoadedModel(module, spec, "hf", source, "", tokenizer_dir=hf.model_dir, notes=hf.notes)


def _hf_reason(hf) -> str:
    """Why the one output of a Hugging Face model has its kind (a strong guess, kept by later inference)."""
    if hf.output == "sentence_embedding":
        return "sentence-transformers pooling: a sentence embedding"
    if hf.output == "last_hidden_state":
        return "Hugging Face base model: per-token hidden states, judged as embeddings"
    return f"Hugging Face {hf.task} head: class scores"


def _state_dict(source: Path, arch, decls, submodule: Optional[str] = None) -> LoadedModel:
    from edgefm.models.arch import build_arch, load_weights

    if not arch:
        raise CheckpointError(f"checkpoint {source}: a state_dict (weights only); pass --arch module.path:factory, "
                              f"path/to/file.py:factory or timm:NAME to say which model they belong to")
    module = build_arch(arch)  # before reading weights: a wrong --arch is the cheaper error to report
    state, notes = read_state_dict(source, expected=set(module.state_dict()))
    notes += load_weights(module, state, source, arch)
    if submodule is not None:
        module = select_submodule(module, submodule, source)
        notes.append(f"exported the submodule '{submodule}' ({type(module).__name__}) of the --arch model")
    return _from_module(module.float().eval(), source, "state_dict", decls, arch, notes)


def _torchscript(source: Path, arch, decls, submodule: Optional[str] = None) -> LoadedModel:
    try:
        module = torch.jit.load(str(source), map_location="cpu")
    except Exception as e:  # RuntimeError from the archive reader for corrupt files
        raise CheckpointError(f"checkpoint {source}: corrupt TorchScript file ({_first_line(e)})") from None
    arch_name = module.original_name
    if submodule is not None:
        module = select_submodule(module, submodule, source)
        arch_name = f"{arch_name}.{submodule}"
    # before running it: a forward that writes attributes would also change them under our probes
    check_stateless(module, source, submodule)
    scalars = wrap.scalar_params(module)
    for i, (name, typ) in scalars.items():  # a Python number argument can only be exported as a constant
        d = decls[i] if i < len(decls) else None
        if d is None or not d.constant:
            raise ConfigError(
                f"checkpoint {source}: forward takes '{name}: {typ}' (a Python number, not a tensor); declare it as a "
                f"constant, e.g. --input {name}:scalar:{'int64' if typ == 'int' else 'float32'}=VALUE, and every "
                f"input before it")
    try:
        loaded = _from_module(module.float().eval(), source, "torchscript", decls, arch_name, [],
                              scalars={i: t for i, (_, t) in scalars.items()})
    except CheckpointError as e:
        raise CheckpointError(wrap.script_error(str(e), source)) from None
    # The legacy ONNX exporter cannot call a loaded ScriptModule from inside an eager wrapper, and
    # torch.export cannot trace TorchScript at all: tracing the wrapper gives one ScriptModule (the
    # inner scripted code, control flow included, is called as is) that dynamo=False exports.
    args = tuple(torch.from_numpy(v) for v in example_inputs(loaded.spec).values())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded.module = torch.jit.trace(loaded.module, args, check_trace=False)
    except Exception as e:  # the scripted code failing on the example: name its line, not the boilerplate
        raise CheckpointError(wrap.script_error(str(e), source)) from None
    if submodule is not None:
        loaded.notes.append(f"exported the submodule '{submodule}' ({module.original_name}) of {source.name}")
    loaded.notes.append(f"{source.name} is TorchScript: export it with torch.onnx.export(..., dynamo=False)")
    for i, (name, _) in scalars.items():
        loaded.notes.append(f"'{name}' is a Python number in forward: exported as the constant {decls[i].value}")
    return loaded


def _from_module(module, source: Path, kind: str, decls, arch: str, notes: list[str],
                 scalars: Optional[dict[int, str]] = None) -> LoadedModel:
    if decls:
        inputs = wrap.declared_inputs(module, decls, source)
    else:
        inputs, note = wrap.infer_inputs(module, source)
        notes.append(note)
    return _finish(module, inputs, family_of(wrap.type_names(module)), source, kind, arch, notes, scalars)


def _finish(inner, inputs: list[InputSpec], family: str, source: Path, kind: str, arch: str,
            notes: list[str], scalars: Optional[dict[int, str]] = None) -> LoadedModel:
    """Wrap ``inner``, run it once to learn its outputs, and complete the spec."""
    module = wrap.wrap(inner, [i.name for i in inputs], fixed_mode=kind == "exported_program", scalars=scalars)
    probe = ModelSpec(family=family, inputs=inputs)
    outputs, num_classes = wrap.learn_outputs(module, example_inputs(probe), source)
    task, pre = task_and_preprocessing(family, inputs, outputs)
    spec = ModelSpec(family=family, task=task, inputs=inputs, outputs=outputs, preprocessing=pre,
                     num_classes=num_classes, arch=arch)
    return LoadedModel(module, spec, kind, source, "", notes=notes)


def _exported_program(source: Path, arch, decls) -> LoadedModel:
    try:
        ep = torch.export.load(str(source))
    except Exception as e:  # corrupt archive, or a program from an incompatible torch version
        raise CheckpointError(f"checkpoint {source}: cannot load the torch.export program ({_first_line(e)})") from None
    inputs, notes = [], []
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for name in ep.graph_signature.user_inputs:
        val = placeholders[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise CheckpointError(f"checkpoint {source}: input '{name}' is not a tensor; edgefm needs tensor inputs")
        dims = []
        for i, d in enumerate(val.shape):
            if isinstance(d, int):
                dims.append(d)
            else:
                dims.append("batch" if i == 0 else ("sequence" if i == 1 and not val.is_floating_point()
                                                    else f"{name}_dim{i}"))
        if dims and isinstance(dims[0], int):
            notes.append(f"{source.name} was exported with a fixed batch of {dims[0]} for '{name}'; export it with "
                         f"dynamic_shapes for a dynamic batch")
        dtype = str(val.dtype).removeprefix("torch.")
        inputs.append(InputSpec(name=name, shape=dims, dtype=dtype))
    inputs = _override(inputs, decls, source)
    # The legacy (TorchScript) exporter traces through the program's graph and can bake the example
    # batch into it (seen with LSTMs); torch.export-based export keeps it dynamic.
    notes.append(f"{source.name} is a torch.export program: export it with torch.onnx.export(..., dynamo=True)")
    return _finish(ep.module(), inputs, _program_family(ep), source, "exported_program", arch or "torch.export",
                   notes)


def _program_family(ep) -> str:
    """Module classes from the nodes' ``nn_module_stack``; failing that, the aten ops."""
    names, ops = set(), set()
    for n in ep.graph.nodes:
        for _, cls in (n.meta.get("nn_module_stack") or {}).values():
            names.add(getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1].strip("'>"))
        if n.op == "call_function":
            ops.add(str(n.target))
    fam = family_of(names)
    if fam != "other":
        return fam
    text = " ".join(ops)
    if any(k in text for k in ("lstm", "gru", "rnn_tanh", "rnn_relu")):
        return "rnn"
    if "scaled_dot_product_attention" in text or ("softmax" in text and ("bmm" in text or "matmul" in text)):
        return "transformer"
    return "cnn" if "conv" in text else "other"


def _onnx(source: Path, arch, decls) -> LoadedModel:
    from edgefm.models.onnx_graph import spec_from_onnx

    spec, notes = spec_from_onnx(source)
    spec.inputs = _override(spec.inputs, decls, source)
    return LoadedModel(None, spec, "onnx", source, "", onnx_path=source, notes=notes)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]
