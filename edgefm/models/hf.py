"""Hugging Face transformers folders, offline. The task comes from ``config.architectures``:
``*ForSequenceClassification`` and ``*ForTokenClassification`` give ``logits``; a base model gives
``last_hidden_state``, or — when the folder is a sentence-transformers model (``modules.json``) — the
``sentence_embedding`` that sentence-transformers computes (pooling, optional Dense, optional Normalize)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from edgefm.errors import CheckpointError

_HEADS = {"ForSequenceClassification": ("sequence-classification", "AutoModelForSequenceClassification"),
          "ForTokenClassification": ("token-classification", "AutoModelForTokenClassification")}
_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")
# sentence-transformers' legacy boolean keys, in its concatenation order
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_ACTIVATIONS = ("Tanh", "Identity", "ReLU", "GELU", "Sigmoid")
DEFAULT_MAX_LENGTH = 128


@dataclass
class HFModel:
    module: Any  # nn.Module: forward(**tokenizer outputs) -> tensor, or the transformers model
    task: str
    output: str  # name of the one output
    output_kind: str
    select: Optional[str]  # field of the transformers output to return; None: the module returns a tensor
    input_names: list[str]
    model_dir: Path  # folder with config.json, weights and tokenizer
    arch: str
    num_classes: Optional[int] = None
    max_length: int = DEFAULT_MAX_LENGTH
    notes: list[str] = field(default_factory=list)


def load_hf(folder: Path) -> HFModel:
    """Load a transformers folder (or sentence-transformers folder) on CPU in fp32, without network."""
    folder = Path(folder).resolve()
    st_modules = _read_json(folder / "modules.json") if (folder / "modules.json").is_file() else None
    model_dir = _transformer_dir(folder, st_modules) if st_modules else folder
    config = _read_json(model_dir / "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {model_dir / 'config.json'}: expected a JSON object of model settings "
                              f"(as transformers writes it), got a {type(config).__name__}")
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise CheckpointError(f"checkpoint {model_dir / 'config.json'}: 'architectures' must be a list of class "
                              f"names such as [\"BertModel\"], got {archs!r:.80}")
    if "auto_map" in config:
        raise CheckpointError(f"checkpoint {model_dir}: config.json needs custom code (auto_map); edgefm does not run "
                              f"code from checkpoint folders (trust_remote_code)")
    arch = (config.get("architectures") or ["(base model)"])[0]
    head = next((h for h in _HEADS if arch.endswith(h)), None)
    if head is None and "For" in arch:
        raise CheckpointError(f"checkpoint {model_dir}: architecture {arch} is not supported; edgefm reads "
                              f"*ForSequenceClassification, *ForTokenClassification and base models (feature extraction)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read before transformers' first import; never hit the network
    import transformers

    auto = getattr(transformers, _HEADS[head][1]) if head else transformers.AutoModel
    model, info = _from_pretrained(auto, model_dir)
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(map(str, info.get("mismatched_keys") or ()))
    notes = []
    if head is None and missing and all(k.startswith("pooler.") for k in missing) and not mismatched:
        notes.append(f"{model_dir.name}: pooler weights absent (unused by the outputs edgefm takes)")
    elif missing or mismatched:
        what = [f"missing {missing[:8]}"] if missing else []
        what += [f"shape mismatches {mismatched[:8]}"] if mismatched else []
        raise CheckpointError(f"checkpoint {model_dir}: weights do not fit {arch}: {'; '.join(what)} "
                              f"(these would be random)")
    if info.get("unexpected_keys"):
        notes.append(f"{model_dir.name}: ignored weights not used by {arch}: {sorted(info['unexpected_keys'])[:5]}")
    model = model.float().eval()
    input_names = _input_names(model_dir, model)
    common = dict(input_names=input_names, model_dir=model_dir, arch=arch, notes=notes)
    if head:
        task = _HEADS[head][0]
        return HFModel(model, task, "logits", "logits", "logits", num_classes=int(model.config.num_labels), **common)
    if st_modules:
        module, max_len = _sentence_embedding(folder, st_modules, model)
        notes.append(f"sentence-transformers pipeline: {', '.join(m.get('type', '?').rsplit('.', 1)[-1] for m in st_modules)}")
        return HFModel(module, "feature-extraction", "sentence_embedding", "embedding", None,
                       max_length=min(DEFAULT_MAX_LENGTH, max_len or DEFAULT_MAX_LENGTH), **common)
    return HFModel(model, "feature-extraction", "last_hidden_state", "embedding", "last_hidden_state", **common)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path}: not valid JSON ({e})") from None


def _transformer_dir(folder: Path, modules: Any) -> Path:
    if not isinstance(modules, list) or not modules or not all(
            isinstance(m, dict) and isinstance(m.get("type", ""), str) and isinstance(m.get("path", ""), str)
            for m in modules):
        raise CheckpointError(f"checkpoint {folder}/modules.json: expected a list of sentence-transformers modules, "
                              f"each an object with 'type' and 'path' (got {json.dumps(modules)[:80]})")
    outside = [m["path"] for m in modules if Path(m.get("path", "")).is_absolute() or ".." in Path(m.get("path", "")).parts]
    if outside:
        raise CheckpointError(f"checkpoint {folder}/modules.json: module path {outside[0]!r} leaves the folder; paths "
                              f"must be relative to it, without '..'")
    first = modules[0]
    if not str(first.get("type", "")).endswith("Transformer"):
        raise CheckpointError(f"checkpoint {folder}: the first sentence-transformers module is {first.get('type')}; "
                              f"edgefm reads pipelines that start with a Transformer")
    model_dir = folder / first.get("path", "")
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"checkpoint {model_dir}: no config.json for the Transformer module")
    return model_dir


def _from_pretrained(auto: Any, model_dir: Path):
    from transformers.utils import logging as hf_logging

    # transformers prints a load report and a progress bar; edgefm reports problems itself, in one line.
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return auto.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False,
                                    output_loading_info=True)
    except Exception as e:  # transformers raises OSError, ValueError, SafetensorError …; one line for people
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"checkpoint {model_dir}: transformers cannot load it: {msg}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _input_names(model_dir: Path, model: Any) -> list[str]:
    """The tokenizer's ``model_input_names`` that the model's forward accepts, in the tokenizer's order."""
    import inspect

    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as e:  # missing or broken tokenizer files
        raise CheckpointError(f"checkpoint {model_dir}: no usable tokenizer in the folder ({type(e).__name__}: "
                              f"{str(e).strip()[:200]}); edgefm needs one to feed text") from None
    params = inspect.signature(model.forward).parameters
    names = [n for n in tok.model_input_names if n in params]
    if "input_ids" not in names:
        raise CheckpointError(f"checkpoint {model_dir}: the tokenizer gives {tok.model_input_names}, "
                              f"but the model takes none of them as input_ids")
    return names


