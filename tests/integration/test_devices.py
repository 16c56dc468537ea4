"""edgefm on boards over SSH, against a real OpenSSH server on this machine: each "device" is an sshd on a
loopback port (throw-away host and user keys, host keys checked) whose Python is a separate torch-free venv
holding only edgefm's core. Bench and verify run there through ``edgefm … --device``; a fleet of two runs
in parallel while one is killed mid-run; the remote TensorRT compile goes as far as a machine without
TensorRT allows (push, command, its clear failure), and the pull-back into a new bundle revision is
exercised with a bundle the device holds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgefm.errors import BundleError, ConfigError
from tests.integration.devices_helpers import ROOT, SSHD, device_venv, keygen, start_sshd, write_ssh_config

pytestmark = pytest.mark.skipif(not SSHD.is_file() or shutil.which("ssh") is None,
                                reason="needs OpenSSH's sshd and ssh (apt install openssh-server openssh-client)")

FAST = ["--runs", "20", "--warmup", "2", "--threads", "1"]


def edgefm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgefm.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, digits_cnn_ckpt) -> Path:
    """The digits CNN bundle of the bench tests (onnxruntime int8 + fp32 targets, eval data with labels)."""
    from tests.integration.test_bench import build_digits_bundle

    return build_digits_bundle(tmp_path_factory.mktemp("devb") / "digits", digits_cnn_ckpt[0])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Two devices (devA, devB): an sshd each, one shared device venv, an inventory and ssh config."""
    tmp = tmp_path_factory.mktemp("lab")
    python = device_venv()
    user_key = keygen(tmp / "id_ed25519")
    servers = [start_sshd(tmp, name, Path(f"{user_key}.pub")) for name in ("devA", "devB")]
    cfg = write_ssh_config(tmp, servers, user_key)
    inv = tmp / "devices.yaml"
    inv.write_text(yaml.safe_dump({"ssh_config": str(cfg), "devices": [
        {"name": s.name, "host": s.name, "target": "onnxruntime-cpu", "python": str(python),
         "workdir": str(tmp / f"work-{s.name}")} for s in servers]}))
    yield {"tmp": tmp, "inv": inv, "servers": {s.name: s for s in servers}, "python": python, "key": user_key}
    for s in servers:
        if s.proc.poll() is None:
            s.stop()


def _remote(lab, name):
    from edgefm.devices.inventory import load_inventory
    from edgefm.devices.remote import Remote

    inv = load_inventory(lab["inv"])
    return Remote(inv.get(name), inv)


def test_inventory_errors_name_the_file_and_field(tmp_path):
    from edgefm.devices.inventory import load_inventory

    p = tmp_path / "devices.yaml"
    p.write_text("devices:\n  - name: a\n    host: a\n    colour: red\n")
    with pytest.raises(ConfigError, match=r"devices.yaml: devices.0.colour = 'red': Extra inputs"):
        load_inventory(p)
    p.write_text("devices:\n  - {name: a, host: a}\n  - {name: a, host: b}\n")
    with pytest.raises(ConfigError, match="'a' appears twice"):
        load_inventory(p)
    p.write_text("devices:\n  - {name: a, host: '-oProxyCommand=x'}\n")
    with pytest.raises(ConfigError, match="not an SSH destination"):
        load_inventory(p)
    p.write_text("devices:\n  - {name: a, host: a, target: no-such-board}\n")
    with pytest.raises(ConfigError, match="device 'a': .*no-such-board"):
        load_inventory(p)
    p.write_text("devices:\n  - {name: a, host: a}\n")
    with pytest.raises(ConfigError, match="device 'b' is not in .*devices.yaml \\(it has: a\\)"):
        load_inventory(p).get("b")


