"""The result of ``edgefm bench``: a stable, versioned, documented JSON schema (pydantic).

``BenchResult`` is what ``--json`` writes and what ``edgefm report`` reads. Compatibility rule:
``schema_version`` is an integer that changes only when a field is removed, renamed or changes meaning;
adding an optional field keeps the version. Readers refuse a version they do not know.
``python -m edgefm.bench.schema`` prints the JSON Schema (every field carries its description)."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefm.errors import ConfigError

SCHEMA_NAME = "edgefm.bench"
SCHEMA_VERSION = 1
#: Raw per-run latencies kept in the JSON (for distribution plots); more runs are thinned evenly.
MAX_SAMPLES_KEPT = 1000

Role = Literal["target", "fp32-reference", "torch-eager", "peer"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyStats(_Model):
    """Wall-clock time of one inference call (one batch), warm-up runs excluded; milliseconds."""

    runs: int = Field(description="Timed runs (warm-up excluded)")
    warmup: int = Field(description="Untimed warm-up runs before the timed ones")
    min: float = Field(description="Fastest run, ms")
    mean: float = Field(description="Mean, ms")
    p50: float = Field(description="Median, ms (linear interpolation between ranks)")
    p90: float = Field(description="90th percentile, ms (MLPerf SingleStream's figure)")
    p99: float = Field(description="99th percentile, ms")
    max: float = Field(description="Slowest run, ms")
    std: float = Field(description="Standard deviation (population), ms")
    throughput: float = Field(description="Samples per second: batch x runs / total timed seconds, one stream")
    total_s: float = Field(description="Wall time of all timed runs together, s")
    cpu_ms: Optional[float] = Field(None, description="CPU time of the process (all threads) per call, ms. Unlike "
                                                      "wall time it barely moves when other work shares the CPU")
    cpu_util: Optional[float] = Field(None, description="Cores kept busy on average during the timed runs (CPU time "
                                                        "/ wall time); well below the threads asked for means the "
                                                        "CPU was shared or the runtime waited")


class MemoryStats(_Model):
    """Resident memory of the process that made this measurement alone (one subprocess per measurement,
    holding one runtime). Read from the kernel (``VmHWM``/``VmRSS`` in /proc/self/status)."""

    peak_rss_mb: float = Field(
        description="Peak resident set size of the process that loaded the model and ran it (load, first call, "
                    "warm-up and timed runs at this batch), MiB. /usr/bin/time -v reports the same figure as "
                    "'Maximum resident set size' for the same command")
    idle_rss_mb: float = Field(description="RSS before the model was loaded (interpreter + runtime libraries), MiB; "
                                           "peak_rss_mb - idle_rss_mb is what the model itself costs")
    load_peak_rss_mb: Optional[float] = Field(None, description="Peak RSS up to the end of loading and the first "
                                                                "call, MiB (above it, inference raised the peak)")
    loaded_rss_mb: float = Field(description="RSS after loading and the first call, MiB")
    run_rss_mb: Optional[float] = Field(None, description="RSS after the timed runs, MiB")


class Accuracy(_Model):
    """Quality on the eval data: against labels where the data has them, and against the fp32 reference."""

    basis: Literal["labels", "reference", "none"] = Field(
        description="labels: top1/top5 are real accuracy; reference: only fidelity to fp32 outputs")
    samples: int = Field(description="Eval samples used")
    top1: Optional[float] = Field(None, description="Top-1 accuracy in [0, 1] (labels)")
    top5: Optional[float] = Field(None, description="Top-5 accuracy in [0, 1] (labels, more than 5 classes)")
    fp32_top1: Optional[float] = Field(None, description="Top-1 of the fp32 reference outputs on the same data")
    fidelity: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per output vs the fp32 reference: the accuracy contract's figures for the output's kind "
                    "(edgefm.contract.judge; e.g. top1_agreement, prob_cosine, cosine, max_abs)")
    contract_ok: Optional[bool] = Field(None, description="Whether the contract's gates hold on this data (a bundle "
                                                          "target: its recorded contract)")
    contract_failures: list[str] = Field(default_factory=list, description="The gates that failed, one line each")

    def headline(self) -> tuple[str, Optional[float]]:
        """(metric name, value) for tables and the Pareto plot: top1 with labels, else mean cosine."""
        if self.top1 is not None:
            return "top1", self.top1
        cos = [m["cosine"] for m in self.fidelity.values() if "cosine" in m]
        return ("cosine", min(cos)) if cos else ("none", None)


class Energy(_Model):
    """Energy from the board's power monitor (Jetson tegrastats), sampled during warm-up and timed runs."""

    source: str = Field(description="tegrastats rail: VDD_IN / POM_5V_IN (module input), or 'sum of rails'")
    mean_power_w: float = Field(description="Time-weighted mean board power during the runs, W")
    energy_per_inference_mj: float = Field(description="mean power x run time / calls, mJ per call (one batch)")
    energy_per_sample_mj: float = Field(description="energy_per_inference_mj / batch")
    samples: int = Field(description="Power readings taken")