def _sentence_embedding(folder: Path, modules: list, backbone: Any):
    """The sentence-transformers pipeline after the Transformer, as one torch module; (module, max_length)."""
    modes, dense, normalize = None, [], False
    for m in modules[1:]:
        kind, path = str(m.get("type", "")).rsplit(".", 1)[-1], folder / m.get("path", "")
        if kind == "Pooling":
            modes = _pooling_modes(path)
        elif kind == "Dense":
            dense.append(_dense(path))
        elif kind == "Normalize":
            cfg = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
            if cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding":
                raise CheckpointError(f"checkpoint {path}: Normalize of '{cfg['module_input_name']}' is not supported")
            normalize = True
        else:
            raise CheckpointError(f"checkpoint {folder}: sentence-transformers module {m.get('type')} is not supported "
                                  f"(edgefm reads Transformer, Pooling, Dense, Normalize)")
    if modes is None:
        raise CheckpointError(f"checkpoint {folder}: modules.json has no Pooling module")
    cfg = folder / "sentence_bert_config.json"
    max_len = _read_json(cfg).get("max_seq_length") if cfg.is_file() else None
    return SentencePooling(backbone, modes, nn.ModuleList(dense), normalize).eval(), max_len


def _pooling_modes(path: Path) -> tuple[str, ...]:
    cfg = _read_json(path / "config.json")
    mode = cfg.get("pooling_mode")
    if mode is None:
        mode = tuple(m for k, m in _LEGACY_POOLING.items() if cfg.get(k)) or ("mean",)
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in _POOLING_MODES]
    if bad:
        raise CheckpointError(f"checkpoint {path}: pooling mode {bad} is not supported (edgefm: {_POOLING_MODES})")
    return modes


def _dense(path: Path):
    from edgefm.models.formats import read_state_dict

    cfg = _read_json(path / "config.json")
    act = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh")).rsplit(".", 1)[-1]
    if act not in _ACTIVATIONS or cfg.get("use_residual") or \
            cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise CheckpointError(f"checkpoint {path}: Dense with {cfg} is not supported (activations {_ACTIVATIONS}, "
                              f"no residual)")
    weights = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), None)
    if weights is None:
        raise CheckpointError(f"checkpoint {path}: Dense module without model.safetensors or pytorch_model.bin")
    state, _ = read_state_dict(weights)
    linear = nn.Linear(int(cfg["in_features"]), int(cfg["out_features"]), bias=bool(cfg.get("bias", True)))
    try:
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {weights}: Dense weights do not fit its config: {str(e).splitlines()[0]}") from None
    return nn.Sequential(linear, getattr(nn, act)())


class SentencePooling(nn.Module):
    """Backbone → pooling over the attention mask → Dense layers → L2 normalisation, computed as
    sentence-transformers does (``Pooling._forward_padded``)."""

    def __init__(self, backbone: nn.Module, modes: tuple, dense: nn.ModuleList, normalize: bool):
        super().__init__()
        self.backbone, self.modes, self.dense, self.normalize = backbone, modes, dense, normalize

    def forward(self, **inputs):
        h = self.backbone(**inputs).last_hidden_state
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(h.shape[:-1], dtype=torch.int64, device=h.device)
        vectors = []
        for mode in self.modes:
            if mode == "cls":  # first non-padding token, so left padding works too
                first = mask.to(torch.int32).argmax(dim=1)
                vectors.append(torch.gather(h, 1, first.view(-1, 1, 1).expand(-1, 1, h.shape[-1])).squeeze(1))
            elif mode == "max":
                m = mask.unsqueeze(-1).expand_as(h).to(h.dtype)
                vectors.append(h.masked_fill(m == 0, float("-inf")).max(dim=1).values)
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                m = mask.unsqueeze(-1).to(h.dtype)
                count = torch.clamp(m.sum(dim=1), min=1e-9)
                vectors.append((h * m).sum(dim=1) / (count if mode == "mean" else torch.sqrt(count)))
            else:  # lasttoken: last non-padding token
                values, idx = mask.to(torch.int32).flip(1).max(1)
                idx = torch.where(values == 0, h.shape[1] - 1, idx)
                pos = (h.shape[1] - idx - 1).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
                vectors.append(torch.gather(h * mask.unsqueeze(-1).to(h.dtype), 1, pos).squeeze(1))
        x = torch.cat(vectors, dim=-1)
        for layer in self.dense:
            x = layer(x)
        return nn.functional.normalize(x, p=2, dim=-1) if self.normalize else x