def test_probe_lists_versions_and_cpu(lab):
    r = edgefm("devices", "--inventory", str(lab["inv"]))
    assert r.returncode == 0, r.stderr + r.stdout
    for name in ("devA", "devB"):
        assert name in r.stdout
    probe = _remote(lab, "devA").probe()
    import edgefm as ef
    from edgefm.bench.machine import machine_info

    assert probe["edgefm"] == ef.__version__
    assert probe["executable"].startswith(str(lab["python"].parent.parent))  # the device's python, not ours
    assert "torch" not in probe["machine"]["runtime_versions"]  # a core-only device
    assert probe["machine"]["runtime_versions"]["onnxruntime"]
    assert probe["machine"]["cpu_flags"] == machine_info().cpu_flags  # same CPU: the device's own probe agrees
    assert probe["disk_free_gb"] > 0 and probe["memory_available_gb"] > 0
    assert probe["tensorrt"] is None


def test_unknown_host_key_is_refused(lab, tmp_path):
    """A host whose key is not in known_hosts is an error that says so, never accepted."""
    a = lab["servers"]["devA"]
    cfg = write_ssh_config(tmp_path, [a], lab["key"], known=[])
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"ssh_config": str(cfg), "devices": [
        {"name": "devA", "host": "devA", "python": str(lab["python"]), "workdir": str(tmp_path / "w")}]}))
    r = edgefm("devices", "--inventory", str(inv))
    assert r.returncode == 1
    assert "host key" in r.stdout and "known_hosts" in r.stdout
    assert (tmp_path / "known_hosts").read_text() == ""  # nothing was added behind the user's back


@pytest.mark.skipif(not Path("/usr/bin/python3").is_file(), reason="needs a system python3 without edgefm")
def test_a_device_without_edgefm_is_told_to_run_setup(lab, bundle, tmp_path):
    cfg = yaml.safe_load(lab["inv"].read_text())
    cfg["devices"] = [{**cfg["devices"][0], "python": "/usr/bin/python3", "workdir": str(tmp_path / "w")}]
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as over SSH: nothing of ours forwarded
    if subprocess.run(["/usr/bin/python3", "-c", "import edgefm"], capture_output=True, cwd=tmp_path,
                      env=env).returncode == 0:
        pytest.skip("the system python3 has edgefm")
    from edgefm.devices.inventory import load_inventory
    from edgefm.devices.remote import Remote
    from edgefm.errors import DeviceError

    i = load_inventory(inv)
    remote = Remote(i.get("devA"), i)
    want = "device devA: edgefm is not installed for /usr/bin/python3 there; run: edgefm devices setup devA"
    for call in (remote.probe, lambda: remote.verify(bundle)):
        with pytest.raises(DeviceError, match=want):
            call()
    r = edgefm("bench", str(bundle), "--device", "devA", "--inventory", str(inv), *FAST)
    assert r.returncode == 1 and f"| devA | FAILED | {want}" in r.stdout


def test_push_is_content_addressed(lab, bundle, tmp_path):
    remote = _remote(lab, "devA")
    first = remote.push(bundle)
    again = remote.push(bundle)
    assert again.manifest_sha == first.manifest_sha and again.sent_files == 0
    # a new revision sharing all but one file sends only that file (and the manifest)
    from edgefm.bundle import read_manifest, finalize

    rev = tmp_path / "rev"
    shutil.copytree(bundle, rev)
    m = read_manifest(rev)
    m.created = "2000-01-01T00:00:00+00:00"
    (rev / "NOTES.txt").write_text("a new file")
    finalize(rev, m)
    third = remote.push(rev)
    assert third.sent_files == 1 and third.manifest_sha != first.manifest_sha
    # a changed file is refused on the host before anything is sent
    (rev / "NOTES.txt").write_text("changed after writing")
    with pytest.raises(BundleError, match="NOTES.txt"):
        remote.push(rev)


