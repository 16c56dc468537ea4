"""Reports: Pareto front, Markdown, CSV, plots, and merging results from several machines."""

from __future__ import annotations

import csv

from edgefm.bench import report
from edgefm.bench.cli import report as report_cmd
from edgefm.bench.config import ReportConfig
from edgefm.bench.runner import add_ratios
from tests.unit.test_bench_schema import make_result


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 0.90), (2.0, 0.95), (1.5, 0.89), (3.0, 0.95), (0.5, 0.80), (4.0, 0.99), (2.0, 0.94)]
    assert report.pareto_front(pts) == [4, 0, 1, 5]
    assert report.pareto_front([(1.0, 0.5)]) == [0]
    assert report.pareto_front([(1.0, 0.5), (1.0, 0.6)]) == [1]


def test_ratios_against_the_fp32_reference_at_the_same_batch():
    r = make_result()
    add_ratios(r.measurements)
    ref, int8 = r.measurements
    assert ref.speedup_vs_fp32 == 1.0 and int8.fp32_baseline == "fp32-onnx" and int8.speedup_vs_fp32 == 2.0
    assert int8.speedup_vs_torch is None


def test_markdown_and_csv(tmp_path):
    r = make_result()
    add_ratios(r.measurements)
    table = report.rows([r])
    md = report.markdown(table)
    lines = md.strip().splitlines()
    assert len(lines) == 4 and "machine" not in lines[0]
    assert "| onnxruntime-cpu | int8 | 1 | 1.000 |" in md and "2.00×" in md and "top1 97.0 (fp32 98.0)" in md
    report.write_csv(table, tmp_path / "r.csv")
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert list(rows[0]) == report.COLUMNS and rows[1]["speedup_vs_fp32"] == "2" and rows[1]["accuracy"] == "0.97"


def test_report_merges_machines_into_one_table_and_plots(tmp_path):
    a = make_result("nuc", rows=(("fp32-onnx", "fp32-reference", "fp32", 2.0, 0.98),
                                 ("onnxruntime-cpu", "target", "int8", 1.0, 0.97)))
    b = make_result("rpi5", rows=(("fp32-onnx", "fp32-reference", "fp32", 9.0, 0.98),
                                  ("tflite-cpu", "target", "int8", 4.0, 0.975)))
    paths = []
    for r in (a, b):
        p = tmp_path / f"{r.machine.id}.json"
        p.write_text(r.to_json())
        paths.append(p)
    written = report_cmd(ReportConfig(results=paths, out=tmp_path / "rep"), echo=lambda s: None)
    names = {p.name for p in written}
    assert names == {"report.md", "results.csv", "pareto.png", "latency.png"}
    md = (tmp_path / "rep/report.md").read_text()
    assert "| machine |" in md and "| rpi5 |" in md and "| nuc |" in md and "![pareto](pareto.png)" in md
    assert len(list(csv.DictReader(open(tmp_path / "rep/results.csv")))) == 4
    png = (tmp_path / "rep/pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_plots_without_accuracy_are_skipped_not_faked(tmp_path):
    r = make_result()
    for m in r.measurements:
        m.accuracy = None
    assert report.plot_pareto(report.rows([r]), tmp_path / "p.png") is None
    assert report.plot_latency([r], tmp_path / "l.png").stat().st_size > 1000
