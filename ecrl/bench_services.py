"""The services' benchmarks (issue 5): Decide over gRPC, the extender's /prioritize, the
collector tick.

Each ``bench_*`` function starts the real component(s) on free loopback ports — the policy
server and the extender as their own processes through their command lines, the collector
in-process against a real Prometheus that scrapes the testbed — measures, stops them and
returns its figures; :func:`run` prints them with the ratio to each target. The extender and
collector need the testbed (``make testbed-build``); without it they say so and print no
figure. Every testbed process belongs to the cluster :data:`CLUSTER`, torn down at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.client import HTTPConnection
from pathlib import Path

import numpy as np

import services  # noqa: F401  (first: the clients here use the services' gRPC settings)

REPO = Path(__file__).resolve().parents[1]
CLUSTER = "ecrl-bench"
"""The only testbed cluster these benchmarks start (and always remove)."""

DECIDE_P99_MS = 1.5
"""Issue 5: policy ``Decide`` over gRPC on loopback, p99 ≤ 1.5 ms ..."""
DECIDE_RATE = 1500.0
"""... and ≥ 1500 decisions/s."""
PRIORITIZE_P99_MS = 3.0
"""Issue 5: the extender's ``/prioritize`` for 100 nodes, p99 ≤ 3 ms."""
DECIDE_IN_FLIGHT = 32
"""Concurrent calls of the asyncio client (the primary throughput figure): one channel, like a
controller or extender multiplexing its requests over one HTTP/2 connection."""
TICK_MS = 50.0
"""Issue 5: one collector tick (every PromQL query + Triton's config → state) ≤ 50 ms."""
EXTENDER_NODES = 100
SETTLE_S = 20.0
"""Wait after registering the 99 extra kwok nodes: their first status updates, taints and
leases keep the apiserver (same 2 cores) busy for a while, which showed as extender p99."""
TESTBED_BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "kwokctl",
    "metrics-server",
    "kube-state-metrics",
)


class Skipped(Exception):
    """A benchmark could not run here; the message says why and what to do."""


# ------------------------------------------------------------------------ pure helpers
@dataclass(frozen=True)
class Latency:
    """Percentiles of one series of timings, in milliseconds."""

    p50_ms: float
    p99_ms: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        if not len(seconds):
            raise ValueError("no timings")
        p50, p99 = np.percentile(np.asarray(seconds, dtype=float) * 1e3, [50, 99])
        return cls(float(p50), float(p99), len(seconds))

    @classmethod
    def median_of(cls, trials: Sequence[Latency]) -> Latency:
        """Median over trials of each percentile (a noisy trial does not decide alone)."""
        return cls(
            statistics.median(t.p50_ms for t in trials),
            statistics.median(t.p99_ms for t in trials),
            sum(t.n for t in trials),
        )


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    """``×0.41 of target, meets`` — the measured value over the target, and whether it meets."""
    ratio = value / target
    meets = ratio >= 1.0 if higher_is_better else ratio <= 1.0
    return f"×{ratio:.2f} of target, {'meets' if meets else 'MISSES'}"


def latency_line(what: str, lat: Latency, p99_target_ms: float | None = None) -> str:
    """One printed line: p50, p99 (and its ratio to the target) and the sample count."""
    line = f"{what}: p50 {lat.p50_ms:.2f} ms  p99 {lat.p99_ms:.2f} ms  (n={lat.n:,})"
    if p99_target_ms is not None:
        line += f"  p99 {verdict(lat.p99_ms, p99_target_ms)} (≤ {p99_target_ms:g} ms)"
    return line


def rate_line(
    what: str, rate: float, target: float | None = None, unit: str = "decisions/s"
) -> str:
    """One printed throughput line, with its ratio to the target when there is one."""
    line = f"{what}: {rate:,.0f} {unit}"
    if target is not None:
        line += f"  (≥ {target:,.0f}: {verdict(rate, target, higher_is_better=True)})"
    return line


