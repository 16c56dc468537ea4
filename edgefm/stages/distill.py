"""Knowledge distillation: win back what pruning or layer dropping cost.

Teacher = the original model (frozen), student = the pruned one. The loss is

    kd_weight      · KL(softmax(teacher/T) ‖ softmax(student/T)) · T²    (logits outputs)
                     or 1 − cosine(student, teacher)                       (embedding outputs)
                     or MSE / var(teacher)                                 (other outputs)
  + feature_weight · Σ MSE(proj(student feature), teacher feature) / mean(teacher feature²)
  + hard_weight    · cross-entropy(student, labels)                        (only when there are labels)

Features are the encoder layer outputs of a Transformer (student layer i against the teacher layer it
was copied from) or, for other models, the input of the output layer (the penultimate features); a
learned linear projection (1x1 conv for feature maps) maps the student's width to the teacher's where
they differ. Without labels the teacher's outputs are the only targets, so unlabeled data works.

CPU-friendly: the teacher runs once over the training data (its outputs and features are cached), a
Transformer batch is cut to its longest real sequence, and small models default to one thread.
Early stopping watches the eval metric (top-1 with labels, else fidelity to the teacher) and the best
weights are kept; ``checkpoint`` makes a run resumable."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefm.samples import Samples
from edgefm.bundle import StageRecord
from edgefm.errors import CalibrationError, CheckpointError, ConfigError
from edgefm.models.spec import ModelSpec

log = logging.getLogger(__name__)


SMALL_MODEL = 1_000_000  # parameters; below this the size-dependent defaults are those of a small model


class DistillConfig(BaseModel):
    """How to distill. Defaults suit a small model on a 2-core CPU."""

    model_config = ConfigDict(extra="forbid")
    epochs: Optional[int] = Field(None, ge=1, description=(
        "Passes over the training data at most; default: 20 for models under 1 M parameters, 3 above"))
    max_steps: Optional[int] = Field(None, ge=1, description=(
        "Stop after this many optimizer steps in all (a time budget); the learning-rate schedule still spans "
        "epochs, so a run cut short resumes from its checkpoint exactly where it stopped"))
    batch_size: Optional[int] = Field(None, ge=1, description="Samples per step; default: 64 under 1 M parameters, 32 above")
    lr: Optional[float] = Field(None, gt=0, description=(
        "Peak learning rate (AdamW, warm-up then cosine decay); default: 1e-3 under 1 M parameters, 5e-4 above"))
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent warming the learning rate up")
    temperature: float = Field(4.0, gt=0, description="Softens teacher and student logits for the KL term")
    kd_weight: float = Field(1.0, ge=0, description="Weight of the output-matching term (KL / cosine / MSE)")
    feature_weight: float = Field(1.0, ge=0, description="Weight of the hidden-state / feature matching term")
    hard_weight: float = Field(0.5, ge=0, description="Weight of cross-entropy with labels (used only when labels exist)")
    features: str = Field("auto", description=(
        "Feature pairs: auto (encoder layers for Transformers, else penultimate), layers, penultimate, none"))
    eval_every: Optional[int] = Field(None, ge=1, description="Evaluate every this many steps (default: every epoch)")
    patience: int = Field(3, ge=0, description="Stop after this many evaluations without improvement (0: never)")
    min_delta: float = Field(0.0, ge=0, description="Improvement (points) that counts for early stopping")
    max_train_samples: Optional[int] = Field(None, ge=1, description="Use at most this many training samples")
    max_eval_samples: int = Field(1024, ge=1, description="Use at most this many eval samples")
    cache_teacher: bool = Field(True, description="Run the teacher once over the training data and cache its outputs")
    cache_limit_mb: int = Field(1024, ge=0, description="Cache teacher features only while they fit in this many MB")
    dropout: bool = Field(False, description="Keep the student's dropout active while distilling")
    freeze_embeddings: bool = Field(True, description=(
        "Keep token/position embeddings (nn.Embedding) as they are: training them on a narrow corpus moves "
        "only the tokens it contains away from the teacher, which hurts on other text"))
    threads: Optional[int] = Field(None, ge=1, description="torch threads while distilling (default: 1 for "
                                   "models under 1 M parameters, else torch's default)")

    def resolved(self, n_params: int) -> "DistillConfig":
        """The size-dependent defaults filled in: small models (digits CNN/LSTM) train many cheap epochs
        with a large rate; large ones (MiniLM) few epochs at a gentler rate, which fits a 2-core CPU."""
        small = n_params < SMALL_MODEL
        fill = {"epochs": 20 if small else 3, "batch_size": 64 if small else 32, "lr": 1e-3 if small else 5e-4}
        return self.model_copy(update={k: v for k, v in fill.items() if getattr(self, k) is None})
    seed: int = Field(0, description="Seed for initialisation of projections, shuffling and dropout")
    checkpoint: Optional[Path] = Field(None, description="File to save progress to after each evaluation and "
                                       "to resume from when it exists")
    progress: bool = Field(True, description="Show a progress bar")


# --- features ---------------------------------------------------------------------------------------

def _feature_modules(model, kind: str, args: tuple) -> list[tuple[Any, str]]:
    """(module, 'out' | 'in') whose output / input is a matched feature."""
    from edgefm.stages import prune_transformer as pt
    from edgefm.stages.prune import output_layers

    hf = pt.find_encoder(model)
    if kind == "layers":
        if hf is None:
            raise ConfigError("distill.features=layers needs a Transformer encoder in both models")
        return [(lay, "out") for lay in pt.layers(hf)]
    outs = output_layers(model, args)
    return [(outs[0], "in")] if outs else []


def feature_pairs(teacher, student, kind: str, args: tuple) -> tuple[list, list]:
    """Teacher and student feature modules, paired. Transformers: student layer i ↔ the teacher layer it
    came from (``config.edgefm_structure.source_layers``)."""
    from edgefm.stages import prune_transformer as pt

    if kind == "none":
        return [], []
    if kind == "auto":
        kind = "layers" if pt.find_encoder(teacher) is not None and pt.find_encoder(student) is not None else "penultimate"
    if kind not in ("layers", "penultimate"):
        raise ConfigError(f"distill.features '{kind}': expected auto, layers, penultimate or none")
    t_mods, s_mods = _feature_modules(teacher, kind, args), _feature_modules(student, kind, args)
    if kind == "layers":
        st = pt.structure(pt.find_encoder(student))
        src = st["source_layers"]
        if len(t_mods) != st["source_num_layers"]:
            # student not derived from this teacher by our pruning: align ends uniformly
            src = pt.spread_layers(len(t_mods), len(s_mods))
        t_mods = [t_mods[i] for i in src]
    return t_mods, s_mods


class _Tap:
    """Records the outputs (or inputs) of modules during a forward pass."""

    def __init__(self, mods: list[tuple[Any, str]]):
        self.values: list[Any] = [None] * len(mods)
        self.handles = []
        for i, (m, where) in enumerate(mods):
            if where == "out":
                self.handles.append(m.register_forward_hook(self._out(i)))
            else:
                self.handles.append(m.register_forward_pre_hook(self._in(i)))

    def _out(self, i):
        def hook(mod, inp, out):
            self.values[i] = out[0] if isinstance(out, (tuple, list)) else out
        return hook

    def _in(self, i):
        def hook(mod, inp):
            self.values[i] = inp[0]
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _projection(s_shape, t_shape):
    """Identity when shapes match, else a learned linear map from the student's width to the teacher's
    along the one axis where they differ (a 1x1 conv for (N, C, …) feature maps)."""
    from torch import nn

    diff = [d for d in range(1, len(s_shape)) if s_shape[d] != t_shape[d]]
    if len(s_shape) != len(t_shape) or len(diff) > 1:
        raise ConfigError(f"distill: student feature {list(s_shape)} and teacher feature {list(t_shape)} "
                          f"differ in more than their width; choose features=none or penultimate")
    if not diff:
        return nn.Identity()
    d = diff[0]
    if d == len(s_shape) - 1 and len(s_shape) != 4:
        return nn.Linear(s_shape[d], t_shape[d], bias=False)
    if d == 1 and len(s_shape) in (3, 4):
        conv = nn.Conv1d if len(s_shape) == 3 else nn.Conv2d
        return conv(s_shape[1], t_shape[1], 1, bias=False)
    raise ConfigError(f"distill: cannot project student feature {list(s_shape)} onto {list(t_shape)}")


class _no_dropout:
    """Dropout off while the student trains (BatchNorm still updates): a student copying a teacher
    needs no noise. Setting p=0 also reaches attention dropout that reads ``self.dropout.p``."""

    def __init__(self, model, enabled: bool):
        from torch import nn

        self.mods = [] if enabled else [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        self.p = [m.p for m in self.mods]

    def __enter__(self):
        for m in self.mods:
            m.p = 0.0
        return self

    def __exit__(self, *exc):
        for m, p in zip(self.mods, self.p):
            m.p = p
        return False


# --- data -------------------------------------------------------------------------------------------

def _mask_input(spec: ModelSpec) -> Optional[int]:
    return next((i for i, s in enumerate(spec.inputs) if "mask" in s.name and len(s.shape) == 2), None)


def _batch_args(spec: ModelSpec, samples: Samples, idx: np.ndarray):
    """Tensors for ``idx``; a Transformer batch is cut to its longest real sequence (less compute).
    Returns (args, token mask or None, kept length or None)."""
    import torch

    args = [torch.from_numpy(np.ascontiguousarray(samples.inputs[n][idx])) for n in spec.input_names]
    mi = _mask_input(spec)
    if mi is None:
        return tuple(args), None, None
    mask = args[mi]
    length = int(mask.sum(1).max().clamp_min(1))
    full = mask.shape[1]
    args = [a[:, :length] if a.dim() == 2 and a.shape[1] == full else a for a in args]
    return tuple(args), args[mi], length


def _epoch_order(gen: np.random.Generator, lengths: Optional[np.ndarray], batch: int) -> np.ndarray:
    """A shuffled sample order. With sequence lengths, samples are grouped by length inside random
    windows of 50 batches (batches then cut short), and the batches shuffled: less padding, same mix."""
    order = gen.permutation(len(lengths) if lengths is not None else 0)
    if lengths is None:
        return order
    window = batch * 50
    chunks = [sorted(order[i:i + window], key=lambda j: -lengths[j]) for i in range(0, len(order), window)]
    batches = [c[i:i + batch] for c in chunks for i in range(0, len(c), batch)]
    batches = [batches[i] for i in gen.permutation(len(batches))]
    return np.asarray([j for b in batches for j in b], dtype=np.int64)


def _batch_length(spec: ModelSpec, args: tuple) -> Optional[int]:
    mi = _mask_input(spec)
    return None if mi is None else int(args[mi].shape[1])


def _cut(t, length: Optional[int]):
    """Teacher tensors were cached at full sequence length; cut them like the student's batch."""
    if length is None or t.dim() < 3:
        return t
    return t[:, :length]