class Measurement(_Model):
    """One thing measured (a bundle target, a baseline or a peer) at one batch size."""

    name: str = Field(description="Row label: the target name, fp32-onnx, torch-eager, or a peer's name")
    role: Role = Field(description="target (from the bundle), fp32-reference (the bundle's fp32 ONNX in "
                                   "ONNX Runtime), torch-eager (the source model), or peer (another tool's output)")
    backend: str = Field(description="Runtime: onnxruntime, openvino, tflite, tensorrt, torch")
    precision: str = Field(description="int8, fp16, bf16, fp32 … as built")
    device: str = Field("cpu", description="Device inside the runtime")
    batch: int = Field(description="Samples per inference call")
    threads: Optional[int] = Field(None, description="Intra-op threads asked for (None: the runtime's default)")
    artifact: Optional[str] = Field(None, description="Main file, relative to the bundle where it is in one")
    size_bytes: Optional[int] = Field(None, description="Bytes on disk of every file the artifact needs")
    load_s: float = Field(description="Load/compile time until the first call can be made, s (includes "
                                      "sha256 verification for bundle targets)")
    cold_ms: float = Field(description="The first inference after loading (not part of the timed runs), ms")
    latency: LatencyStats = Field(description="Timed runs at this batch size")
    memory: MemoryStats = Field(description="Resident memory of this measurement's process")
    accuracy: Optional[Accuracy] = Field(None, description="Computed once per subject, in its own process (the "
                                                           "same for every batch)")
    energy: Optional[Energy] = Field(None, description="Energy per inference where a power monitor exists (Jetson)")
    fp32_baseline: Optional[str] = Field(
        None, description="Name of the fp32 measurement the speedup is against (same backend's fp32 target "
                          "when measured, else the bundle's fp32 ONNX in ONNX Runtime)")
    speedup_vs_fp32: Optional[float] = Field(None, description="fp32 baseline p50 / this p50, same batch")
    speedup_vs_torch: Optional[float] = Field(None, description="torch eager p50 / this p50, same batch")
    runtime_versions: dict[str, str] = Field(default_factory=dict, description="Runtime versions it ran on")
    settings: dict[str, Any] = Field(default_factory=dict, description="Runtime settings used (hints, providers …)")
    latencies_ms: list[float] = Field(default_factory=list,
                                      description=f"Timed runs in order, ms (at most {MAX_SAMPLES_KEPT}, "
                                                  "evenly thinned beyond)")
    notes: list[str] = Field(default_factory=list, description="Anything a reader should know about this row")


class Skipped(_Model):
    """Something that was asked for or would have been measured, and why it was not."""

    name: str = Field(description="What was not measured")
    reason: str = Field(description="Why, in one line")


class JetsonInfo(_Model):
    model: Optional[str] = Field(None, description="/proc/device-tree/model")
    l4t: Optional[str] = Field(None, description="/etc/nv_tegra_release first line")
    power_mode: Optional[str] = Field(None, description="nvpmodel -q")
    clocks_mhz: dict[str, float] = Field(default_factory=dict, description="Current CPU and GPU clocks, MHz")
    clocks_locked: Optional[bool] = Field(None, description="Every clock at its maximum (jetson_clocks): only then "
                                                            "are results comparable across runs")