def missing_testbed(cache: Path, k8s_version: str) -> str | None:
    """Why the testbed cannot start here (None: it can), without building anything."""
    from ecrl.testbed import monitoring

    bin_dir = cache / "testbed" / f"k8s-v{k8s_version}" / "bin"
    lacking = [b for b in TESTBED_BINARIES if not (bin_dir / b).exists()]
    if shutil.which("etcd") is None and not Path("/usr/bin/etcd").exists():
        lacking.append("etcd")
    if monitoring.prometheus_binary() is None:
        lacking.append("prometheus")
    if not lacking:
        return None
    return f"testbed binaries missing ({', '.join(lacking)}): run make testbed-build"


def node_manifests(n: int) -> dict:
    """A v1 List of ``n`` kwok GPU nodes like the reference box, of varied sizes."""
    import yaml

    box = yaml.safe_load((REPO / "deploy" / "testbed" / "nodes-reference-box.yaml").read_text())
    items = []
    for i in range(n):
        node = json.loads(json.dumps(box))
        name = f"bench-gpu-{i:03d}"
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        node["metadata"]["annotations"]["metrics.k8s.io/resource-metrics-path"] = (
            f"/metrics/nodes/{name}/metrics/resource"
        )
        res = {
            "cpu": str(8 + i % 9),
            "memory": f"{16 + 2 * (i % 8)}Gi",
            "nvidia.com/gpu": str(1 + i % 4),
            "pods": "110",
        }
        node["metadata"]["labels"]["nvidia.com/gpu.replicas"] = res["nvidia.com/gpu"]
        node["status"]["allocatable"] = res
        node["status"]["capacity"] = dict(res)
        del node["status"]["nodeInfo"]  # kwok fills it; a List is validated strictly
        items.append(node)
    return {"apiVersion": "v1", "kind": "List", "items": items}


def gpu_pod(name: str = "bench-pod") -> dict:
    """A pending pod asking for one time-sliced GPU slot, as the scheduler sends it."""
    limits = {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "labels": {"app.kubernetes.io/name": "mobilenetv4-triton"},
        },
        "spec": {
            "nodeName": "",
            "containers": [{"name": "triton", "resources": {"limits": limits, "requests": limits}}],
        },
        "status": {"phase": "Pending"},
    }


# ------------------------------------------------------------------------ processes
def _start(name: str, argv: list[str], cwd: Path = REPO):
    from ecrl.testbed import procs

    return procs.start(CLUSTER, name, argv, cwd=cwd)


def _stop(name: str) -> None:
    from ecrl.testbed import procs

    procs.stop(CLUSTER, name)


@dataclass(frozen=True)
class Pinning:
    """Disjoint CPUs for the server process and the benchmark's client, the way gRPC's own
    benchmark harness places them (``run_performance_tests.py`` gives server and client
    separate cores). Unpinned on this 2-vCPU VM, the two processes and their gRPC threads
    migrate between the CPUs: each hop starts on cold caches, which showed as ~0.2–0.3 ms of
    Decide p99 with the same code. A Kubernetes pod gets the same with the kubelet's static
    CPU manager (a Guaranteed pod with whole CPUs)."""

    server: tuple[int, ...]
    client: tuple[int, ...]

    def describe(self) -> str:
        return f"server on CPU {_cpus(self.server)}, client on CPU {_cpus(self.client)}"