def _top1_here(bundle: Path, artifact: str) -> float:
    import onnxruntime as ort

    with np.load(bundle / "eval.npz") as z:
        x, labels = z["in/x"], z["labels"]
    sess = ort.InferenceSession(str(bundle / artifact), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    return float((got.argmax(1) == labels).mean())


def test_bench_and_verify_on_a_device(lab, bundle, tmp_path):
    out = tmp_path / "a.json"
    r = edgefm("bench", str(bundle), "--device", "devA", "--inventory", str(lab["inv"]), "--json", str(out), *FAST)
    assert r.returncode == 0, r.stderr + r.stdout
    from edgefm.bench.schema import read_result
    from edgefm.bundle import read_manifest

    res = read_result(out)
    assert res.device_name == "devA"
    assert "torch" not in res.machine.runtime_versions  # measured by the device's own (torch-free) runtime
    names = {m.name for m in res.measurements}
    assert {"onnxruntime-cpu", "onnxruntime-fp32", "fp32-onnx"} <= names
    assert any(s.name == "torch-eager" for s in res.skipped)  # no torch on the device
    m = read_manifest(bundle)
    for meas in res.measurements:
        if meas.role == "target":  # accuracy on the device = what ORT gives here on the same data
            assert meas.accuracy.top1 == pytest.approx(_top1_here(bundle, m.targets[meas.name].artifact), abs=1e-9)
    assert "| device |" in r.stdout and "| devA |" in r.stdout

    r = edgefm("verify", str(bundle), "--device", "devA", "--inventory", str(lab["inv"]))
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.count("devA") >= 2 and "FAIL" not in r.stdout


def test_fleet_one_device_dies_mid_run(lab, bundle, tmp_path):
    """devB drops (its sshd and sessions killed) while its bench runs; devA finishes; one merged report."""
    b = lab["servers"]["devB"]
    killed = threading.Event()

    def kill_when_benching():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any("bench" in " ".join(p.cmdline()) and "edgefm.cli" in " ".join(p.cmdline())
                   for p in _alive(b.sessions())):
                b.stop()
                killed.set()
                return
            time.sleep(0.05)

    t = threading.Thread(target=kill_when_benching, daemon=True)
    t.start()
    folder = tmp_path / "results"
    t0 = time.monotonic()
    r = edgefm("bench", str(bundle), "--fleet", "--inventory", str(lab["inv"]), "--json", str(folder),
               "--md", str(tmp_path / "fleet.md"), "--runs", "300", "--warmup", "2", "--threads", "1")
    wall = time.monotonic() - t0
    t.join(5)
    assert killed.is_set(), "devB's bench never started"
    assert r.returncode == 1, r.stderr + r.stdout
    assert "1 of 2 devices failed" in r.stderr
    md = (tmp_path / "fleet.md").read_text()
    assert "| devB | FAILED | device devB:" in md and "| devA |" in md
    assert sorted(p.name for p in folder.iterdir()) == ["devA.json"]
    # the kept result merges with others into one report with a device column
    rep = edgefm("report", str(folder / "devA.json"), "-o", str(tmp_path / "rep"), "--no-plots")
    assert rep.returncode == 0, rep.stderr
    csv = (tmp_path / "rep" / "results.csv").read_text().splitlines()
    assert csv[0].startswith("device_name,") and all(line.startswith("devA,") for line in csv[1:])
    assert "- device `devA`, " in (tmp_path / "rep" / "report.md").read_text()
    print(f"fleet run with one device killed: {wall:.1f} s")


def _alive(procs):
    import psutil

    for p in procs:
        try:
            p.cmdline()
            yield p
        except psutil.Error:
            continue


def test_remote_compile_without_tensorrt_fails_clearly(lab, tmp_path, digits_cnn_ckpt):
    """Push, run ``edgefm compile`` on the device: no TensorRT there, so it fails with the device's reason and
    no bundle revision is written."""
    from edgefm.devices.inventory import load_inventory
    from edgefm.devices import fleet

    trt = _trt_bundle(tmp_path / "trt", digits_cnn_ckpt[0])
    out = tmp_path / "trt@devA"
    r = edgefm("compile", str(trt), "--device", "devA", "--inventory", str(lab["inv"]), "-o", str(out))
    assert r.returncode == 2
    assert "device devA: edgefm compile failed" in r.stderr and "TensorRT" in r.stderr
    assert not out.exists()
    inv = load_inventory(lab["inv"])
    with pytest.raises(ConfigError, match="never overwritten"):
        fleet.compile_on(trt, inv, inv.get("devA"), trt, [])


def test_pull_back_writes_a_new_revision(lab, bundle, tmp_path):
    """The pull-back half of a remote compile: the device's run folder holds a changed bundle (here: one more
    file, as an engine would be); only that file travels, the new revision verifies, the source is untouched."""
    from edgefm.bundle import read_manifest, verify_files

    remote = _remote(lab, "devA")
    pushed = remote.push(bundle)
    # on the device (same machine here): what agent compile leaves, made by its own checkout code path
    work = Path(lab["tmp"]) / "work-devA"
    run = "0123456789ab"
    dst = work / "runs" / run / "bundle"
    shutil.copytree(work / "bundles" / pushed.manifest_sha, dst)
    (dst / "engine.bin").write_bytes(b"\x00engine" * 1000)
    m = read_manifest(dst)
    from edgefm.bundle import finalize

    finalize(dst, m)
    out = tmp_path / "digits@devA"
    path = remote.pull_revision(bundle, run, json.loads((dst / "manifest.json").read_text()), out)
    new = read_manifest(path)
    verify_files(path, new)
    assert new.files["engine.bin"] == m.files["engine.bin"]
    assert new.stages[-1].name == "remote-build" and new.stages[-1].settings["pulled"] == ["engine.bin"]
    verify_files(bundle, read_manifest(bundle))
    remote._agent("clean", run)
    assert not (work / "runs" / run).exists()


def _trt_bundle(out: Path, ckpt: Path) -> Path:
    """A digits bundle with a TensorRT (fp16, Orin Nano) target: ONNX + build settings, no engine yet."""
    import torch

    from edgefm.backends import tensorrt as trt_backend
    from edgefm.backends.base import CompileJob, Samples
    from edgefm.bundle import Manifest, SourceInfo, finalize, staging
    from edgefm.config import CompressConfig
    from edgefm.stages.export import batched_outputs, onnx_outputs
    from edgefm.targets import get_target
    from edgefm.zoo import DigitsCNN
    from tests.integration.test_bench import SPEC

    model = DigitsCNN()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    calib = np.load(ROOT / "calibration/digits_calib.npz")
    ev = np.load(ROOT / "calibration/digits_eval.npz")
    eval_s = Samples({"x": ev["x"][:64]}, ev["labels"][:64])
    cfg = CompressConfig(source=ckpt, output=out, arch="edgefm.zoo:digits_cnn", inputs=["x:batch,1,8,8:float32"])
    with staging(out) as tmp:
        ref_path = tmp / "fp32" / "model.onnx"
        ref_path.parent.mkdir()
        torch.onnx.export(model, (torch.from_numpy(calib["x"][:2]),), str(ref_path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        reference = batched_outputs(lambda f: onnx_outputs(ref_path, f), eval_s, 64)
        np.savez(tmp / "eval.npz", **{"in/x": eval_s.inputs["x"], "labels": eval_s.labels,
                                      "ref/logits": reference["logits"]})
        target = get_target("jetson-orin-nano")
        job = CompileJob(onnx_path=ref_path, spec=SPEC, target=target, precision="fp16",
                         calib=Samples({"x": calib["x"][:32]}), eval=eval_s, reference=reference,
                         out_dir=tmp / target.name, bundle_dir=tmp, config=cfg, model=model)
        entry = trt_backend.compile(job).entry
        finalize(tmp, Manifest(edgefm_version="test", source=SourceInfo(path=str(ckpt), kind="state_dict"), spec=SPEC,
                               config=cfg.model_dump(mode="json"), reference="fp32/model.onnx", eval_data="eval.npz",
                               targets={target.name: entry}))
    return out


@pytest.mark.slow
def test_setup_installs_the_core_without_internet_on_the_device(lab, tmp_path):
    """``edgefm devices setup``: a device with only a bare Python gets a venv of its own holding edgefm's core
    from wheels this machine pushed (pip install --no-index there), and then answers the probe."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    cfg = yaml.safe_load(lab["inv"].read_text())
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"ssh_config": cfg["ssh_config"], "devices": [
        {"name": "bare", "host": "devA", "python": str(base), "workdir": str(tmp_path / "bare")}]}))
    from tests.integration.devices_helpers import edgefm_wheel

    t0 = time.monotonic()
    wheel = edgefm_wheel(tmp_path / "wheel")  # CI tests the installed wheel: no checkout to build from there
    r = edgefm("devices", "--inventory", str(inv), "setup", "bare", "--wheel", str(wheel), timeout=900)
    assert r.returncode == 0, r.stderr + r.stdout
    venv_python = tmp_path / "bare" / "venv" / "bin" / "python"
    assert f"python: {venv_python}" in r.stdout.replace("\n", "")
    from edgefm.devices.inventory import load_inventory
    from edgefm.devices.remote import Remote

    d = load_inventory(inv).get("bare").model_copy(update={"python": str(venv_python)})
    probe = Remote(d, load_inventory(inv)).probe()
    import edgefm as ef

    assert probe["edgefm"] == ef.__version__ and probe["executable"] == str(venv_python)
    assert "torch" not in probe["machine"]["runtime_versions"] and "onnxruntime" in probe["machine"]["runtime_versions"]
    print(f"setup: {time.monotonic() - t0:.1f} s")


def test_power_mode_other_than_the_inventorys_is_refused(lab, bundle, tmp_path):
    """A board whose nvpmodel mode is not the inventory's is not benched (here: not a Jetson at all)."""
    cfg = yaml.safe_load(lab["inv"].read_text())
    cfg["devices"] = [{**cfg["devices"][0], "power_mode": "MAXN"}]
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump(cfg))
    r = edgefm("bench", str(bundle), "--device", "devA", "--inventory", str(inv), *FAST)
    assert r.returncode == 1
    assert "device devA: power mode is unknown, the inventory requires MAXN" in r.stdout.replace("\n", " ")


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_remote_engine_build_pulls_a_new_revision(lab, tmp_path, digits_cnn_ckpt):
    """With TensorRT on the "device" (this machine's Python, over SSH): the engine is built there and comes
    back in a new bundle revision with the GPU and TensorRT versions recorded; the source stays as it was."""
    from edgefm.backends import tensorrt as trt_backend

    if not trt_backend.engine_available():
        pytest.skip("TensorRT / cuda-python not importable here")
    from edgefm.bundle import read_manifest, verify_files

    cfg = yaml.safe_load(lab["inv"].read_text())
    cfg["devices"] = [{**cfg["devices"][0], "python": sys.executable, "workdir": str(tmp_path / "w")}]
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump(cfg))
    src = _trt_bundle(tmp_path / "trt", digits_cnn_ckpt[0])
    before = (src / "manifest.json").read_text()
    out = tmp_path / "trt@devA"
    r = edgefm("compile", str(src), "--device", "devA", "--inventory", str(inv), "-o", str(out),
               "--allow-other-device", timeout=1800)
    assert r.returncode == 0, r.stderr + r.stdout
    m = read_manifest(out)
    verify_files(out, m)
    entry = next(iter(m.targets.values()))
    assert entry.artifact.endswith("model.engine") and entry.hardware["engine"]["tensorrt"]
    assert m.stages[-1].name == "remote-build" and entry.artifact in m.stages[-1].settings["pulled"]
    assert (src / "manifest.json").read_text() == before


def _arm64_lab(lab, tmp_path, ckpt):
    """The LiteRT int8 digits bundle (eval data with labels) and an inventory whose device "arm" runs the arm64
    Python under qemu (its EDGEFM_PYTHON says how edgefm there starts more of itself)."""
    import torch

    from edgefm.zoo import DigitsCNN
    from tests.backends.tflite.conftest import digits_job, tflite_target, write_bundle
    from tests.integration.devices_helpers import arm64_python

    model = DigitsCNN()
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    target = tflite_target("int8")
    out = tmp_path / "litert"
    write_bundle(out, lambda d: digits_job(d, model, False, target, bundle_dir=d), target)
    py = arm64_python(tmp_path)
    cfg = yaml.safe_load(lab["inv"].read_text())
    cfg["devices"] = [{**cfg["devices"][0], "name": "arm", "python": str(py), "workdir": str(tmp_path / "w")}]
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump(cfg))
    return out, target, inv


