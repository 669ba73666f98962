"""Measure what one MobileNetV4 inference costs on this CPU, and write it as a twin profile.

The twin reads a model and a box only through a calibration profile
(``ecrl.twin.profile``). This module produces one for the local CPU: ONNX Runtime batch
execution times, the KServe-v2 HTTP/JSON encode and decode costs of one image, the memory
an inference session holds, and a description of the machine. Everything returned is
plain data; ``write_profile`` turns it into YAML whose every figure says whether it was
measured here (and how) or assumed (and why).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from ecrl import serving
from ecrl.calibrate.mobilenetv4 import build_mobilenetv4_conv_small, count_macs, count_params
from ecrl.errors import ConfigError, Permanent
from ecrl.onnx_export import export_graph
from ecrl.twin.profile import Profile, load_profile

MODEL_NAME = "mobilenetv4_conv_small"
IMAGE_SHAPE = (3, 224, 224)
INPUT_NAME = serving.INPUT_NAME
OUTPUT_NAME = serving.OUTPUT_NAME
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
OPSET = 17  # ONNX opset 17: LayerNorm-era ops, supported by every ORT >= 1.14

Timer = Callable[[], float]


@dataclass(frozen=True)
class TimingStats:
    """Summary of repeated wall-clock timings of one operation, in seconds."""

    median_s: float
    p95_s: float
    mean_s: float
    std_s: float
    samples: int

    @classmethod
    def from_samples(cls, samples_s: Sequence[float]) -> TimingStats:
        """Summarise raw timings (sample std; 0 for a single sample)."""
        values = np.asarray(samples_s, dtype=float)
        if values.size == 0:
            raise ValueError("samples_s: needs at least one timing")
        return cls(
            median_s=float(np.median(values)),
            p95_s=float(np.percentile(values, 95)),
            mean_s=float(values.mean()),
            std_s=float(values.std(ddof=1)) if values.size > 1 else 0.0,
            samples=int(values.size),
        )


@dataclass(frozen=True)
class JsonPathTiming:
    """KServe-v2 HTTP/JSON cost of one FP32 image: client encode and server decode."""

    encode: TimingStats
    """Client side: tensor → JSON-ready list (tritonclient's way) → ``json.dumps``."""
    decode: TimingStats
    """Server side: ``json.loads`` → ``np.asarray(float32)`` → reshape."""
    body_bytes: int
    tensor_bytes: int


@dataclass(frozen=True)
class SessionMemory:
    """Host memory and load time of one ONNX Runtime CPU session (RSS deltas, noisy)."""

    load_s: float
    """Wall time to create the InferenceSession from the ONNX file."""
    session_bytes: int
    """RSS growth from creating the session and running one batch-1 inference."""
    per_batch_item_bytes: int
    """RSS growth per extra image when the largest batch runs (arena growth)."""


@dataclass(frozen=True)
class MachineInfo:
    """What the measurements ran on, so a profile can be traced to its box."""

    cpu_model: str
    logical_cpus: int
    usable_cpus: int
    ram_bytes: int
    python_version: str
    torch_version: str
    onnxruntime_version: str
    date: str
    """ISO-8601 UTC timestamp of the start of the measurement."""
    load_avg_1m: float
    """1-minute load average before measuring: other work on the box skews every timing."""


@dataclass(frozen=True)
class Measurements:
    """Everything ``measure_local_cpu`` measured, with the settings that produced it."""

    model_name: str
    params: int
    macs: int
    input_shape: tuple[int, ...]
    onnx_bytes: int
    opset: int
    batch_sizes: tuple[int, ...]
    exec_stats: tuple[TimingStats, ...]
    """ORT ``session.run`` wall time per batch size (same order as batch_sizes)."""
    json_path: JsonPathTiming
    memory: SessionMemory
    threads: int
    repeats: int
    warmup: int
    seed: int
    machine: MachineInfo


def export_onnx(model: nn.Module, path: str | Path, opset: int = OPSET) -> Path:
    """Export ``model`` to ONNX with a dynamic batch axis (input ``input``, output ``logits``).

    Uses the TorchScript exporter: the default dynamo exporter needs ``onnxscript``, which
    is not a project dependency. Its two DeprecationWarnings are silenced for this call only.
    """
    out = Path(path)
    was_training = model.training
    model.eval()
    try:
        batch_axis = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        example = (torch.zeros(1, *IMAGE_SHAPE),)
        export_graph(model, example, out, [INPUT_NAME], [OUTPUT_NAME], batch_axis, opset)
    finally:
        model.train(was_training)
    return out


def open_session(path: str | Path, threads: int) -> ort.InferenceSession:
    """CPU-EP session with ``threads`` intra-op threads, one inter-op thread, full graph opts."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: library code stays quiet
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fixed_input(batch: int, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal FP32 images of shape (batch, 3, 224, 224)."""
    return np.random.default_rng(seed).standard_normal((batch, *IMAGE_SHAPE), dtype=np.float32)


def time_onnxruntime(
    path: str | Path,
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    threads: int,
    *,
    seed: int = 0,
    progress: bool = False,
    timer: Timer = time.perf_counter,
) -> dict[int, TimingStats]:
    """Wall time of ``session.run`` per batch size (median, p95, …), one shared session.

    Warm-up runs per batch size let ORT size its arena before timing starts.
    """
    session = open_session(path, threads)
    stats: dict[int, TimingStats] = {}
    total = len(batch_sizes) * (warmup + repeats)
    with tqdm(total=total, desc="onnxruntime", file=sys.stderr, disable=not progress) as bar:
        for batch in batch_sizes:
            feed = {INPUT_NAME: fixed_input(batch, seed)}
            for _ in range(warmup):
                session.run(None, feed)
                bar.update()
            samples = []
            for _ in range(repeats):
                start = timer()
                session.run(None, feed)
                samples.append(timer() - start)
                bar.update()
            stats[batch] = TimingStats.from_samples(samples)
    return stats


def encode_kserve_json(tensor: np.ndarray) -> str:
    """KServe-v2 JSON request body, built as tritonclient does with ``binary_data=False``.

    tritonclient ``InferInput.set_data_from_numpy`` converts element by element
    (``[val.item() for val in tensor.flatten()]``), then ``json.dumps`` the request.
    """
    data = [val.item() for val in tensor.flatten()]
    request = {
        "inputs": [
            {"name": INPUT_NAME, "shape": list(tensor.shape), "datatype": "FP32", "data": data}
        ]
    }
    return json.dumps(request)


def decode_kserve_json(body: str) -> np.ndarray:
    """The FP32 tensor of the first input of a KServe-v2 JSON request body."""
    request = json.loads(body)
    first = request["inputs"][0]
    return np.asarray(first["data"], dtype=np.float32).reshape(first["shape"])


def time_kserve_json(
    repeats: int,
    *,
    warmup: int = 2,
    seed: int = 0,
    progress: bool = False,
    timer: Timer = time.perf_counter,
) -> JsonPathTiming:
    """Time the HTTP/JSON encode (client) and decode (server) of one 1×3×224×224 FP32 image."""
    tensor = fixed_input(1, seed)
    body = encode_kserve_json(tensor)
    encode_s: list[float] = []
    decode_s: list[float] = []
    runs = warmup + repeats
    with tqdm(total=runs, desc="kserve json", file=sys.stderr, disable=not progress) as bar:
        for i in range(runs):
            start = timer()
            body = encode_kserve_json(tensor)
            encoded = timer()
            decode_kserve_json(body)
            done = timer()
            if i >= warmup:
                encode_s.append(encoded - start)
                decode_s.append(done - encoded)
            bar.update()
    return JsonPathTiming(
        encode=TimingStats.from_samples(encode_s),
        decode=TimingStats.from_samples(decode_s),
        body_bytes=len(body.encode()),
        tensor_bytes=tensor.nbytes,
    )


def _proc_field(path: str, key: str) -> str | None:
    """First ``key: value`` of a /proc text file, or None where it is absent (non-Linux)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return None
    pairs = (ln.split(":", 1) for ln in lines if ":" in ln)
    return next((value.strip() for name, value in pairs if name.strip() == key), None)


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc only: memory figures need it)."""
    vm_rss = _proc_field("/proc/self/status", "VmRSS")
    if vm_rss is None:
        raise Permanent("measuring session memory needs Linux /proc/self/status (VmRSS)")
    return int(vm_rss.split()[0]) * 1024


def measure_session_memory(
    path: str | Path, max_batch: int, threads: int, timer: Timer = time.perf_counter
) -> SessionMemory:
    """Load time and RSS growth of a fresh session: at batch 1, then per image up to max_batch.

    RSS deltas are what the pod's memory limit sees; they include allocator slack, so treat
    them as estimates (run before other sessions so freed memory is not reused).
    """
    rss_before = _rss_bytes()
    start = timer()
    session = open_session(path, threads)
    load_s = timer() - start
    session.run(None, {INPUT_NAME: fixed_input(1)})
    rss_batch1 = _rss_bytes()
    session.run(None, {INPUT_NAME: fixed_input(max_batch)})
    rss_max = _rss_bytes()
    per_item = (rss_max - rss_batch1) // max(1, max_batch - 1)
    return SessionMemory(load_s, max(0, rss_batch1 - rss_before), max(0, per_item))


def describe_machine(clock: Callable[[], dt.datetime]) -> MachineInfo:
    """CPU model, core counts, RAM and library versions of this machine.

    Off Linux the CPU model falls back to ``platform.processor()`` and RAM reads 0 (unknown).
    """
    mem_total = _proc_field("/proc/meminfo", "MemTotal")
    cpu_model = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    family, model = (
        _proc_field("/proc/cpuinfo", "cpu family"),
        _proc_field("/proc/cpuinfo", "model"),
    )
    if family and model:  # VMs often mask the model name; family/model still identify the core
        cpu_model = f"{cpu_model} (family {family}, model {model})"
    return MachineInfo(
        cpu_model=cpu_model,
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=len(os.sched_getaffinity(0)),
        ram_bytes=int(mem_total.split()[0]) * 1024 if mem_total else 0,
        python_version=platform.python_version(),
        torch_version=torch.__version__,
        onnxruntime_version=ort.__version__,
        date=clock().isoformat(timespec="seconds"),
        load_avg_1m=os.getloadavg()[0],
    )


def _check_settings(batch_sizes: Sequence[int], **counts: int) -> tuple[int, ...]:
    """Reject settings the twin cannot use: its ComputeTable needs >= 2 increasing sizes from 1."""
    sizes = tuple(batch_sizes)
    if len(sizes) < 2 or sizes[0] != 1 or any(b2 <= b1 for b1, b2 in itertools.pairwise(sizes)):
        problem = f"{sizes} must be >= 2 strictly increasing sizes starting at 1"
        raise ConfigError("measure_local_cpu", "batch_sizes", problem)
    for name, value in counts.items():
        lowest = 0 if name == "warmup" else 1
        if value < lowest:
            raise ConfigError("measure_local_cpu", name, f"{value} is outside [{lowest}, inf]")
    return sizes


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def measure_local_cpu(
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    *,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    json_repeats: int = 20,
    seed: int = 0,
    progress: bool = True,
    workdir: str | Path | None = None,
    clock: Callable[[], dt.datetime] = _utc_now,
) -> Measurements:
    """Build MobileNetV4-Conv-Small, export it, and measure it on this CPU with ONNX Runtime.

    ``threads`` defaults to the CPUs this process may use. The ONNX file goes to
    ``workdir`` (kept) or to a temporary directory (deleted). ``seed`` drives the weights
    and every input. Progress bars go to stderr when ``progress`` is true.
    """
    n_threads = threads if threads is not None else len(os.sched_getaffinity(0))
    counts = {"repeats": repeats, "json_repeats": json_repeats, "warmup": warmup}
    sizes = _check_settings(batch_sizes, threads=n_threads, **counts)
    machine = describe_machine(clock)  # before any work, so the load average is the box's own
    model = build_mobilenetv4_conv_small(seed=seed)
    with tempfile.TemporaryDirectory(prefix="ecrl-calibrate-") as tmp:
        onnx_path = export_onnx(model, Path(workdir or tmp) / f"{MODEL_NAME}.onnx")
        memory = measure_session_memory(onnx_path, sizes[-1], n_threads)
        exec_by_batch = time_onnxruntime(
            onnx_path, sizes, repeats, warmup, n_threads, seed=seed, progress=progress
        )
        onnx_bytes = onnx_path.stat().st_size
    return Measurements(
        model_name=MODEL_NAME,
        params=count_params(model),
        macs=count_macs(model, IMAGE_SHAPE),
        input_shape=IMAGE_SHAPE,
        onnx_bytes=onnx_bytes,
        opset=OPSET,
        batch_sizes=sizes,
        exec_stats=tuple(exec_by_batch[b] for b in sizes),
        json_path=time_kserve_json(json_repeats, seed=seed, progress=progress),
        memory=memory,
        threads=n_threads,
        repeats=repeats,
        warmup=warmup,
        seed=seed,
        machine=machine,
    )


@dataclass(frozen=True)
class CpuAssumptions:
    """Figures a CPU "device" profile needs but a VM cannot measure (no power/thermal sensors)."""

    ram_budget_ratio: float = 0.5
    """Share of physical RAM left to inference pods (the rest: OS, kubelet, load generator)."""
    power_max_w_per_cpu: float = 3.75
    """One core's share of package TDP at full load; the source is ``power_source``."""
    power_source: str = "Zen 4 EPYC 9654: 360 W TDP / 96 cores, AMD spec"
    power_idle_ratio: float = 0.25
    """Idle draw as a share of full-load draw."""


_PROFILE_TEMPLATE = """\
# Local CPU profile: {m.model_name} on ONNX Runtime's CPU execution provider.
# Written by ecrl.calibrate.measure (measure_local_cpu + write_profile) on {mc.date}:
#   CPU {mc.cpu_model!r}, {mc.usable_cpus} usable of {mc.logical_cpus} logical CPUs, {ram_gib} GiB;
#   Python {mc.python_version}, torch {mc.torch_version}, onnxruntime {mc.onnxruntime_version};
#   1-minute load average before measuring: {mc.load_avg_1m:.2f}.
#   Model: plain-torch rebuild (ecrl.calibrate.mobilenetv4), random init, seed {m.seed};
#   ONNX opset {m.opset}, {m.onnx_bytes} bytes; {m.repeats} timed runs after {m.warmup} warm-up
#   runs per batch size, {m.threads} intra-op threads.
# "measured" = by that command on this machine; "assumed" = not measurable here, reason given.
# The gpu section describes the CPU that executes the model. On this box batch execution
# and JSON decode share the same cores; the twin treats them as separate resources.
name: {name_q}
description: {description_q}
model:
  name: {m.model_name}
  params_m: {params_m}  # measured: counted on the rebuilt model ({m.params} params; paper 3.8 M)
  gmacs: {gmacs}  # measured: Conv2d/Linear forward hooks, 224 px ({m.macs} MACs; paper 0.2 G)
  input_shape: {input_shape}  # measured: the exported model's input, per image
gpu:
  name: {device_q}  # measured: /proc/cpuinfo model name (family, model), threads used
  # assumed: {a.ram_budget_ratio:.0%} of the measured MemTotal ({mc.ram_bytes} B) is left to pods
  vram_bytes: {ram_budget}
  power_idle_w: {power_idle}  # assumed: {a.power_idle_ratio:.0%} of power_max_w (no RAPL in a VM)
  power_max_w: {power_max}  # assumed: {a.power_max_w_per_cpu} W per used core ({a.power_source})
  temp_idle_c: 35.0  # assumed: profile default (no thermal sensor visible in this VM)
  temp_max_c: 83.0  # assumed: profile default (no thermal sensor visible in this VM)
  background_util_ratio: 0.0  # assumed: the measured cores run nothing else
  timeslice_overhead_ratio: 0.05  # assumed: as the reference profile (OS context switches)
compute:
  batch_sizes: {batch_sizes}  # measured: the batch sizes timed below
  # session.run wall time per batch: ORT {mc.onnxruntime_version} CPU EP, fixed-seed input.
  exec_s:
{exec_rows}
server:
  # measured: tritonclient-style element list + json.dumps of one 1x3x224x224 FP32 body,
  # {enc_how}; the loopback network is not included
  client_overhead_s: {client_overhead}
  # measured: json.loads + np.asarray(float32) of the same body, {dec_how}
  # (a Python stand-in for Triton's C++ decode)
  cpu_s_per_request: {cpu_per_request}
  cpu_idle_cores: 0.05  # assumed: idle server, as the reference profile
  host_s_per_batch: 0.0  # by construction: no device copy on the CPU EP; binding is in exec_s
  service_cv: {service_cv}  # measured: sqrt(sum var) / sum mean of encode, decode, batch-1 exec
  memory_base_bytes: 1288490188  # assumed: 1.2 GiB server host side, as the reference profile
  memory_per_instance_bytes: {mem.session_bytes}  # measured: RSS growth, session + batch-1 run
  # measured: JSON body ({js.body_bytes} B) + decoded tensor ({js.tensor_bytes} B)
  memory_per_inflight_bytes: {inflight}
  vram_context_bytes: 0  # by construction: the CPU EP has no device context
  vram_per_instance_bytes: {mem.session_bytes}  # measured: same RSS growth (device memory = RAM)
  # measured: RSS growth per image from batch 1 to batch {max_batch}
  vram_per_batch_item_bytes: {mem.per_batch_item_bytes}
  startup_mean_s: 15.0  # assumed: as the reference profile (measured session load {load_s} s)
  startup_cv: 0.2  # assumed: as the reference profile
  reload_s: 2.0  # assumed: as the reference profile; measured session load is a lower bound
  oom_restart_s: 10.0  # kubelet CrashLoopBackOff initial back-off is 10 s (kubelet default)
"""


def _num(x: float, digits: int = 4) -> str:
    """Fixed-notation float with ``digits`` significant digits (PyYAML reads it as a float)."""
    if x == 0:
        return "0.0"
    decimals = max(1, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def _how(stats: TimingStats) -> str:
    return f"median of {stats.samples} runs (p95 {stats.p95_s * 1e3:.2f} ms)"


def _exec_rows(m: Measurements) -> str:
    """One YAML list item per batch size; medians raised where needed to stay non-decreasing."""
    table = np.maximum.accumulate([s.median_s for s in m.exec_stats])
    rows = []
    for batch, stats, value in zip(m.batch_sizes, m.exec_stats, table, strict=True):
        note = f"; raised from {_num(stats.median_s)} (noise)" if value > stats.median_s else ""
        rows.append(f"    - {_num(value)}  # batch {batch}: measured, {_how(stats)}{note}")
    return "\n".join(rows)


def profile_yaml(
    m: Measurements, name: str = "local-cpu-mobilenetv4", assumptions: CpuAssumptions | None = None
) -> str:
    """Profile YAML text for ``m`` in the ``ecrl.twin.profile`` format, a comment per figure."""
    a = assumptions or CpuAssumptions()
    mc, js, mem = m.machine, m.json_path, m.memory
    b1, enc, dec = m.exec_stats[0], js.encode, js.decode
    latency_std = math.sqrt(b1.std_s**2 + enc.std_s**2 + dec.std_s**2)
    power_max = a.power_max_w_per_cpu * m.threads
    description = (
        f"{m.model_name} on ORT CPU EP, {mc.cpu_model}, {m.threads} threads "
        f"(measured {mc.date[:10]}; assumed figures marked)"
    )
    return _PROFILE_TEMPLATE.format(
        m=m,
        mc=mc,
        js=js,
        mem=mem,
        a=a,
        ram_gib=f"{mc.ram_bytes / 2**30:.1f}",
        name_q=json.dumps(name),
        description_q=json.dumps(description),
        params_m=_num(m.params / 1e6),
        gmacs=_num(m.macs / 1e9),
        input_shape=list(m.input_shape),
        device_q=json.dumps(f"{mc.cpu_model}, {m.threads} threads"),
        ram_budget=int(mc.ram_bytes * a.ram_budget_ratio),
        power_idle=_num(power_max * a.power_idle_ratio),
        power_max=_num(power_max),
        batch_sizes=list(m.batch_sizes),
        exec_rows=_exec_rows(m),
        enc_how=_how(enc),
        client_overhead=_num(enc.median_s),
        dec_how=_how(dec),
        cpu_per_request=_num(dec.median_s),
        service_cv=_num(latency_std / (b1.mean_s + enc.mean_s + dec.mean_s), 3),
        inflight=js.body_bytes + js.tensor_bytes,
        max_batch=m.batch_sizes[-1],
        load_s=f"{mem.load_s:.3f}",
    )


def write_profile(
    measurements: Measurements,
    out_path: str | Path,
    name: str = "local-cpu-mobilenetv4",
    assumptions: CpuAssumptions | None = None,
) -> Profile:
    """Write the profile YAML for ``measurements``, then load it back to prove it is valid.

    Returns the loaded Profile; a figure the twin would reject raises ConfigError here.
    """
    out = Path(out_path)
    out.write_text(profile_yaml(measurements, name, assumptions))
    return load_profile(str(out))
