"""The shared accuracy-fallback loop (edgefm.quantize.fallback) on a small NumPy "model", judged by the
contract (edgefm.contract): a chain of layers whose int8 form adds noise in proportion to a per-layer damage;
keeping a layer in float removes its noise.
The runtime hooks are exercised by tests/integration/test_fallback.py on the four real runtimes."""

import numpy as np

from edgefm.contract import judge, resolve
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec
from edgefm.quantize.fallback import Candidate, Unit, run_fallback


def _spec(**params):
    return ModelSpec(family="other", task="regression", inputs=[InputSpec(name="x", shape=["batch", 16])],
                     outputs=[OutputSpec(name="y", kind="regression", params=params)])


class Chain:
    """Layers with int8 noise levels; re-ranking sees only the layers still int8 (as a real debugger does)."""

    precision_kept = "float"

    def __init__(self, noise: dict[str, float], seed: int = 0):
        rng = np.random.default_rng(seed)
        self.noise, self.x = noise, rng.normal(size=(256, 16))
        self.ref = self.x * 3.0
        self.builds: list[list[str]] = []

    def sensitivity(self, candidate):
        live = {k: v for k, v in self.noise.items() if k not in candidate.kept}
        return sorted((Unit(k, -10 * np.log10(v + 1e-12), [k, k + "/next"]) for k, v in live.items()),
                      key=lambda u: u.score)

    def build(self, keep):
        names = [u.name for u in keep]
        self.builds.append(names)
        return Candidate(None, kept=[n for u in keep for n in u.nodes])

    def run(self, candidate):
        rng = np.random.default_rng(1)
        level = sum(v for k, v in self.noise.items() if k not in candidate.kept)
        return {"y": self.ref + rng.normal(scale=level, size=self.ref.shape)}


def _judge(chain, rel_error):
    """The contract's judge (edgefm.contract) with one relative-error gate, as backends call it."""
    contract = resolve(_spec(rel_error=rel_error), None, "int8")
    return lambda got: judge(contract, {"y": chain.ref}, got)


def test_keeps_the_worst_first_and_stops_when_the_verdict_is_ok():
    chain = Chain({"a": 0.01, "b": 8.0, "c": 0.02, "d": 3.0, "e": 0.01, "f": 0.0, "g": 0.0, "h": 0.0})
    judge = _judge(chain, rel_error=0.5)
    start = Candidate(None)
    assert not judge(chain.run(start)).ok
    res = run_fallback(chain, judge, start)
    assert res.ok and chain.builds == [["b"], ["b", "d"]]   # re-ranked: "d" is the worst once "b" is float
    assert res.kept == ["b", "b/next", "d", "d/next"]
    assert [r.ok for r in res.rounds] == [False, True] and res.rounds[0].failures
    assert res.rounds[0].margin < 0 <= res.rounds[1].margin
    rec = res.record()
    assert rec["kept_in_float"] == res.kept and rec["rounds"][0]["added"] == {"b": round(-10 * np.log10(8.0), 2)}


def test_the_share_budget_stops_it_and_says_so():
    chain = Chain({k: 1.0 for k in "abcdefgh"})  # every layer as bad: no small set helps
    res = run_fallback(chain, _judge(chain, rel_error=0.01), Candidate(None), max_share=0.25)
    assert not res.ok and res.candidate is None
    assert res.budget["max_units"] == 2 and sum(len(r.added) for r in res.rounds) == 2
    assert "share budget (2 of 8 units)" in res.stopped
    assert any("gave up" in n for n in res.notes())


def test_the_round_budget_stops_it():
    chain = Chain({k: 1.0 for k in "abcdefghijklmnop"})
    res = run_fallback(chain, _judge(chain, rel_error=0.01), Candidate(None), max_rounds=2, max_share=1.0)
    assert not res.ok and len(res.rounds) == 2 and res.stopped == "2 rounds"


def test_the_contract_verdict_names_the_failed_gate_with_figures():
    chain = Chain({"a": 5.0})
    v = _judge(chain, rel_error=0.1)(chain.run(Candidate(None)))
    assert not v.ok and v.margin < 0 and len(v.failures) == 1 and "rel_error" in v.failures[0]
    ok = _judge(chain, rel_error=0.1)({"y": chain.ref})
    assert ok.ok and ok.failures == [] and ok.margin >= 0


class Breaks(Chain):
    """A chain whose runtime fails in round 2 (a real NumPy error: the build of round 2 has the wrong shape)."""

    def run(self, candidate):
        if len(self.builds) >= 2:
            return {"y": np.ones((3, 16)) @ np.ones((4, 16))}  # ValueError: matmul shapes do not align
        return super().run(candidate)


def test_a_runtime_failing_mid_loop_is_a_recorded_refusal_not_a_crash():
    chain = Breaks({"a": 0.01, "b": 8.0, "c": 0.02, "d": 3.0})
    res = run_fallback(chain, _judge(chain, rel_error=0.001), Candidate(None))
    assert not res.ok and res.candidate is None and len(res.rounds) == 1
    assert res.stopped.startswith("the backend failed in round 2: ValueError: matmul"), res.stopped
    assert res.kept == ["b", "b/next", "d", "d/next"] and res.record()["stopped"] == res.stopped
    assert "gave up (the backend failed in round 2" in res.notes()[-1]
