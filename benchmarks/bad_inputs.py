"""Every bad input of tests/integration/bad_inputs_cases.py run as a user runs it (a fresh ``python -m
edgefm.cli`` per case), plus OUT in a read-only folder and a full disk: the error line, the exit code, the
seconds to the error and whether anything was left behind, as benchmarks/results/bad_inputs.md.

    PYTHONPATH=$PWD python benchmarks/bad_inputs.py [--out benchmarks/results/bad_inputs.md]

Seconds are wall time of the whole command, interpreter start included; the load average beside them says how
busy the machine was (on a shared machine the figures are an upper bound)."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.bad_inputs_cases import CASES, make_fixtures  # noqa: E402

HEAVY = ("torch", "onnx", "onnxruntime", "transformers", "openvino")


def run_case(argv: list[str], work: Path, env: dict, preexec=None) -> dict:
    """Run ``edgefm ARGV`` in ``work``; the error line, exit code, seconds, heavy imports and leftovers."""
    work.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(work))
    cmd = [sys.executable, "-X", "importtime", "-m", "edgefm.cli", *map(str, argv)]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, preexec_fn=preexec, timeout=900)
    seconds = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU time: what the wall time would be on an idle machine
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    lines = r.stderr.splitlines()
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in lines if ln.startswith("import time:")}
    text = [ln for ln in lines if not ln.startswith("import time:")] + r.stdout.splitlines()
    errors = [ln for ln in text if ln.startswith("error:")]
    return {"code": r.returncode, "seconds": seconds, "cpu": cpu, "error": errors[0] if len(errors) == 1 else " / ".join(text[-3:]),
            "one_line": len(errors) == 1 and not any("Traceback" in ln for ln in text),
            "heavy": sorted(imported & set(HEAVY)), "left": sorted(set(os.listdir(work)) - before)}


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def extra_cases(fx: dict, tmp: Path) -> list[tuple[str, list, dict, object, bool]]:
    """(what, argv, env overrides, preexec, needs_model) for the cases that need a special environment."""
    base = ["compress", fx["ckpt"], "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8", "--quantize", "fp32"]
    out = []
    ro = tmp / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        out.append(("OUT in a read-only folder (chmod 555)", [*base, "-o", str(ro / "b")], {}, None, False))
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode == 0:
        out.append(("OUT on a read-only file system", [*base, "-o", str(ro / "b")], {}, None, False))
    out.append(("disk full (64 KiB file size limit) while writing the bundle", [*base, "-o", "out"],
                {"EDGEFM_CACHE_DIR": "0"}, _limit_file_size, True))
    out.append(("bench of a bundle whose every target fails (garbage artifact, hashes updated)",
                ["bench", str(_broken_bundle(base, tmp)), "--no-baselines", "--runs", "3", "--warmup", "1"], {}, None,
                True))
    return out


def _broken_bundle(base: list, tmp: Path) -> Path:
    """A real fp32 bundle whose only target's artifact is garbage, with the manifest's hashes updated (so only
    running it can tell)."""
    import json

    from edgefm.bundle import sha256_file

    b = tmp / "broken-bundle"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "edgefm.cli", *base, "-o", str(b)], env=env, check=True, capture_output=True)
    m = json.loads((b / "manifest.json").read_text())
    art = "onnxruntime-cpu/model.onnx"
    (b / "onnxruntime-cpu").mkdir(exist_ok=True)
    (b / art).write_bytes(b"not an onnx model")
    m["targets"]["onnxruntime-cpu"].update(artifact=art, files=[art])
    m["files"][art] = sha256_file(b / art)
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bad_inputs.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgefm-bad-"))
    fx = make_fixtures(tmp / "fx")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEFM_CACHE_DIR": str(tmp / "cache")}
    load_before = os.getloadavg()
    rows = []
    for i, c in enumerate(CASES):
        res = run_case(c.argv(fx), tmp / f"w{i}", env)
        rows.append((c.what, c.needs_model, res))
        print(f"{c.id}: {res['code']} {res['seconds']:.2f}s {res['error'][:120]}", file=sys.stderr)
    for what, argv, extra_env, preexec, needs_model in extra_cases(fx, tmp):
        res = run_case(argv, tmp / f"x{len(rows)}", {**env, **extra_env}, preexec)
        rows.append((what, needs_model, res))
        print(f"{what}: {res['code']} {res['seconds']:.2f}s {res['error'][:120]}", file=sys.stderr)
    if (tmp / "ro").is_mount():
        subprocess.run(["umount", str(tmp / "ro")])
    load_after = os.getloadavg()
    args.out.write_text(render(rows, load_before, load_after, tmp))
    (tmp / "ro").chmod(0o755)
    shutil.rmtree(tmp)
    print(f"wrote {args.out}", file=sys.stderr)


def render(rows, load_before, load_after, tmp: Path) -> str:
    def cell(s: str) -> str:
        return s.replace(str(tmp) + "/", "").replace("|", "\\|")

    fast = [r["seconds"] for _, needs, r in rows if not needs]
    fast_cpu = [r["cpu"] for _, needs, r in rows if not needs]
    slow = [r["seconds"] for _, needs, r in rows if needs]
    ok = sum(r["code"] == 2 and r["one_line"] and not r["left"] for _, _, r in rows)
    lines = [
        "# Bad inputs: one clear line, exit code 2, nothing left behind",
        "",
        f"Generated by `benchmarks/bad_inputs.py` on {platform.node()} ({os.cpu_count()} logical cores), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (a shared machine: seconds are an upper bound). Each row is a fresh "
        f"`python -X importtime -m edgefm.cli …` in an empty folder; *seconds* is its whole wall time, "
        f"interpreter start included, *CPU s* its user+system CPU time (about the wall time on an idle "
        f"machine). Fixture paths are shown relative to the run's temp folder.",
        "",
        f"**{ok} of {len(rows)}** inputs gave exit code 2, exactly one `error:` line and no traceback, and left "
        f"nothing behind. Mistakes found before any model is loaded: {len(fast)}, "
        f"{min(fast):.2f}–{max(fast):.2f} s wall (median {sorted(fast)[len(fast) // 2]:.2f} s; CPU time "
        f"{min(fast_cpu):.2f}–{max(fast_cpu):.2f} s, median {sorted(fast_cpu)[len(fast_cpu) // 2]:.2f} s), "
        f"none importing torch, "
        f"onnx or a runtime; those needing the model: {len(slow)}, median {sorted(slow)[len(slow) // 2]:.2f} s.",
        "",
        "| # | bad input | error line | exit | seconds | CPU s | model loaded | heavy imports | left behind |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (what, needs, r) in enumerate(rows, 1):
        lines.append(f"| {i} | {cell(what)} | {cell(r['error'])} | {r['code']} | {r['seconds']:.2f} | {r['cpu']:.2f} | "
                     f"{'yes' if needs else 'no'} | {', '.join(r['heavy']) or '-'} | {', '.join(r['left']) or '-'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