# --- losses -----------------------------------------------------------------------------------------

def _output_loss(kind: str, s, t, temperature: float):
    import torch.nn.functional as F

    if kind == "logits":
        T = temperature
        return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                        reduction="batchmean") * T * T
    if kind == "embedding":
        return (1 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean()
    return F.mse_loss(s, t) / t.var().clamp_min(1e-8)


def _loss(cfg: DistillConfig, kinds: list[str], out, t_out, feats: list, mask, hard):
    """The weighted sum of the module docstring; ``feats``: (projected student, teacher) pairs,
    ``hard``: (logits, labels) or None."""
    import torch.nn.functional as F

    loss = sum(cfg.kd_weight * _output_loss(k, o, t, cfg.temperature) for k, o, t in zip(kinds, out, t_out))
    for s, t in feats:
        loss = loss + cfg.feature_weight * _feature_loss(s, t, mask) / len(feats)
    if hard is not None and cfg.hard_weight > 0:
        loss = loss + cfg.hard_weight * F.cross_entropy(*hard)
    return loss


def _optimizer(student, projs, cfg: DistillConfig, span: int):
    """AdamW over the student and the projections; linear warm-up, then cosine decay over ``span`` steps."""
    import torch

    params = [p for p in student.parameters() if p.requires_grad] + list(projs.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup * span))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + np.cos(np.pi * min(1.0, max(0, s - warm) / max(1, span - warm)))))
    return opt, sched


