"""edgefm search and compress-zoo on Ray: an embedded local Ray, a real two-node cluster started here (one
node killed mid-search), the content cache, and a zoo of three models. Real compress runs, real runtimes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

# Ray 2.5x clusters authenticate by token, and Ray reads it once per process: the nodes the cluster test starts
# and this driver must share it, so it is set before Ray is first imported
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", __import__("secrets").token_hex(32))
pytest.importorskip("ray")
pytest.importorskip("optuna")

from edgefm.cli import app  # noqa: E402

# Ray advertises the machine's network address even when told 127.0.0.1 (it resolves localhost to the node IP).
# So that the test cluster's traffic never leaves loopback, the tests of this file run inside a network namespace
# of their own (only `lo`) where one can be made (root, unshare, ip): the outer run is one test that re-runs
# this file there. Elsewhere (a developer without root) they run in this process.
_INSIDE = os.environ.get("EDGEFM_TEST_NETNS") == "1"
_CAN_NETNS = (hasattr(os, "geteuid") and os.geteuid() == 0 and __import__("shutil").which("unshare") is not None
              and __import__("shutil").which("ip") is not None)


def test_search_suite_in_private_network_namespace():
    """This file's tests, re-run inside `unshare -n` with only the loopback interface up."""
    if _INSIDE or not _CAN_NETNS:
        pytest.skip("running the tests directly" if _INSIDE else "no root/unshare/ip: the tests run in this process")
    flags = ["--import-mode=append"] if os.environ.get("EDGEFM_TEST_INSTALLED") == "1" else []
    script = 'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider -rfs "$@"'
    def run():
        return subprocess.run(["unshare", "-n", "sh", "-c", script, sys.executable, *flags, __file__],
                              env={**os.environ, "EDGEFM_TEST_NETNS": "1"}, capture_output=True, text=True,
                              timeout=1200, cwd=str(ROOT))

    r = run()
    if r.returncode != 0:
        # Ray on 2 shared cores (heartbeats, node start-up, the deliberate kill, parallel-overlap timing) failed once
        # in 5 whole runs here: one more whole run, and the first run's failures are reported either way.
        first = [ln for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        print("first run failed, rerunning once:\n" + "\n".join(first))
        r = run()
    failed = [ln for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR", "E   "))]
    assert r.returncode == 0, "\n".join(failed[:60]) + "\n...\n" + r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-3000:]


@pytest.fixture(autouse=True)
def only_inside_the_namespace(request):
    if _CAN_NETNS and not _INSIDE and request.node.name != "test_search_suite_in_private_network_namespace":
        pytest.skip("run inside a private network namespace by test_search_suite_in_private_network_namespace")

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "calibration"
BUDGET = {"latency_ms": 50.0, "accuracy_drop": 2.0}  # generous latency: CI machines differ, the drop does not


@pytest.fixture(autouse=True)
def ray_env(monkeypatch):
    """Ray workers inherit the driver's environment: they must import this edgefm and use the test's cache."""
    if os.environ.get("EDGEFM_TEST_INSTALLED") != "1":  # against an installed wheel, workers import that one
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    yield
    import ray

    if ray.is_initialized():  # a failed test must not leave its Ray behind
        ray.shutdown()


def _top1(bundle: Path, target: str) -> float:
    import edgefm

    pred = edgefm.load(bundle, target)
    d = np.load(CALIB / "digits_eval.npz")
    logits = np.concatenate([pred({"x": d["x"][i:i + 1]})[pred.output_names[0]] for i in range(len(d["x"]))])
    return float((logits.argmax(-1) == d["labels"]).mean())


@pytest.mark.slow
def test_search_embedded_ray_pareto_budget_and_resume(digits_cnn_ckpt, tmp_path):
    """12 trials (prune ratio x precision x two targets) on an embedded 2-CPU Ray: a Pareto plot, a chosen
    bundle that meets the budget, loads and verifies; the re-run compresses nothing and is much faster."""
    ckpt, fp32_acc = digits_cnn_ckpt
    store, best = tmp_path / "store", tmp_path / "best"
    args = ["search", str(ckpt), "-o", str(best), "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8",
            "--calib", str(CALIB / "digits_calib.npz"), "--eval", str(CALIB / "digits_eval.npz"),
            "-t", "onnxruntime-cpu", "-t", "openvino-cpu", "--prune-choices", "none,0.25,0.5",
            "--quantize-choices", "int8,fp32", "--sampler", "grid", "--trials", "12", "--num-cpus", "2",
            "--storage", str(store), "--budget", ",".join(f"{k}={v}" for k, v in BUDGET.items())]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    first = json.loads((store / "search.json").read_text())
    assert first["trials_asked"] == 12 and first["trials_run"] == 12  # the baseline is the grid's fp32 ORT point
    params = [t["params"] for t in first["trials"]]
    assert {p["target"] for p in params} == {"onnxruntime-cpu", "openvino-cpu"}
    assert {p["prune"] for p in params} == {None, 0.25, 0.5}
    assert (store / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (store / "search.md").read_text()
    assert "Latency measured on" in md and "## Pareto front" in md
    ch = first["chosen"]
    assert ch is not None
    assert ch["latency_p50_ms"] <= BUDGET["latency_ms"] and ch["accuracy_drop"] <= BUDGET["accuracy_drop"]
    # the chosen bundle is a normal bundle: it verifies and, measured independently, keeps the accuracy
    from edgefm.verify import verify_bundle

    assert all(r.ok for r in verify_bundle(best)), [c.detail for r in verify_bundle(best) for c in r.checks]
    target = ch["params"]["target"]
    assert 100 * (first["baseline"]["top1"] - _top1(best, target)) <= BUDGET["accuracy_drop"] + 1e-9
    # no trial on the front is beaten on all three objectives by another trial
    ok = [t for t in first["trials"] if t["status"] == "ok"]
    for n in first["pareto"]:
        a = next(t for t in ok if t["number"] == n)
        assert not any(all(b[o] <= a[o] for o in ("latency_p50_ms", "accuracy_drop", "size_mb")) and
                       any(b[o] < a[o] for o in ("latency_p50_ms", "accuracy_drop", "size_mb")) for b in ok)

    res = CliRunner().invoke(app, args + ["--force"])
    assert res.exit_code == 0, res.output
    again = json.loads((store / "search.json").read_text())
    assert again["trials_run"] == 0 and all(t["cached"] for t in again["trials"])
    assert again["chosen"]["key"] == ch["key"]
    assert again["wall_s"] < 0.2 * first["wall_s"], (first["wall_s"], again["wall_s"])
    print(f"\nsearch: 12 trials first run {first['wall_s']} s, re-run {again['wall_s']} s; chosen trial "
          f"{ch['number']} {ch['params']} p50 {ch['latency_p50_ms']:.3f} ms drop {ch['accuracy_drop']:.2f} "
          f"size {ch['size_mb']:.4f} MB; load {open('/proc/loadavg').read().split()[:3]}")


def test_search_refused_inputs_are_one_line(tmp_path, digits_cnn_ckpt):
    ckpt, _ = digits_cnn_ckpt
    res = CliRunner().invoke(app, ["search", str(ckpt), "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8",
                                   "--budget", "latency=3", "--storage", str(tmp_path / "s")])
    assert res.exit_code == 2 and "--budget" in res.output and "latency_ms" in res.output
    res = CliRunner().invoke(app, ["search", str(ckpt), "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8",
                                   "--prune-choices", "none,half", "--storage", str(tmp_path / "s")])
    assert res.exit_code == 2 and "--prune-choices" in res.output and "'half'" in res.output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ours(temp_dir: str) -> list:
    """Every process of the cluster this test started: those naming its private temp dir, and their children
    (ended by pid: other Ray sessions on the machine are left alone, unlike a blanket `ray stop`)."""
    import psutil

    procs = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if temp_dir in " ".join(p.info["cmdline"] or []):
                procs[p.pid] = p
                for c in p.children(recursive=True):
                    procs[c.pid] = c
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return list(procs.values())


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A real Ray cluster on this machine: a head with 1 CPU and a second node with 1 CPU and resource
    'node2', on 127.0.0.1, with its own temp dir (short: Ray's socket paths have a length limit)."""
    import psutil

    temp_dir = f"/tmp/efr{os.getpid()}"
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", temp_dir, "--disable-usage-stats",
              "--object-store-memory", str(100 * 1024 ** 2)]
    try:
        subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                       env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([ray_bin, "start", "--address", f"127.0.0.1:{port}", "--resources", '{"node2": 1}', *common],
                       env=env, check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        procs = _ours(temp_dir)
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=15)
        for p in alive:
            p.kill()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_search_on_two_node_cluster_survives_a_killed_node(digits_cnn_ckpt, tmp_path, two_node_cluster):
    """Trials run on both nodes; the second node's raylet is killed while it runs a trial, and that trial is
    retried on the head and finishes."""
    import psutil
    import ray

    from edgefm.config import CompressConfig
    from edgefm.search import SearchConfig, search

    ckpt, _ = digits_cnn_ckpt
    store = tmp_path / "store"
    base = CompressConfig(source=ckpt, output=tmp_path / "unused", arch="edgefm.zoo:digits_cnn", inputs=["x:1,1,8,8"],
                          calib=CALIB / "digits_calib.npz", eval=CALIB / "digits_eval.npz")
    cfg = SearchConfig(space={"prune": [None, 0.25, 0.5], "quantize": ["int8"],
                              "targets": ["onnxruntime-cpu", "openvino-cpu"]},
                       budget=BUDGET, trials=6, sampler="grid", storage=store, ray_address=two_node_cluster,
                       timing_runs=100, memory_gb=0.5)
    killed: dict = {}

    def kill_node2_mid_trial():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            time.sleep(0.5)
            if not ray.is_initialized():
                continue
            try:
                node2 = next(n for n in ray.nodes() if n["Alive"] and "node2" in n["Resources"])
            except (StopIteration, Exception):  # noqa: BLE001 - the driver may be connecting
                continue
            done_on_2 = [r for r in store.glob("trials/*/result.json") if json.loads(r.read_text())["node"] == node2["NodeID"]]
            if not done_on_2:  # let node2 finish one trial first: the spread shows in the results too
                continue
            for log in store.glob("trials/*/attempts.log"):
                running = not (log.parent / "result.json").exists()
                if running and any(json.loads(line)["node"] == node2["NodeID"] for line in log.read_text().splitlines()):
                    flag = f"--node_id={node2['NodeID']}"
                    for p in psutil.process_iter(["name", "cmdline"]):
                        if "raylet" in (p.info["name"] or "") and flag in " ".join(p.info["cmdline"] or []):
                            # its workers first: a worker outlives its raylet long enough to finish the trial
                            for c in p.children(recursive=True):
                                c.send_signal(signal.SIGKILL)
                            p.send_signal(signal.SIGKILL)
                            killed.update(node=node2["NodeID"], trial=log.parent.name, pid=p.pid)
                            return

    watcher = threading.Thread(target=kill_node2_mid_trial, daemon=True)
    watcher.start()
    s = search(base, cfg)
    watcher.join(timeout=5)
    assert killed, "the second node never ran a trial, so it could not be killed mid-trial"
    trials = {t["key"]: t for t in s["trials"]}
    victim = trials[killed["trial"]]
    assert victim["status"] == "ok"
    nodes = [a["node"] for a in victim["attempts"]]
    assert nodes[0] == killed["node"] and len(nodes) >= 2 and nodes[-1] != killed["node"], nodes
    assert all(t["status"] == "ok" for t in s["trials"])
    assert len(s["nodes"]) == 2  # trials visibly spread over both nodes
    spread = {n[:8]: sum(t["attempts"][-1]["node"] == n for t in s["trials"]) for n in s["nodes"]}
    assert all(spread.values()), spread  # each node finished at least one trial
    print(f"\ncluster search: {len(s['trials'])} trials in {s['wall_s']} s; finishing node per trial {spread}; "
          f"killed node2 raylet pid {killed['pid']} during trial {killed['trial'][:8]}, retried: {[n[:8] for n in nodes]}; "
          f"load {open('/proc/loadavg').read().split()[:3]}")


def test_compress_zoo_three_models_in_parallel(digits_cnn_ckpt, digits_lstm_ckpt, tmp_path):
    """Three models (CNN, LSTM, GRU) in one zoo file, compressed as parallel Ray tasks: three bundles that
    verify, and one report naming each."""
    import torch

    from edgefm import zoo as models

    torch.manual_seed(0)
    gru = models.digits_gru()
    models.train_digits(gru, sequence=True, epochs=15)
    gru_path = tmp_path / "gru.pt"
    torch.save(gru.state_dict(), gru_path)
    seq = {"calib": str(CALIB / "digits_seq_calib.npz"), "eval": str(CALIB / "digits_seq_eval.npz"),
           "inputs": ["x:1,8,8"]}
    zoo_file = tmp_path / "zoo.yaml"
    zoo_file.write_text(yaml.safe_dump({
        "defaults": {"targets": ["onnxruntime-cpu"]},
        "models": [
            {"name": "cnn", "source": str(digits_cnn_ckpt[0]), "arch": "edgefm.zoo:digits_cnn",
             "inputs": ["x:1,1,8,8"], "calib": str(CALIB / "digits_calib.npz"),
             "eval": str(CALIB / "digits_eval.npz"), "prune": {"ratio": 0.25}},
            {"name": "lstm", "source": str(digits_lstm_ckpt[0]), "arch": "edgefm.zoo:digits_lstm", **seq},
            {"name": "gru", "source": "gru.pt", "arch": "edgefm.zoo:digits_gru", **seq},  # relative to the zoo
        ]}))
    out = tmp_path / "bundles"
    res = CliRunner().invoke(app, ["compress-zoo", str(zoo_file), "-o", str(out), "--num-cpus", "2"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in rep["models"]] == ["cnn", "lstm", "gru"] and rep["ok"] == 3
    from edgefm.verify import verify_bundle

    for name in ("cnn", "lstm", "gru"):
        assert all(r.ok for r in verify_bundle(out / name)), name
    md = (out / "report.md").read_text()
    assert all(f"| {n} | ok | onnxruntime-cpu |" in md for n in ("cnn", "lstm", "gru")), md
    # in parallel: two models were being compressed at the same time, by two worker processes
    ms = rep["models"]
    overlap = [(a["name"], b["name"]) for a in ms for b in ms
               if a["name"] < b["name"] and a["start"] < b["end"] and b["start"] < a["end"] and a["pid"] != b["pid"]]
    assert overlap, [(m["name"], m["start"], m["end"]) for m in ms]
    print(f"\nzoo: 3 models in {rep['wall_s']} s wall, concurrent {overlap} (sum of model times "
          f"{sum(m['seconds'] for m in rep['models']):.1f} s); load {open('/proc/loadavg').read().split()[:3]}")


def test_compress_zoo_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "zoo.yaml"
    bad.write_text(yaml.safe_dump({"models": [{"name": "a/b", "source": "x.pt"}]}))
    res = CliRunner().invoke(app, ["compress-zoo", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "models[0].name" in res.output
    assert not (tmp_path / "o").exists()


def test_trial_refused_by_the_contract_is_recorded_not_raised(digits_cnn_ckpt, tmp_path):
    """A trial whose int8 model breaks the accuracy contract is a finished, infeasible trial with the reason."""
    from edgefm.config import CompressConfig
    from edgefm.search.trial import read_result, run_trial

    ckpt, _ = digits_cnn_ckpt
    base = CompressConfig(source=ckpt, output=tmp_path / "unused", arch="edgefm.zoo:digits_cnn",
                          inputs=["x:1,1,8,8"], calib=CALIB / "digits_calib.npz", eval=CALIB / "digits_eval.npz",
                          tolerances={"quantize": {"cosine": 0.999999, "top1_agreement": 1.0}})
    params = {"prune": None, "macs_target": None, "distill_epochs": 0, "quantize": "int8", "keep_fp32": [],
              "target": "onnxruntime-cpu"}
    r = run_trial(base.model_dump(mode="json"), params, str(tmp_path / "t"), timing_runs=10)
    assert r["status"] == "refused" and r["error"] == "AccuracyError" and r["reason"]
    assert read_result(tmp_path / "t") == r  # finished: a re-run reads it back instead of compressing again
    assert not (tmp_path / "t" / "bundle").exists()
