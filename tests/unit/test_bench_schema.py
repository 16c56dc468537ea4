"""The result schema (round trip, versioning, documented fields) and the bench/report configs."""

from __future__ import annotations

import json

import pytest

from edgefm.bench.config import BenchConfig, ReportConfig, build
from edgefm.bench.schema import (SCHEMA_VERSION, Accuracy, BenchResult, LatencyStats, MachineInfo, Measurement,
                                 MemoryStats, Settings, json_schema, read_result)
from edgefm.errors import ConfigError


def make_result(machine="m1", model="net", rows=(("fp32-onnx", "fp32-reference", "fp32", 2.0, 0.98),
                                               ("onnxruntime-cpu", "target", "int8", 1.0, 0.97))) -> BenchResult:
    from edgefm.bench.schema import BundleInfo

    ms = []
    for name, role, prec, p50, top1 in rows:
        lat = LatencyStats(runs=3, warmup=1, min=p50 * 0.9, mean=p50, p50=p50, p90=p50 * 1.1, p99=p50 * 1.2,
                           max=p50 * 1.3, std=0.1, throughput=1000 / p50, total_s=3 * p50 / 1e3)
        ms.append(Measurement(name=name, role=role, backend="onnxruntime", precision=prec, batch=1, load_s=0.1,
                              cold_ms=p50 * 3, latency=lat, size_bytes=1000,
                              memory=MemoryStats(peak_rss_mb=80, idle_rss_mb=50,
                                                 loaded_rss_mb=70),
                              accuracy=Accuracy(basis="labels", samples=10, top1=top1, fp32_top1=0.98,
                                                fidelity={"logits": {"cosine": 0.999, "min_cosine": 0.99,
                                                                     "max_abs": 0.1, "top1_agreement": 0.99}}),
                              latencies_ms=[p50 * 0.9, p50, p50 * 1.3]))
    return BenchResult(edgefm_version="0", bundle=BundleInfo(path="b", model=model, family="cnn", task="t"),
                       machine=MachineInfo(id=machine, arch="x86_64", cpu_model="cpu", logical_cores=2,
                                           memory_gb=1.0, os="linux", python="3.11"),
                       settings=Settings(batches=[1], threads=None, warmup=1, runs=3, seconds=None, min_runs=1,
                                         eval=None, eval_samples=10),
                       measurements=ms)


def test_round_trip_through_json(tmp_path):
    r = make_result()
    p = tmp_path / "r.json"
    p.write_text(r.to_json())
    data = json.loads(p.read_text())
    assert data["schema"] == "edgefm.bench" and data["schema_version"] == SCHEMA_VERSION
    assert read_result(p) == r


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "schema_version"),
    (lambda d: d.pop("schema"), "not an edgefm bench result"),
    (lambda d: d["measurements"][0].pop("latency"), "does not fit the schema"),
    (lambda d: d["measurements"][0].update(surprise=1), "does not fit the schema"),
])
def test_bad_result_files_are_one_line_config_errors(tmp_path, mutate, words):
    data = json.loads(make_result().to_json())
    mutate(data)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as e:
        read_result(p)
    assert words in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        read_result(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_result(tmp_path / "nope.json")


def test_every_field_is_documented():
    schema = json_schema()
    models = {**schema["$defs"], "BenchResult": schema}
    undocumented = [f"{name}.{field}" for name, d in models.items() for field, p in d["properties"].items()
                    if "description" not in p]
    assert not undocumented


def test_headline_prefers_top1_then_lowest_cosine():
    assert Accuracy(basis="labels", samples=1, top1=0.9).headline() == ("top1", 0.9)
    acc = Accuracy(basis="reference", samples=1, fidelity={"a": {"cosine": 0.99}, "b": {"cosine": 0.95}})
    assert acc.headline() == ("cosine", 0.95)
    assert Accuracy(basis="none", samples=1).headline() == ("none", None)


def test_bench_config_parses_cli_style_values():
    cfg = build(BenchConfig, bundle="b", batches="8,1", targets=["a,b", "c"], runs=None, threads=2)
    assert cfg.batches == [1, 8] and cfg.targets == ["a", "b", "c"] and cfg.threads == 2 and cfg.runs is None
    assert build(BenchConfig, bundle="b", batches=["1", "8", "8"]).batches == [1, 8]


@pytest.mark.parametrize("fields, words", [
    (dict(batches="0,8"), "batch sizes must be integers >= 1"),
    (dict(batches="x"), "batches"),
    (dict(threads=0), "threads"),
    (dict(seconds=-1), "seconds"),
    (dict(runs=0), "runs"),
    (dict(colour="red"), "colour"),
])
def test_bad_bench_options_are_config_errors(fields, words):
    with pytest.raises(ConfigError) as e:
        build(BenchConfig, bundle="b", **fields)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_report_config_needs_results():
    with pytest.raises(ConfigError, match="results"):
        build(ReportConfig, results=[], out="o")