def _cpus(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


def pinning() -> Pinning | None:
    """The last allowed CPU for the server, the others for the client; None where that is
    impossible (one CPU, or no ``taskset`` from util-linux to start the server with)."""
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None
    return Pinning(server=tuple(cpus[-1:]), client=tuple(cpus[:-1]))


@contextmanager
def client_on(cpus: Sequence[int] | None) -> Iterator[None]:
    """Run the calling thread (and the threads it starts) on ``cpus``; None = unchanged."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextmanager
def policy_server(
    port: int,
    log_level: str = "warning",
    cpus: Sequence[int] | None = None,
    name: str = "policy-server",
    root: Path = REPO,
    policy: str | None = None,
) -> Iterator[str]:
    """``python -m services.policy_server`` with the packaged policy and scorer (started on
    ``cpus`` with ``taskset`` when given: every thread of the server inherits them). ``name``
    tells side-by-side servers apart; ``root`` is the checkout whose server code runs (another
    worktree, for an A/B) and ``policy`` another ONNX policy file."""
    from services.policy_server.client import PolicyClient

    target = f"127.0.0.1:{port}"
    on_cpus = ["taskset", "-c", _cpus(cpus)] if cpus else []
    argv = [
        *on_cpus,
        sys.executable,
        "-m",
        "services.policy_server",
        "--listen",
        target,
        "--metrics-listen",
        "",
        "--reload-interval",
        "0",
        "--log-level",
        log_level,
    ]
    if policy is not None:
        argv += ["--policy", policy]
    proc = _start(name, argv, cwd=root)
    try:
        with PolicyClient(target, timeout_s=1.0) as client:
            deadline = time.monotonic() + 60
            while not client.serving():
                if not proc.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"policy server did not start:\n{proc.log_tail()}")
                time.sleep(0.2)
        yield target
    finally:
        _stop(name)


# ------------------------------------------------------------------------ Decide
def _twin_state() -> tuple[list[float], list[bool]]:
    """A real state and envelope mask: the reference box after a minute of load."""
    from ecrl.envelope import EnvelopeConfig, action_masks
    from ecrl.experiment.runner import resolve_profile
    from ecrl.schema import encode
    from ecrl.twin.observe import observation
    from ecrl.twin.spec import ClusterSpec
    from ecrl.twin.twin import Twin

    cluster = ClusterSpec()
    tw = Twin(cluster, resolve_profile(cluster.profile), seed=0)
    for _ in range(60):
        tw.step(80.0)
    obs = observation(tw)
    state = encode(obs)
    return [float(v) for v in state], [bool(m) for m in action_masks(obs, EnvelopeConfig())]


def _timed(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _decide_worker(target: str, duration_s: float, barrier, results) -> None:
    """One client process: warm up, wait for the others, decide in a loop for ``duration_s``."""
    from services.policy_server.client import PolicyClient

    state, mask = _twin_state()
    with PolicyClient(target, timeout_s=2.0) as client:
        for _ in range(200):
            client.decide(state, mask)
        barrier.wait(timeout=120)
        count, end = 0, time.perf_counter() + duration_s
        while time.perf_counter() < end:
            client.decide(state, mask)
            count += 1
    results.put(count)


def _rate_processes(target: str, processes: int, duration_s: float) -> float:
    ctx = multiprocessing.get_context("spawn")  # no fork after gRPC started threads
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_decide_worker, args=(target, duration_s, barrier, results))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    try:
        barrier.wait(timeout=120)
        total = sum(results.get(timeout=duration_s + 60) for _ in workers)
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
    return total / duration_s


async def _rate_aio(
    target: str, state: list[float], mask: list[bool], in_flight: int, duration_s: float
) -> float:
    """Decisions/s of one ``grpc.aio`` channel with ``in_flight`` calls outstanding; each call
    builds its request and converts the answer like :class:`PolicyClient` does."""
    import grpc

    from ecrl.v1 import policy_pb2_grpc
    from services.policy_server import convert
    from services.policy_server.results import Fallback

    async with grpc.aio.insecure_channel(target) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)

        async def decide():
            response = await stub.Decide(convert.decide_request(state, mask), timeout=2.0)
            return convert.decision_of(response)

        for _ in range(200):
            if (await decide()).fallback is not Fallback.NONE:
                raise RuntimeError("the policy server answered from its fallback, not the policy")
        count, end = 0, time.perf_counter() + duration_s

        async def loop() -> None:
            nonlocal count
            while time.perf_counter() < end:
                await decide()
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(in_flight)))
        return count / (time.perf_counter() - start)


def _rate_threads(client, state, mask, threads: int, duration_s: float) -> float:
    counts = [0] * threads
    start = threading.Barrier(threads + 1)

    def loop(i: int) -> None:
        start.wait()
        end = time.perf_counter() + duration_s
        while time.perf_counter() < end:
            client.decide(state, mask)
            counts[i] += 1

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    for t in pool:
        t.join()
    return sum(counts) / duration_s


@dataclass(frozen=True)
class DecideFigures:
    pinning: str
    """Where the server and the client ran (:meth:`Pinning.describe`), '' = unpinned."""
    client: Latency
    """Sequential, through :class:`services.policy_server.client.PolicyClient`."""
    raw_stub: Latency
    """Sequential, the generated stub with one prebuilt request (no client conversion)."""
    rate_aio: float
    """Primary throughput: one ``grpc.aio`` channel, :data:`DECIDE_IN_FLIGHT` calls in flight."""
    in_flight: int
    rate_threads: float
    threads: int
    rate_processes: float
    processes: int
    floor: Latency
    """Sequential ``grpc.health.v1`` Check on the same server: an empty call, what Python
    gRPC itself costs on this machine (a Decide cannot be faster)."""
    floor_rate: float
    """The same empty call's rate with the primary throughput method."""
    unpinned_client: Latency | None
    """The sequential figure again with both processes free to migrate (None: not pinned)."""
    unpinned_rate_aio: float | None
    """The primary throughput figure again, unpinned (None: not pinned)."""


async def _rate_aio_floor(target: str, in_flight: int, duration_s: float) -> float:
    """``grpc.health.v1`` Check calls/s with the same client method as :func:`_rate_aio`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for _ in range(200):
            await stub.Check(request, timeout=2.0)
        count, end = 0, time.perf_counter() + duration_s

        async def loop() -> None:
            nonlocal count
            while time.perf_counter() < end:
                await stub.Check(request, timeout=2.0)
                count += 1

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(in_flight)))
        return count / (time.perf_counter() - start)


def bench_decide(
    calls: int = 3000,
    trials: int = 3,
    threads: int = 4,
    processes: int = 2,
    duration_s: float = 3.0,
    in_flight: int = DECIDE_IN_FLIGHT,
    pin: Pinning | None = None,
) -> DecideFigures:
    """The policy server as its own process, the packaged ONNX policy, a twin state; with
    ``pin``, server and client on disjoint CPUs, then the two target figures unpinned."""
    state, mask = _twin_state()
    pinned = _decide_all(state, mask, calls, trials, threads, processes, duration_s, in_flight, pin)
    if pin is None:
        return pinned
    seq, rate = _decide_targets(state, mask, calls, trials, duration_s, in_flight)
    return replace(pinned, unpinned_client=seq, unpinned_rate_aio=rate)


def _decide_targets(
    state: list[float],
    mask: list[bool],
    calls: int,
    trials: int,
    duration_s: float,
    in_flight: int,
) -> tuple[Latency, float]:
    """The sequential latency and the primary throughput alone, nothing pinned."""
    from ecrl.testbed.procs import free_port
    from services.policy_server.client import PolicyClient

    with policy_server(free_port()) as target, PolicyClient(target, timeout_s=2.0) as client:
        seq, by_aio = _targets_of(client, target, state, mask, calls, trials, duration_s, in_flight)
    return Latency.median_of(seq), statistics.median(by_aio)


def _targets_of(
    client,
    target: str,
    state: list[float],
    mask: list[bool],
    calls: int,
    trials: int,
    duration_s: float,
    in_flight: int,
) -> tuple[list[Latency], list[float]]:
    """Warm up, then the trials of the two target figures against a running server: the
    sequential ``PolicyClient`` latency and the ``grpc.aio`` throughput."""
    for _ in range(500):
        client.decide(state, mask)
    seq = [Latency.of(_timed(lambda: client.decide(state, mask), calls)) for _ in range(trials)]
    by_aio = [
        asyncio.run(_rate_aio(target, state, mask, in_flight, duration_s)) for _ in range(trials)
    ]
    return seq, by_aio


def _decide_all(
    state: list[float],
    mask: list[bool],
    calls: int,
    trials: int,
    threads: int,
    processes: int,
    duration_s: float,
    in_flight: int,
    pin: Pinning | None,
) -> DecideFigures:
    from grpc_health.v1 import health_pb2

    from ecrl.schema import SCHEMA_HASH, SCHEMA_VERSION
    from ecrl.testbed.procs import free_port
    from ecrl.v1 import policy_pb2, state_pb2
    from services.policy_server.client import PolicyClient

    server_cpus = pin.server if pin else None
    with (
        client_on(pin.client if pin else None),
        policy_server(free_port(), cpus=server_cpus) as target,
        PolicyClient(target, timeout_s=2.0) as client,
    ):
        seq, by_aio = _targets_of(client, target, state, mask, calls, trials, duration_s, in_flight)
        request = policy_pb2.DecideRequest(
            state=state_pb2.StateVector(
                schema_version=SCHEMA_VERSION, schema_hash=SCHEMA_HASH, values=state
            ),
            action_mask=mask,
        )
        raw = [
            Latency.of(_timed(lambda: client.stub.Decide(request, timeout=2.0), calls))
            for _ in range(trials)
        ]
        by_threads = [
            _rate_threads(client, state, mask, threads, duration_s) for _ in range(trials)
        ]
        by_procs = [_rate_processes(target, processes, duration_s) for _ in range(trials)]
        check = health_pb2.HealthCheckRequest()
        floor = [
            Latency.of(_timed(lambda: client.health.Check(check, timeout=2.0), calls))
            for _ in range(trials)
        ]
        floor_rate = [
            asyncio.run(_rate_aio_floor(target, in_flight, duration_s)) for _ in range(trials)
        ]
    return DecideFigures(
        pin.describe() if pin else "",
        Latency.median_of(seq),
        Latency.median_of(raw),
        statistics.median(by_aio),
        in_flight,
        statistics.median(by_threads),
        threads,
        statistics.median(by_procs),
        processes,
        Latency.median_of(floor),
        statistics.median(floor_rate),
        None,
        None,
    )


# ------------------------------------------------------------------------ testbed
@contextmanager
def testbed() -> Iterator:
    """The cluster :data:`CLUSTER` (reference box), always removed afterwards."""
    from ecrl.testbed import cluster
    from ecrl.testbed.procs import free_port

    why = missing_testbed(cluster.CACHE, cluster.K8S_VERSION)
    if why is not None:
        raise Skipped(why)
    try:
        # the scheduler's extender URL points at a port nobody serves (ignorable: true), so
        # the benchmarked extender only answers the benchmark
        yield cluster.up(name=CLUSTER, extender_url=f"http://127.0.0.1:{free_port()}")
    finally:
        cluster.down(CLUSTER)


@dataclass(frozen=True)
class TickFigures:
    tick: Latency
    ticks_with_state: int
    missing_inputs: tuple[str, ...]
    requests_per_tick: int


def bench_collector(tb, ticks: int = 60, trials: int = 3, gap_s: float = 0.2) -> TickFigures:
    """Collector ticks in-process against the testbed's real Prometheus, which scrapes real
    kube-state-metrics, kwok's kubelet metrics and the emulator's Triton and DCGM series of the
    baseline Deployment (2 replicas); the model config is read from the emulator's Triton."""
    from ecrl.filesd import write_sd
    from ecrl.testbed import dataplane, monitoring, procs
    from ecrl.testbed.procs import free_port
    from services.collector.collector import Collector
    from services.collector.config import CollectorConfig
    from services.collector.sources import PrometheusSource, TritonSource

    sd = monitoring.sd_dir(tb.name)
    for job in ("triton", "dcgm"):
        write_sd(sd, job, [])
    mon = monitoring.up(
        tb, prom_port=free_port(), ksm_port=free_port(), ksm_telemetry_port=free_port()
    )
    plane = None
    source = None
    baseline = REPO / "deploy" / "baseline" / "mobilenetv4-triton.yaml"
    try:
        plane = dataplane.start_emulator(
            tb, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
        )
        tb.kubectl("apply", "-f", str(baseline))
        tb.kubectl("delete", "hpa", "mobilenetv4-triton", "--ignore-not-found")
        tb.kubectl("scale", "deployment", "mobilenetv4-triton", "--replicas=2")
        plane.wait_pods(2, timeout_s=90)
        cfg = CollectorConfig(
            prometheus_url=mon.prom_url,
            triton_url=plane.http_url,
            grpc_listen=None,
            http_listen=None,
        )
        source = PrometheusSource(cfg.prometheus_url, cfg.query_timeout_s, cfg.query_workers)
        triton = TritonSource(cfg.triton_url, cfg.model, cfg.query_timeout_s)
        collector = Collector(cfg, source, triton.read)
        quiet = logging.getLogger("ecrl.collector")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "tick stale" while the targets are being found
        # wait until every target is scraped and the rates have two samples each
        deadline = time.monotonic() + 120
        while True:
            result = collector.tick()
            if result.state is not None and "request_rate_rps" not in result.state.missing_inputs:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no complete state within 120 s: {result}")
            time.sleep(1.0)
        quiet.setLevel(level)
        lats, with_state, missing = [], 0, set()
        for _ in range(trials):
            durations = []
            for _ in range(ticks):
                time.sleep(gap_s)
                result = collector.tick()
                durations.append(result.duration_s)
                if result.state is not None:
                    with_state += 1
                    missing.update(m.split("@", 1)[0] for m in result.state.missing_inputs)
            lats.append(Latency.of(durations))
        ranges = sum(q.freshness is None for q in collector.queries)
        return TickFigures(Latency.median_of(lats), with_state, tuple(sorted(missing)), 1 + ranges)
    finally:
        if source is not None:
            source.close()
        if plane is not None:
            procs.stop(tb.name, "emulator")
        monitoring.down(tb.name)
        tb.kubectl("delete", "deployment", "mobilenetv4-triton", "--ignore-not-found", check=False)


@dataclass(frozen=True)
class ExtenderFigures:
    scorer: str
    prioritize: Latency
    filter: Latency
    nodes: int
    fail_open: float


def _post(conn: HTTPConnection, path: str, body: bytes) -> bytes:
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{path}: HTTP {resp.status}: {data[:300]!r}")
    return data


def _metric(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def add_nodes(tb, n: int) -> list[str]:
    """Register ``n`` more kwok GPU nodes; returns their names once kwok has made them Ready."""
    doc = node_manifests(n)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(doc, fh)
    try:
        tb.kubectl("apply", "-f", fh.name)
    finally:
        os.unlink(fh.name)
    names = [item["metadata"]["name"] for item in doc["items"]]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = json.loads(tb.kubectl("get", "nodes", "-o", "json"))
        ready = {
            i["metadata"]["name"]
            for i in out["items"]
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in i.get("status", {}).get("conditions", [])
            )
        }
        if set(names) <= ready:
            return names
        time.sleep(1.0)
    raise RuntimeError(f"{n} kwok nodes not Ready within 120 s")


def bench_extender(
    tb,
    names: list[str],
    policy_target: str | None,
    requests: int = 2000,
    trials: int = 3,
    cache: str = "watch",
    mirror: str = "packaged",
) -> ExtenderFigures:
    """``python -m services.scheduler_extender`` (gunicorn, defaults: 1 worker, 4 threads, log
    level info; ``--cache``) against the testbed's apiserver; sequential POSTs over one
    keep-alive connection, like kube-scheduler's HTTP client. With a policy server,
    ``--mirror``: ``packaged`` (the default) scores in-process while the versions match,
    ``none`` asks ScoreNodes for every request."""
    from ecrl.testbed import procs
    from ecrl.testbed.procs import free_port

    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "services.scheduler_extender",
        "--listen",
        f"127.0.0.1:{port}",
        "--kubeconfig",
        str(tb.kubeconfig),
        "--cache",
        cache,
    ]
    if policy_target is not None:
        argv += ["--policy-server", policy_target, "--mirror", mirror]
    proc = _start("extender", argv)
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_http(proc, f"{url}/readyz", timeout_s=60)
        body = json.dumps({"Pod": gpu_pod(), "Nodes": None, "NodeNames": names}).encode()
        conn = HTTPConnection("127.0.0.1", port, timeout=10)
        scores = json.loads(_post(conn, "/prioritize", body))
        if len(scores) != len(names) or len({s["Score"] for s in scores}) < 2:
            raise RuntimeError(f"/prioritize did not score the nodes: {scores[:5]}")
        for _ in range(300):
            _post(conn, "/prioritize", body)
            _post(conn, "/filter", body)
        prio, filt = [], []
        for _ in range(trials):
            prio.append(Latency.of(_timed(lambda: _post(conn, "/prioritize", body), requests)))
            filt.append(Latency.of(_timed(lambda: _post(conn, "/filter", body), requests)))
        conn.close()
        fail_open = _metric(url, "ecrl_extender_fail_open_total")
        scorer = "local (default scheduler)"
        if policy_target is not None:
            scorer = f"policy server, --mirror {mirror}"
            if mirror != "none":  # how many the mirror answered itself (learned, in-process)
                routed = "ecrl_extender_scoring_routed_total"
                total = _metric(url, routed)
                here = _metric(url, routed, where="in-process-learned")
                scorer += f" ({here / total if total else 0.0:.0%} in-process)"
        return ExtenderFigures(
            scorer + f", --cache {cache}",
            Latency.median_of(prio),
            Latency.median_of(filt),
            len(names),
            fail_open,
        )
    finally:
        _stop("extender")