def _feature_loss(s, t, mask):
    """Normalised MSE; token positions outside ``mask`` (padding) do not count."""
    if mask is not None and s.dim() == 3 and s.shape[:2] == mask.shape:
        keep = mask.bool()
        s, t = s[keep], t[keep]
    return ((s - t) ** 2).mean() / (t ** 2).mean().clamp_min(1e-8)


# --- the loop ---------------------------------------------------------------------------------------

class _Teacher:
    """Teacher outputs and features per sample index: cached once, or computed per batch."""

    def __init__(self, teacher, spec, train: Samples, t_mods, cfg: DistillConfig, progress,
                 lengths: Optional[np.ndarray] = None):
        import torch

        self.teacher, self.spec, self.train, self.t_mods, self.cfg = teacher, spec, train, t_mods, cfg
        self.outputs: Optional[list] = None
        self.features: Optional[list] = None
        if not cfg.cache_teacher:
            return
        outs, feats = [], []
        # by length, so that batches cut short; results are put back in sample order below
        idx_all = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(len(train))
        task = progress.add_task("teacher pass", total=len(train), status="") if progress else None
        keep_feats = True
        for s in range(0, len(train), cfg.batch_size):
            idx = idx_all[s:s + cfg.batch_size]
            args = _batch_args(spec, train, idx)[0]
            o, f = self._run(args)
            outs.append(o)
            if keep_feats:
                feats.append([x.half() if x.numel() > 1 << 16 else x for x in f])
                size = sum(x.numel() * x.element_size() for b in feats for x in b) / 2 ** 20
                keep_feats = size * len(train) / (s + len(idx)) <= cfg.cache_limit_mb
                if not keep_feats:
                    feats = []
            if task is not None:
                progress.advance(task, len(idx))
        back = torch.from_numpy(np.argsort(idx_all))
        self.outputs = [self._cat_padded([b[i] for b in outs])[back] for i in range(len(outs[0]))]
        if keep_feats and feats and feats[0]:
            self.features = [self._cat_padded([b[i] for b in feats])[back] for i in range(len(feats[0]))]

    @staticmethod
    def _cat_padded(parts):
        import torch

        if parts[0].dim() >= 3 and len({p.shape[1] for p in parts}) > 1:
            n = max(p.shape[1] for p in parts)
            parts = [torch.nn.functional.pad(p, (0, 0, 0, n - p.shape[1])) for p in parts]
        return torch.cat(parts)

    def _run(self, args):
        import torch

        tap = _Tap(self.t_mods)
        try:
            with torch.no_grad():
                out = self.teacher(*args)
        finally:
            tap.close()
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach() for o in out], [v.detach() for v in tap.values]

    def targets(self, idx: np.ndarray, args: tuple):
        import torch

        if self.outputs is None:
            return self._run(args)
        t_idx = torch.from_numpy(idx)
        length = _batch_length(self.spec, args)
        outs = [_cut(o[t_idx], length) for o in self.outputs]
        if self.features is not None:
            return outs, [_cut(f[t_idx], length).float() for f in self.features]
        return outs, self._run(args)[1]