class MachineInfo(_Model):
    """Where the measurement ran."""

    id: str = Field(description="Short stable name for file paths: arch-cpu-cores (EDGEFM_MACHINE_ID overrides)")
    arch: str = Field(description="platform.machine()")
    cpu_model: str = Field(description="/proc/cpuinfo model name (or the board model on Arm)")
    cpu_flags: list[str] = Field(default_factory=list,
                                 description="Inference-relevant CPU flags present (avx2, avx512_vnni, amx_int8, "
                                             "asimddp, i8mm …)")
    logical_cores: int = Field(description="os.cpu_count()")
    physical_cores: Optional[int] = Field(None, description="Physical cores (psutil)")
    memory_gb: float = Field(description="Total RAM, GiB")
    os: str = Field(description="platform.platform()")
    python: str = Field(description="Python version")
    runtime_versions: dict[str, str] = Field(default_factory=dict,
                                             description="Installed runtimes and numeric libraries")
    jetson: Optional[JetsonInfo] = Field(None, description="Power mode and clocks on an NVIDIA Jetson, else None")
    load_avg_1m: Optional[float] = Field(None, description="1-minute load average when the run started; above "
                                                           "logical_cores the CPU was shared and latencies inflated")


class BundleInfo(_Model):
    path: str = Field(description="Bundle folder as given")
    model: str = Field(description="Short label of the model (the source's name)")
    family: str = Field(description="cnn, rnn, transformer or other")
    task: str = Field(description="The model's task (ModelSpec.task)")
    arch: Optional[str] = Field(None, description="Architecture name (ModelSpec.arch)")
    source: Optional[str] = Field(None, description="Checkpoint the bundle was made from")
    created: Optional[str] = Field(None, description="When the bundle was written (ISO 8601)")


class Settings(_Model):
    """How the run was configured."""

    batches: list[int] = Field(description="Batch sizes measured")
    threads: Optional[int] = Field(description="Intra-op threads asked for (None: each runtime's default)")
    warmup: int = Field(description="Untimed runs before timing")
    runs: Optional[int] = Field(description="Fixed number of timed runs, or None when time-bound")
    seconds: Optional[float] = Field(description="Time budget of the timed runs per measurement, s")
    min_runs: int = Field(description="Timed runs at least, whatever the time budget")
    eval: Optional[str] = Field(description="Eval data file used")
    eval_samples: int = Field(description="Eval samples the accuracy figures are over")


class BenchResult(_Model):
    """Everything one ``edgefm bench`` run (or one benchmarks/ suite run) measured."""

    schema_name: Literal["edgefm.bench"] = Field(SCHEMA_NAME, alias="schema", description="Always edgefm.bench")
    schema_version: int = Field(SCHEMA_VERSION, description="Changes only when a field is removed, renamed or "
                                                            "changes meaning")
    edgefm_version: str = Field(description="edgefm version that measured")
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         description="When the run ended (UTC, ISO 8601)")
    machine: MachineInfo = Field(description="Where it ran")
    bundle: Optional[BundleInfo] = Field(None, description="The bundle measured; None for suite results")
    settings: Settings = Field(description="How it was measured")
    measurements: list[Measurement] = Field(default_factory=list, description="One per subject and batch size")
    skipped: list[Skipped] = Field(default_factory=list, description="What was not measured, and why")
    wall_s: float = Field(0.0, description="Wall time of the whole run, s")
    device_name: Optional[str] = Field(None, description="Inventory name of the board it ran on (edgefm bench "
                                                         "--device/--fleet, over SSH); None when run locally")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, by_alias=True)


def read_result(path: Path) -> BenchResult:
    """Read and validate a result JSON; errors name the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"bench result {path}: cannot be read ({e.strerror})") from None
    except ValueError as e:
        raise ConfigError(f"bench result {path}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        raise ConfigError(f"bench result {path}: not an edgefm bench result (no \"schema\": \"{SCHEMA_NAME}\")")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(f"bench result {path}: schema_version {data.get('schema_version')} is not the one this "
                          f"edgefm reads ({SCHEMA_VERSION}); use the edgefm version that wrote it")
    try:
        return BenchResult.model_validate(data)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()[:3])
        raise ConfigError(f"bench result {path}: does not fit the schema ({errs})") from None


def json_schema() -> dict[str, Any]:
    return BenchResult.model_json_schema(by_alias=True)


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2))
