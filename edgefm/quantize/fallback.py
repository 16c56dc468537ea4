"""The accuracy fallback behind ``--max-accuracy-drop``, written once for every backend.

When the int8 artifact misses the contract, and only when the user stated a bound, the loop ranks the parts
of the model most damaged by quantization, keeps the worst in higher precision (float, or fp16 on TensorRT),
rebuilds, re-judges, and repeats until the verdict is ok or the budget (rounds, share of the quantized units)
runs out. Every round is recorded: what was kept, and the verdict after.

The loop knows nothing about gates or runtimes. It takes

- ``judge(got) -> verdict`` with ``ok``, ``margin`` (>= 0 iff ok; larger is better) and ``failures``: the
  contract's judge (``edgefm.backends.base.judge_job``, i.e. ``edgefm.contract.judge`` with the job's contract),
  so the fallback stops exactly when the gate the backend enforces holds;
- three backend hooks (``FallbackHooks``): ``sensitivity(candidate)`` ranks the units of the current
  candidate worst first, ``build(keep)`` quantizes again with those units kept in higher precision, and
  ``run(candidate)`` returns its outputs on the eval data. A unit is what the backend can keep out of int8:
  an activation tensor and the nodes around it (ONNX Runtime, TensorRT Q/DQ), an activation FakeQuantize and
  the layers reading it (OpenVINO), a tensor and the LiteRT ops around it.

Re-ranking every round matters: keeping one tensor in float can move the damage to its neighbour (a Conv
whose Relu was excluded now quantizes its own output)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol

import numpy as np

log = logging.getLogger(__name__)

#: Rounds the loop runs at most (each round re-ranks and rebuilds once).
MAX_ROUNDS = 8
#: Share of the quantized units the loop may keep in higher precision (at least ``MIN_UNITS`` of them, so that
#: a small model can lose the two ends of an outlier pair).
MAX_SHARE = 0.5
MIN_UNITS = 2


@dataclass
class Unit:
    """A part of the model the backend can keep out of int8. ``name`` identifies it to the backend's
    ``build``; ``nodes`` are what really stays in higher precision when it is kept (recorded);
    ``score`` is its int8 damage (SQNR in dB: lower is worse)."""

    name: str
    score: float
    nodes: list[str] = field(default_factory=list)


@dataclass
class Candidate:
    """One built artifact: where it is, and whatever the backend needs to run it (``handle``)."""

    path: Any
    handle: Any = None
    kept: list[str] = field(default_factory=list)  # nodes in higher precision in this candidate


class FallbackHooks(Protocol):
    """What a backend declares to take part in the fallback."""

    precision_kept: str  # "float" or "fp16": what kept units run in

    def sensitivity(self, candidate: Candidate) -> list[Unit]: ...

    def build(self, keep: list[Unit]) -> Candidate: ...

    def run(self, candidate: Candidate) -> dict[str, np.ndarray]: ...


class Verdictish(Protocol):
    """What the loop reads of a verdict (edgefm.contract.Verdict has these and more)."""

    ok: bool
    margin: float
    failures: list[str]


Judge = Callable[[Mapping[str, np.ndarray]], Verdictish]


@dataclass
class Round:
    """One round: the units added this round (with their int8 SQNR), all nodes kept so far, the verdict."""

    index: int
    added: dict[str, float]
    kept: list[str]
    ok: bool
    margin: float
    failures: list[str]
    figures: str = ""  # the verdict's headline metrics after this round

    def line(self) -> str:
        added = ", ".join(f"'{k}' ({v:.1f} dB)" for k, v in self.added.items())
        state = f"ok ({self.figures})" if self.ok else "still: " + "; ".join(self.failures[:2])
        return f"accuracy fallback round {self.index}: kept {added}; {len(self.kept)} node(s) now out of int8: {state}"

    def record(self) -> dict[str, Any]:
        return {"round": self.index, "added": {k: round(v, 2) for k, v in self.added.items()},
                "kept_nodes": len(self.kept), "ok": self.ok, "margin": round(self.margin, 6),
                "failures": self.failures, "figures": self.figures}


@dataclass
class FallbackResult:
    """``ok`` with ``candidate`` the artifact that passed (``kept`` its nodes in higher precision), or not ok
    with ``candidate`` None (every candidate the loop built is for the caller to discard)."""

    ok: bool
    kept: list[str]
    rounds: list[Round]
    candidate: Optional[Candidate]
    verdict: Any
    budget: dict[str, Any]
    precision_kept: str = "float"
    stopped: str = ""

    def notes(self) -> list[str]:
        out = [r.line() for r in self.rounds]
        if self.ok:
            out.append(f"accuracy fallback: {len(self.kept)} node(s) kept in {self.precision_kept} so that the contract "
                       f"holds: {self.kept} (chosen by judging the eval data: its figures are measured on the data "
                       f"the choice was made on)")
        else:
            out.append(f"accuracy fallback: gave up ({self.stopped}) with {len(self.kept)} node(s) in {self.precision_kept}")
        return out

    def record(self) -> dict[str, Any]:
        """What the manifest stores (stage settings ``fallback``)."""
        return {"ok": self.ok, "kept_in_float": list(self.kept), "kept_precision": self.precision_kept,
                "rounds": [r.record() for r in self.rounds], "budget": self.budget, "stopped": self.stopped}


def run_fallback(hooks: FallbackHooks, judge: Judge, start: Candidate, *, max_rounds: int = MAX_ROUNDS,
                 max_share: float = MAX_SHARE, progress: Optional[Callable[[str], None]] = None) -> FallbackResult:
    """Keep the most damaged units of ``start`` (the plain int8 candidate, already judged not ok) in higher
    precision until ``judge`` says ok or the budget runs out. Each round re-ranks the current candidate and
    keeps ``max(1, kept // 2)`` more units (1, 1, 1, 2, 3, 4, 6, ...: exact on small models, not too many
    rounds on large ones), never more than ``max_share`` of the units first ranked, and never all of them.

    A runtime or quantizer that fails inside a hook (an exception that is not an ``EdgefmError``) ends the loop
    as not ok, ``stopped`` naming the failure: the caller then refuses the plain int8 artifact with that reason
    instead of crashing (the traceback goes to the log)."""
    from edgefm.errors import EdgefmError

    state: dict[str, Any] = {}
    try:
        return _rounds(hooks, judge, start, max_rounds, max_share, progress, state)
    except EdgefmError:
        raise
    except Exception as e:  # noqa: BLE001 - a library failing mid-fallback: a refusal that says so, not a crash
        log.warning("accuracy fallback failed", exc_info=True)
        first = (str(e).strip().splitlines() or [""])
        text = " ".join(line.strip() for line in first[:2])[:300]
        rounds = state.get("rounds", [])
        return FallbackResult(False, list(state.get("nodes", [])), rounds, None, state.get("verdict"),
                              state.get("budget", {}), getattr(hooks, "precision_kept", "float"),
                              f"the backend failed in round {len(rounds) + 1}: {type(e).__name__}: {text}")


def _rounds(hooks: FallbackHooks, judge: Judge, start: Candidate, max_rounds: int, max_share: float,
            progress: Optional[Callable[[str], None]], state: dict[str, Any]) -> FallbackResult:
    ranked = [u for u in hooks.sensitivity(start) if u.nodes]
    # never every unit: an artifact with nothing left in int8 is not an int8 artifact (use --quantize fp32)
    allowed = max(0, min(len(ranked) - 1, max(MIN_UNITS, int(len(ranked) * max_share))))
    every_node = {n for u in ranked for n in u.nodes}
    budget = {"max_rounds": max_rounds, "max_share": max_share, "units": len(ranked), "max_units": allowed}
    kept_units: list[Unit] = []
    nodes: list[str] = []
    rounds: list[Round] = []
    state.update(budget=budget, nodes=nodes, rounds=rounds)  # what a failure mid-loop still reports
    current = start
    verdict = None
    stopped = f"{max_rounds} rounds"
    for index in range(1, max_rounds + 1):
        if index > 1:
            ranked = [u for u in hooks.sensitivity(current) if u.nodes]
        fresh = [u for u in ranked if not set(u.nodes) <= set(nodes)]
        room = allowed - len(kept_units)
        if not fresh or room <= 0:
            stopped = "no unit left to keep" if not fresh else f"share budget ({allowed} of {budget['units']} units)"
            break
        take = fresh[:min(room, max(1, len(kept_units) // 2))]
        # never every node the units name: an artifact with nothing left in int8 is not int8 (use --quantize fp32)
        while take and every_node <= set(nodes) | {n for u in take for n in u.nodes}:
            take = take[:-1]
        if not take:
            stopped = "keeping more would leave nothing in int8"
            break
        kept_units += take
        nodes += [n for u in take for n in u.nodes if n not in nodes]
        if progress:
            progress(f"accuracy fallback round {index}: keeping {[u.name for u in take]} out of int8")
        current = hooks.build(list(kept_units))
        verdict = judge(hooks.run(current))
        state["verdict"] = verdict
        kept_now = current.kept or list(nodes)
        rounds.append(Round(index, {u.name: u.score for u in take}, kept_now, bool(verdict.ok),
                            float(verdict.margin), list(verdict.failures), _headline(verdict)))
        if verdict.ok:
            return FallbackResult(True, kept_now, rounds, current, verdict, budget,
                                  getattr(hooks, "precision_kept", "float"), "ok")
    return FallbackResult(False, list(nodes), rounds, None, verdict, budget,
                          getattr(hooks, "precision_kept", "float"), stopped)


def _headline(verdict: Any) -> str:
    metrics = getattr(verdict, "metrics", None)
    if not metrics:
        return ""
    from edgefm.contract import summarize

    return summarize(metrics)


def figures(verdict: Any) -> str:
    """The verdict's failures on one line, for errors ("... ; ..."), or its headline metrics when it passed."""
    if verdict is None:
        return "no candidate was judged"
    return "; ".join(verdict.failures) if verdict.failures else _headline(verdict)
