"""edgefm.search configuration: budgets, a recipe's search: section, and staying light to import."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgefm.errors import ConfigError
from edgefm.search.report import pareto_front
from edgefm.search.space import from_recipe, parse_budget


def test_budget_parsing_and_errors():
    b = parse_budget("latency_ms=2.5,accuracy_drop=1")
    assert (b.latency_ms, b.accuracy_drop, b.size_mb) == (2.5, 1.0, None)
    assert b.met_by({"status": "ok", "latency_p50_ms": 2.0, "accuracy_drop": 0.5, "size_mb": 9})
    assert not b.met_by({"status": "ok", "latency_p50_ms": 3.0, "accuracy_drop": 0.5, "size_mb": 9})
    assert not b.met_by({"status": "refused"})
    for bad, words in [("latency=2", "latency_ms"), ("latency_ms=fast", "not a number"), ("size_mb=-1", "size_mb")]:
        with pytest.raises(ConfigError, match=words):
            parse_budget(bad)


def test_recipe_search_section_refined_by_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "arch": "edgefm.zoo:digits_cnn", "inputs": ["x:1,1,8,8"],
        "search": {"trials": 20, "sampler": "tpe", "budget": {"accuracy_drop": 1.5},
                   "space": {"prune": [None, 0.3], "quantize": ["int8"]}}}))
    base, cfg = from_recipe(recipe, {"source": Path("m.pt"), "output": Path("o")},
                            {"space": {"targets": ["openvino-cpu"], "prune": None}, "trials": 5,
                             "budget": {"latency_ms": 3.0}})
    assert base.arch == "edgefm.zoo:digits_cnn" and base.inputs == ["x:1,1,8,8"]
    assert cfg.trials == 5 and cfg.sampler == "tpe"
    assert cfg.space.prune == [None, 0.3] and cfg.space.targets == ["openvino-cpu"]
    assert (cfg.budget.latency_ms, cfg.budget.accuracy_drop) == (3.0, 1.5)
    recipe.write_text(yaml.safe_dump({"search": {"trails": 3}}))
    with pytest.raises(ConfigError, match="trails"):
        from_recipe(recipe, {"source": Path("m.pt"), "output": Path("o")}, {})


def test_pareto_front_keeps_only_undominated_rows():
    rows = [{"n": 0, "a": 1, "b": 5}, {"n": 1, "a": 2, "b": 2}, {"n": 2, "a": 3, "b": 3}, {"n": 3, "a": 5, "b": 1},
            {"n": 4, "a": 2, "b": 2}]
    assert [r["n"] for r in pareto_front(rows, ("a", "b"))] == [0, 1, 3]


def test_importing_search_does_not_import_ray_or_optuna():
    code = ("import sys, edgefm, edgefm.search, edgefm.cli; "
            "print(sorted(m for m in ('ray', 'optuna', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
