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
    # every row names its machine and model, even when there is one of each
    assert len(lines) == 4 and lines[0].startswith("| machine | model | measured |")
    assert "| m1 | net | onnxruntime-cpu | int8 | 1 | 1.000 |" in md and "2.00×" in md and "top1 97.0 (fp32 98.0)" in md
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


def test_model_names_come_from_the_checkpoint(tmp_path):
    """Not the folder a checkpoint sits in ("model" for a packaged Hugging Face model)."""
    import json

    hf = tmp_path / "pkg" / "model"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps({"_name_or_path": "org/MiniLM-base", "architectures": ["BertModel"]}))
    assert report.model_name(str(hf)) == "MiniLM-base"
    (hf / "README.md").write_text("---\nlicense: x\n---\n\n# all-MiniLM-L6-v2\nThis is a model.\n")
    assert report.model_name(str(hf)) == "all-MiniLM-L6-v2"  # the model card's title first
    (hf / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (hf / "README.md").unlink()
    assert report.model_name(str(hf)) == "BertModel"
    named = tmp_path / "distilbert-sst2"
    named.mkdir()
    assert report.model_name(str(named)) == "distilbert-sst2"  # a folder with a real name keeps it
    assert report.model_name(str(tmp_path / "digits_cnn.pt"), "edgefm.zoo:digits_cnn") == "digits_cnn"
    assert report.model_name(str(tmp_path / "model.safetensors"), "my_nets.py:resnet_tiny") == "resnet_tiny"
    assert report.model_name(str(tmp_path / "checkpoint-1200" / "model.pt"), None, "ResNet") == "ResNet"


def test_jetson_qdq_run_in_onnx_runtime_is_marked(tmp_path):
    """A Jetson target measured on an x86 machine without TensorRT ran its Q/DQ ONNX in ONNX Runtime: the
    table, CSV and plots say so rather than passing it off as a TensorRT figure."""
    r = make_result(rows=(("fp32-onnx", "fp32-reference", "fp32", 2.0, 0.98),
                          ("jetson-orin-nano", "target", "int8", 1.5, 0.97)))
    r.measurements[1].notes.append("target backend tensorrt, but it ran on onnxruntime here (the backend's "
                                   "fallback): not a tensorrt figure")
    table = report.rows([r])
    assert table[1]["ran_as"] == "Q/DQ in ORT on x86, not TensorRT" and table[0]["ran_as"] is None
    md = report.markdown(table)
    assert "| m1 | net | jetson-orin-nano (Q/DQ in ORT on x86, not TensorRT) | int8 |" in md
    report.write_csv(table, tmp_path / "r.csv")
    assert list(csv.DictReader(open(tmp_path / "r.csv")))[1]["ran_as"] == "Q/DQ in ORT on x86, not TensorRT"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts: list[str] = []
    real = plt.Figure.savefig

    def grab(fig, *a, **k):  # the labels drawn on the figure, read off the artists before saving
        texts.extend(t.get_text() for ax in fig.axes for t in ax.texts + ax.get_yticklabels()
                     + ([ax.get_legend().get_title()] + ax.get_legend().get_texts() if ax.get_legend() else []))
        texts.extend(ax.get_title() for ax in fig.axes)
        return real(fig, *a, **k)

    plt.Figure.savefig = grab
    try:
        report.plot_pareto(table, tmp_path / "p.png")
        report.plot_latency([r], tmp_path / "l.png")
    finally:
        plt.Figure.savefig = real
    assert any("jetson-orin-nano (Q/DQ in ORT on x86, not TensorRT)" in t for t in texts), texts
    assert "m1" in texts and any(t.startswith("net:") for t in texts)  # machine in the legend, model as title
    assert any(t.startswith("m1 net jetson-orin-nano (Q/DQ in ORT on x86, not TensorRT) int8") for t in texts)