@pytest.mark.emulation
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None, reason="needs qemu-user-static")
def test_verify_litert_on_an_arm64_device(lab, tmp_path, digits_cnn_ckpt):
    """A "board" whose Python is the arm64 build under qemu: the LiteRT int8 artifact is verified over SSH by
    the arm64 LiteRT runtime (fidelity real, timings meaningless), with the same checks as here."""
    from edgefm.devices.inventory import load_inventory
    from edgefm.devices.remote import Remote
    from edgefm.verify import verify_bundle

    out, target, inv = _arm64_lab(lab, tmp_path, digits_cnn_ckpt[0])
    i = load_inventory(inv)
    remote = Remote(i.get("arm"), i)
    t0 = time.monotonic()
    assert remote.probe()["machine"]["arch"] == "aarch64"
    reports, _ = remote.verify(out)
    wall = time.monotonic() - t0
    here = verify_bundle(out)
    assert [r["target"] for r in reports] == [r.target for r in here] == [target.name]
    assert [c["name"] for c in reports[0]["checks"]] == [c.name for c in here[0].checks]
    assert reports[0]["ok"], reports
    print(f"arm64 device probe + verify over SSH: {wall:.1f} s")
    import re

    for c, h in zip(reports[0]["checks"], here[0].checks):
        print(f"  {c['name']}: arm64 device: {c['detail']} | here: {h.detail}")
        # the arm64 int8 kernels give the x86 top-1 on the eval data (as verify --emulate arm64 finds)
        assert re.findall(r"top-1 [\d.]+%", c["detail"]) == re.findall(r"top-1 [\d.]+%", h.detail)