def _eval_score(student, spec: ModelSpec, eval_set: Samples, ref: dict) -> dict[str, float]:
    from edgefm.stages.prune import outputs, quality

    return quality(spec, ref, outputs(student, spec, eval_set), eval_set.labels)


def _check_data(spec: ModelSpec, data: Samples, what: str) -> None:
    if data is None or len(data) == 0:
        raise CalibrationError(f"distillation needs {what} data (got none)")
    spec.check_feed(data.inputs, f"distill {what} data")


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), transient=False)


def distill_model(teacher, student, spec: ModelSpec, cfg: DistillConfig, train: Samples,
                  eval: Optional[Samples] = None, report: Optional[Callable[[str], None]] = None):
    """Distill ``teacher`` into a copy of ``student``; returns ``(distilled student, StageRecord)``.

    ``train``: inputs (labels optional: without them the teacher's outputs are the only targets).
    ``eval``: held-out samples for early stopping and the before/after figures (default: ``train``).
    ``report``: called with a line of text after each evaluation; when given (e.g. by the CLI, which
    shows its own status line) it replaces the progress bar."""
    import contextlib

    import torch

    from edgefm.stages import macs as macs_mod
    from edgefm.stages import sparsity
    from edgefm.stages.prune import outputs

    t0 = time.perf_counter()
    _check_data(spec, train, "training")
    eval = eval if eval is not None and len(eval) else train
    _check_data(spec, eval, "eval")
    if cfg.max_train_samples:
        train = train.take(slice(0, cfg.max_train_samples))
    eval = eval.take(slice(0, min(len(eval), cfg.max_eval_samples)))
    student = copy.deepcopy(student)
    for p in student.parameters():  # the copy trains in full, whatever the source had frozen
        p.requires_grad_(p.is_floating_point())
    if cfg.freeze_embeddings:
        for m in student.modules():
            if isinstance(m, torch.nn.Embedding):
                m.weight.requires_grad_(False)
    teacher.eval()  # the teacher only ever runs under no_grad; its flags are left alone
    n_params = sum(p.numel() for p in student.parameters())
    cfg = cfg.resolved(n_params)
    old_threads = torch.get_num_threads()
    threads = cfg.threads or (1 if n_params < SMALL_MODEL else old_threads)
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    gen = np.random.default_rng(cfg.seed)
    kinds = [o.kind for o in spec.outputs] or ["other"]
    labels = None if train.labels is None else torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    logits_at = next((i for i, k in enumerate(kinds) if k == "logits"), 0)

    example, _, _ = _batch_args(spec, train, np.arange(min(2, len(train))))
    full_example = tuple(torch.from_numpy(np.ascontiguousarray(train.inputs[n][:2])) for n in spec.input_names)
    mi = _mask_input(spec)
    lengths = None if mi is None else np.asarray(train.inputs[spec.input_names[mi]]).sum(1)
    t_mods, s_mods = feature_pairs(teacher, student, cfg.features, example) if cfg.feature_weight > 0 else ([], [])
    if len(t_mods) != len(s_mods):
        raise ConfigError(f"distill: {len(t_mods)} teacher features vs {len(s_mods)} student features")
    ref_eval = outputs(teacher, spec, eval)
    progress = _progress(cfg.progress and report is None)
    history: list[dict[str, Any]] = []
    with (progress or contextlib.nullcontext()), sparsity.keep_masks(student), _no_dropout(student, cfg.dropout):
        s_tap = _Tap(s_mods)
        try:
            student.eval()
            with torch.no_grad():
                student(*example)
            s_shapes = [v.shape for v in s_tap.values]
            tch = _Teacher(teacher, spec, train, t_mods, cfg, progress, lengths)
            t_feats = tch._run(example)[1]
            projs = torch.nn.ModuleList([_projection(s, t.shape) for s, t in zip(s_shapes, t_feats)])
            steps_per_epoch = -(-len(train) // cfg.batch_size)
            span = cfg.epochs * steps_per_epoch
            total = min(span, cfg.max_steps or span)
            opt, sched = _optimizer(student, projs, cfg, span)
            before = _eval_score(student, spec, eval, ref_eval)
            state = {"step": 0, "epoch": 0, "best": before["score"], "best_cosine": before["cosine"],
                     "best_step": 0, "bad": 0,
                     "best_state": copy.deepcopy(student.state_dict())}
            resumed = _resume(cfg.checkpoint, student, projs, opt, sched, state, history)
            if resumed is not None:
                gen = resumed
            task = progress.add_task("distill", total=total, completed=state["step"], status="") if progress else None
            eval_every = cfg.eval_every or steps_per_epoch
            stop = state["bad"] >= cfg.patience > 0 or state["step"] >= total
            while not stop:
                start = (state["step"] % steps_per_epoch) * cfg.batch_size
                if start == 0 or state.get("order") is None:
                    state["order"] = _epoch_order(gen, lengths, cfg.batch_size) if lengths is not None \
                        else gen.permutation(len(train))
                order = state["order"]
                for s in range(start, len(train), cfg.batch_size):
                    idx = order[s:s + cfg.batch_size]
                    args, mask, length = _batch_args(spec, train, idx)
                    t_out, t_feat = tch.targets(idx, args)
                    student.train()
                    out = student(*args)
                    out = out if isinstance(out, (tuple, list)) else (out,)
                    feats = [(proj(sv), _cut(tv, length)) for proj, sv, tv in zip(projs, s_tap.values, t_feat)]
                    hard = (out[logits_at], labels[idx]) if labels is not None else None
                    loss = _loss(cfg, kinds, out, t_out, feats, mask, hard)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    state["step"] += 1
                    if task is not None:
                        progress.update(task, advance=1, status=f"loss {loss.item():.4f}")
                    if state["step"] % eval_every == 0 or state["step"] >= total:
                        stop = _evaluate(student, spec, eval, ref_eval, cfg, state, history)
                        _save(cfg.checkpoint, student, projs, opt, sched, state, history, gen)
                        last = f"{history[-1]['metric']} {history[-1]['score']:.2f}"
                        if task is not None:
                            progress.update(task, status=last)
                        if report is not None:
                            report(f"distilling: step {state['step']}/{total}, {last} (best {state['best']:.2f})")
                    if stop or state["step"] >= total:
                        stop = True
                        break
                state["epoch"] += 1
            student.load_state_dict(state["best_state"])
        finally:
            s_tap.close()
            torch.set_num_threads(old_threads)
    student.eval()
    after = _eval_score(student, spec, eval, ref_eval)
    teacher_q = _eval_score(teacher, spec, eval, ref_eval)
    macs, params_n = macs_mod.count(student, full_example)
    metrics = {"before": before, "after": after, "teacher": teacher_q, "steps": state["step"],
               "best_step": state["best_step"], "stopped_early": state["step"] < total,
               "params": params_n, "macs": macs, "history": history,
               "features": len(s_mods), "projections": sum(not isinstance(p, torch.nn.Identity) for p in projs),
               "labels": labels is not None, "train_samples": len(train), "eval_samples": len(eval)}
    notes = [f"threads {threads}", "teacher outputs cached" if tch.outputs is not None else "teacher run per batch"]
    if sparsity.has_masks(student):
        notes.append(f"sparsity kept: {sparsity.measured(student):.3f}")
    return student, StageRecord(name="distill", settings=cfg.model_dump(mode="json", exclude_none=True),
                                seconds=round(time.perf_counter() - t0, 3), metrics=metrics, notes=notes)


def _evaluate(student, spec, eval_set, ref, cfg: DistillConfig, state: dict, history: list) -> bool:
    """Score the student, keep the best weights; True when early stopping says stop."""
    q = _eval_score(student, spec, eval_set, ref)
    metric = "top1" if "top1" in q else "top1_agreement" if "top1_agreement" in q else "cosine"
    history.append({"step": state["step"], "metric": metric, "score": round(q["score"], 4),
                    "cosine": round(q["cosine"], 5)})
    # On a small or easy eval set top-1 saturates (100 % on a few hundred samples) long before the student
    # matches the teacher; then fidelity (cosine to the teacher) decides, so training goes on while it helps.
    better = q["score"] > state["best"] + cfg.min_delta or (
        q["score"] >= state["best"] and q["cosine"] > state.get("best_cosine", -1.0) + 1e-4)
    if better:
        state.update(best=q["score"], best_cosine=q["cosine"], best_step=state["step"], bad=0,
                     best_state=copy.deepcopy(student.state_dict()))
    else:
        state["bad"] += 1
    return cfg.patience > 0 and state["bad"] >= cfg.patience


def _save(path: Optional[Path], student, projs, opt, sched, state, history, gen) -> None:
    if path is None:
        return
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"student": student.state_dict(), "projections": projs.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "state": state, "history": history,
                "rng": gen.bit_generator.state, "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(path)  # a crash while saving leaves the previous checkpoint intact


def _resume(path: Optional[Path], student, projs, opt, sched, state, history):
    """Load a checkpoint into the live objects; returns the data-order generator, or None when there
    is nothing to resume."""
    import torch

    if path is None or not Path(path).is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        student.load_state_dict(ck["student"])
        projs.load_state_dict(ck["projections"])
    except (RuntimeError, KeyError, EOFError, OSError) as e:
        raise CheckpointError(f"distill checkpoint {path}: cannot resume from it ({str(e).splitlines()[0][:160]}); "
                              f"it belongs to another student or run — delete it to start over") from None
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    state.update(ck["state"])
    history.extend(ck["history"])
    torch.set_rng_state(ck["torch_rng"])
    gen = np.random.default_rng()
    gen.bit_generator.state = ck["rng"]
    log.info("resumed distillation from %s at step %d", path, state["step"])
    return gen