def empty_wsgi_app(environ: dict, start_response: Callable) -> list[bytes]:
    """Reads the body, answers 27 bytes: what any /prioritize pays before the extender works."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    body = b'[{"Host":"box","Score":10}]'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "27")])
    return [body]


def serve_http_floor(port: int) -> None:
    """:func:`empty_wsgi_app` on gunicorn with the extender's own settings (worker class,
    threads, keep-alive, logging): ``python -c 'from ecrl.bench_services import
    serve_http_floor; serve_http_floor(PORT)'``."""
    from gunicorn.app.base import BaseApplication

    from services.scheduler_extender.__main__ import gunicorn_options
    from services.scheduler_extender.config import ExtenderConfig

    options = gunicorn_options(ExtenderConfig(port=port, log_level="warning"))

    class Floor(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return empty_wsgi_app

    Floor().run()


def bench_http_floor(body: bytes, requests: int = 2000, trials: int = 3) -> Latency:
    """Sequential POSTs of the /prioritize body to :func:`serve_http_floor` (the HTTP floor)."""
    from ecrl.testbed import procs
    from ecrl.testbed.procs import free_port

    port = free_port()
    code = f"from ecrl.bench_services import serve_http_floor; serve_http_floor({port})"
    proc = _start("http-floor", [sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while True:  # no /readyz: poll until it answers
            try:
                conn = HTTPConnection("127.0.0.1", port, timeout=10)
                _post(conn, "/", body)
                break
            except OSError:
                if time.monotonic() > deadline or not proc.alive():
                    why = proc.log_tail(500)
                    raise RuntimeError(f"the HTTP floor server did not start: {why}") from None
                time.sleep(0.2)
        for _ in range(300):
            _post(conn, "/", body)
        trial = [
            Latency.of(_timed(lambda: _post(conn, "/", body), requests)) for _ in range(trials)
        ]
        conn.close()
        return Latency.median_of(trial)
    finally:
        procs.stop(CLUSTER, "http-floor")


@dataclass(frozen=True)
class ScoringFigures:
    """In-process scoring of one 100-node /prioritize (no HTTP): who scores, how fast."""

    local: Latency
    mirror: Latency
    score_nodes: Latency


def bench_scoring(calls: int = 3000) -> ScoringFigures:
    """``priority_scores`` of a 100-node snapshot (the extender's nodes, no pod bound) through
    the default scheduler's scores, the mirrored learned scorer and ``ScoreNodes`` of the
    policy server (its own process, loopback): the scoring part of /prioritize alone."""
    from prometheus_client import CollectorRegistry

    from ecrl.testbed.procs import free_port
    from services.policy_server.config import default_scorer_path
    from services.scheduler_extender.cache import build_snapshot
    from services.scheduler_extender.mirror import MirroredScorer, Where
    from services.scheduler_extender.scoring import (
        LocalScorer,
        PolicyServerScorer,
        priority_scores,
    )
    from services.scheduler_extender.wire import parse_pod

    docs = node_manifests(EXTENDER_NODES)["items"]
    names = [d["metadata"]["name"] for d in docs]
    snapshot = build_snapshot(docs, [], time.time())
    pod = parse_pod(gpu_pod())
    with policy_server(free_port()) as target:
        remote = PolicyServerScorer(target, timeout_s=2.0)
        mirror = MirroredScorer(remote, default_scorer_path(), 60, CollectorRegistry())
        if mirror.sync().where is not Where.LEARNED:
            raise RuntimeError("the mirror did not confirm the policy server's scorer")
        figures = []
        for scorer in (LocalScorer(), mirror, remote):
            for _ in range(300):
                priority_scores(snapshot, pod, names, scorer)
            figures.append(
                Latency.of(_timed(lambda s=scorer: priority_scores(snapshot, pod, names, s), calls))
            )
    return ScoringFigures(*figures)


# ------------------------------------------------------------------------ report
def run(out: Callable[[str], None] = print) -> None:
    """Every service benchmark, printed; a skipped one says why and prints no figure."""
    from ecrl.testbed.procs import free_port

    out("\nservices (issue 5 targets), loopback, this machine:")
    run_decide(out)
    sc = bench_scoring()
    what = f"  scoring alone, {EXTENDER_NODES} nodes, in-process (no HTTP)"
    out(latency_line(f"{what}: local, default scheduler", sc.local))
    out(latency_line(f"{what}: mirrored learned scorer", sc.mirror))
    out(latency_line(f"{what}: ScoreNodes over gRPC (policy server process)", sc.score_nodes))
    try:
        with testbed() as tb:
            t = bench_collector(tb)
            out(latency_line("  collector tick, real Prometheus + Triton config", t.tick, TICK_MS))
            out(
                f"    p50 {verdict(t.tick.p50_ms, TICK_MS)}; {t.requests_per_tick} PromQL "
                f"requests per tick; {t.ticks_with_state}/{t.tick.n} ticks made a state; "
                f"missing inputs: {', '.join(t.missing_inputs) or 'none'}"
            )
            names = ["box", *add_nodes(tb, EXTENDER_NODES - 1)]
            time.sleep(SETTLE_S)
            body = json.dumps({"Pod": gpu_pod(), "Nodes": None, "NodeNames": names}).encode()
            what = "  HTTP floor: an empty WSGI app on gunicorn with the extender's settings"
            out(latency_line(what, bench_http_floor(body)))
            _extender_lines(out, bench_extender(tb, names, None))
            _extender_lines(out, bench_extender(tb, names, None, cache="list"))
            with policy_server(free_port()) as target:
                _extender_lines(out, bench_extender(tb, names, target))
                _extender_lines(out, bench_extender(tb, names, target, mirror="none"))
    except Skipped as exc:
        out(f"  extender and collector benchmarks skipped: {exc}")


def run_decide(out: Callable[[str], None] = print) -> None:
    """The Decide lines of :func:`run` alone (no testbed needed):
    ``python -c 'from ecrl.bench_services import run_decide; run_decide()'``."""
    pin = pinning()
    d = bench_decide(pin=pin)
    where = f" ({d.pinning})" if d.pinning else " (unpinned: one CPU, or no taskset)"
    what = f"  policy Decide, gRPC, PolicyClient, sequential{where}"
    out(latency_line(what, d.client, DECIDE_P99_MS))
    out(latency_line("  policy Decide, gRPC, raw stub, prebuilt request", d.raw_stub))
    what = f"  policy Decide throughput, grpc.aio client, {d.in_flight} calls in flight{where}"
    out(rate_line(what, d.rate_aio, DECIDE_RATE))
    what = f"    (secondary) {d.threads} threads × one PolicyClient"
    out(rate_line(what, d.rate_threads))
    out(rate_line(f"    (secondary) {d.processes} client processes", d.rate_processes))
    what = "  gRPC floor: grpc.health.v1 Check (empty call) on the same server, sequential"
    out(latency_line(what, d.floor, DECIDE_P99_MS))
    what = f"  gRPC floor: the same, grpc.aio, {d.in_flight} in flight"
    out(rate_line(what, d.floor_rate, unit="calls/s"))
    if d.unpinned_client is not None and d.unpinned_rate_aio is not None:
        what = "  (unpinned) policy Decide, PolicyClient, sequential, both processes on any CPU"
        out(latency_line(what, d.unpinned_client, DECIDE_P99_MS))
        what = f"  (unpinned) policy Decide throughput, grpc.aio client, {d.in_flight} in flight"
        out(rate_line(what, d.unpinned_rate_aio, DECIDE_RATE))


def _extender_lines(out: Callable[[str], None], e: ExtenderFigures) -> None:
    what = f"  extender /prioritize, {e.nodes} nodes, scoring {e.scorer}"
    out(latency_line(what, e.prioritize, PRIORITIZE_P99_MS))
    out(latency_line(f"  extender /filter, {e.nodes} nodes", e.filter))
    if e.fail_open:
        out(f"    WARNING: {e.fail_open:.0f} requests failed open (figures not of real work)")