@pytest.mark.emulation
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None, reason="needs qemu-user-static")
def test_bench_litert_on_an_arm64_device(lab, tmp_path, digits_cnn_ckpt):
    """``edgefm bench --device`` on the qemu arm64 "board": the agent's edgefm and the bench's workers are
    arm64 Pythons started through $EDGEFM_PYTHON; the pulled result says aarch64, and its accuracy and
    fidelity (arm64 LiteRT int8 kernels) match this machine's run of the same bundle within the contract."""
    from edgefm.bench.schema import read_result

    out, target, inv = _arm64_lab(lab, tmp_path, digits_cnn_ckpt[0])
    fast = ["--target", target.name, "--runs", "3", "--warmup", "1", "--threads", "1", "--no-baselines"]
    t0 = time.monotonic()
    r = edgefm("bench", str(out), "--device", "arm", "--inventory", str(inv), "--json", str(tmp_path / "arm.json"),
               *fast, timeout=600)
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stderr + r.stdout
    r = edgefm("bench", str(out), "--json", str(tmp_path / "x86.json"), *fast)
    assert r.returncode == 0, r.stderr + r.stdout
    arm, here = read_result(tmp_path / "arm.json"), read_result(tmp_path / "x86.json")
    assert arm.device_name == "arm" and arm.machine.arch == "aarch64"
    assert "torch" not in arm.machine.runtime_versions
    (a,), (h,) = arm.measurements, here.measurements
    assert a.name == h.name == target.name
    print(f"arm64 device bench over SSH: {wall:.1f} s (load {open('/proc/loadavg').read().split()[0]})")
    print(f"  arm64: top1 {a.accuracy.top1} fidelity {a.accuracy.fidelity} contract_ok {a.accuracy.contract_ok}")
    print(f"  here:  top1 {h.accuracy.top1} fidelity {h.accuracy.fidelity} contract_ok {h.accuracy.contract_ok}")
    assert a.accuracy.basis == h.accuracy.basis == "labels" and a.accuracy.samples == h.accuracy.samples
    # different int8 kernels (arm64 vs x86): top-1 within one point, and the recorded contract holds on both
    assert a.accuracy.top1 == pytest.approx(h.accuracy.top1, abs=0.01)
    assert a.accuracy.contract_ok and h.accuracy.contract_ok, (a.accuracy.contract_failures,
                                                               h.accuracy.contract_failures)
    assert a.accuracy.fidelity.keys() == h.accuracy.fidelity.keys()
