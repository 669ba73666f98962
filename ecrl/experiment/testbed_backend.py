"""The comparison on the testbed: real Locust against the emulated data plane, the real control
plane deciding, and the same per-second series and KPIs as the twin backend.

One run: reset the Deployment (and the mode's autoscaler) to one replica, drive it with Locust
along the shape, then rebuild the per-second series from what was measured — latency,
throughput and failures from Locust's per-request log (the client's view, as on the real
box), replicas, utilization and resources from the real Prometheus (kube-state-metrics, kwok's
kubelet resource metrics, the emulator's DCGM series), batching from Triton's config API
sampled during the run. Nothing is filled in: a second without a sample stays NaN.

Modes: ``hpa-cpu`` — the baseline: the real HPA (autoscaling/v2, CPU 80 %, upstream
behavior) from ``deploy/baseline/`` with the default scheduler (the extender is not running,
and the scheduler ignores it). ``static`` — the Deployment alone at one replica. ``rl`` — no
HPA; ECRL's services as a user deploys them (:mod:`ecrl.testbed.services`): the policy server
and the collector for the whole experiment, the scheduler extender and the actuator started
after each run's reset and stopped after it, so every run starts from the same state. The
actuator's audit log of every run is kept beside Locust's files (``audit/``).
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ecrl.errors import ConfigError
from ecrl.experiment.kpis import SERIES_COLUMNS, compute_kpis
from ecrl.experiment.runner import ExperimentConfig, RunResult, run_seed
from ecrl.load.shapes import LoadShape
from ecrl.testbed.cluster import Testbed
from ecrl.testbed.dataplane import emulator_pods
from ecrl.testbed.procs import wait_until
from ecrl.testbed.services import ACTUATOR, EXTENDER, Services, ServicesConfig
from ecrl.twin.twin import DEFAULT_HIST_EDGES_S

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "baseline" / "mobilenetv4-triton.yaml"
DEPLOYMENT = "mobilenetv4-triton"
POD_RE = f"{DEPLOYMENT}-.*"
TESTBED_MODES = ("hpa-cpu", "static", "rl")
DEFAULT_TESTBED_MODES = ("hpa-cpu", "rl")
"""The comparison the issue asks for: the default scheduler + HPA against the learned policy."""


@dataclass(frozen=True)
class TestbedEndpoints:
    """Where the running testbed answers (``make testbed`` defaults)."""

    __test__ = False

    prom_url: str = "http://127.0.0.1:9090"
    triton_http: str = "http://127.0.0.1:8000"
    triton_grpc: str = "127.0.0.1:8001"
    metrics_url: str = "http://127.0.0.1:8002"
    namespace: str = "default"
    emulator_time_scale: float = 4.0
    """The emulator's ``--time-scale``: service times, and so the SLO, are this much longer
    (1 on a real box)."""
    dcgm_selector: str = 'emulated="true"'
    """Label matchers of the DCGM series (the emulator's carry ``emulated="true"``; '' on a
    real box, where dcgm-exporter's are the only ones)."""

    def slo(self, slo_p95_s: float) -> float:
        """The cluster's SLO in emulated time (a p95 that meets it on the box meets this)."""
        return slo_p95_s * self.emulator_time_scale


def check_modes(
    modes: Sequence[str], available: Sequence[str] = TESTBED_MODES, backend: str = "testbed"
) -> None:
    """Refuse, naming the flag, the modes a real-time backend cannot run (``available``: the
    testbed's, or the microk8s chart's), before any cluster work starts."""
    bad = [m for m in modes if m not in available]
    if bad:
        raise ConfigError(
            "command line",
            "--modes",
            f"{', '.join(bad)} not available on the {backend} backend "
            f"(available: {', '.join(available)})",
        )


# ------------------------------------------------------------------------ cluster control
def reset(tb: Testbed, ep: TestbedEndpoints, mode: str) -> None:
    """Remove the Deployment and its HPA, then apply the mode's manifests at one replica
    (the HPA only for ``hpa-cpu``: in ``rl`` the actuator owns the replica count)."""
    tb.kubectl(
        "delete", "deployment,hpa", DEPLOYMENT, "-n", ep.namespace, "--ignore-not-found", "--wait"
    )
    wait_until("emulator serving 0 pods", lambda: emulator_pods(ep.metrics_url) == 0, 120, 0.5)
    tb.kubectl("apply", "-n", ep.namespace, "-f", str(MANIFEST))
    if mode != "hpa-cpu":
        tb.kubectl("delete", "hpa", DEPLOYMENT, "-n", ep.namespace, "--ignore-not-found")
    wait_until(
        "emulator serving the first pod", lambda: emulator_pods(ep.metrics_url) == 1, 120, 0.5
    )
    load_baseline_config(ep)


def load_baseline_config(ep: TestbedEndpoints) -> None:
    """Triton load-with-config back to the Deployment's initial batching and instances, so a
    run does not inherit what an earlier controller loaded (the twin starts every run there).
    """
    from ecrl.twin.spec import DeploymentSpec
    from services.collector.observation import Batching
    from services.collector.sources import model_config
    from services.scheduler_extender.actuator.apply import TritonLoader

    d = DeploymentSpec()
    config = model_config(Batching(d.max_batch_size, d.batch_delay_s, d.instance_count))
    TritonLoader(ep.triton_http, timeout_s=60).load(config)


class ConfigSampler:
    """Samples Triton's model config once a second during a run (batching, instances), read
    and parsed as the collector does, so the series shows what the policy's state saw."""

    def __init__(self, triton_http: str) -> None:
        from ecrl.serving import MODEL_NAME
        from services.collector.sources import TritonSource

        self.source = TritonSource(triton_http, MODEL_NAME, timeout_s=2.0)
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from services.collector.sources import SourceError

        while not self._stop.is_set():
            try:
                b = self.source.read()
                self.samples.append((time.time(), float(b.max_batch_size), float(b.instance_count)))
            except SourceError:
                pass  # a missing sample stays NaN in the series
            self._stop.wait(1.0)

    def __enter__(self) -> ConfigSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ------------------------------------------------------------------------ series
def _range(prom_url: str, promql: str, start: float, end: float) -> pd.Series:
    """A Prometheus range query at 1 s steps as a Series indexed by whole seconds."""
    q = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": "1s"})
    with urllib.request.urlopen(f"{prom_url}/api/v1/query_range?{q}", timeout=30) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"range query {promql!r}: {body.get('error', body)}")
    result = body["data"]["result"]
    if not result:
        return pd.Series(dtype=float)
    vals = result[0]["values"]
    return pd.Series(
        [float(v) for _, v in vals], index=[round(float(t) - start) for t, _ in vals], dtype=float
    )


def cluster_queries(ns: str, dcgm: str = 'emulated="true"') -> dict[str, str]:
    """Per-second cluster columns of the series and the PromQL that reads each (``dcgm``: the
    DCGM series' label matchers)."""
    dep = f'namespace="{ns}",deployment="{DEPLOYMENT}"'
    pods = f'namespace="{ns}",pod=~"{POD_RE}"'
    return {
        "replicas_desired": f"max(kube_deployment_spec_replicas{{{dep}}})",
        "replicas_ready": f"max(kube_deployment_status_replicas_ready{{{dep}}})",
        "replicas_pending": f'sum(kube_pod_status_phase{{{pods},phase="Pending"}})',
        # pods holding a time-sliced GPU slot: Running pods' nvidia.com/gpu requests
        "gpu_replicas": (
            f'sum(kube_pod_container_resource_requests{{{pods},resource="nvidia_com_gpu"}}'
            " * on (pod) group_left max by (pod)"
            f' (kube_pod_status_phase{{{pods},phase="Running"}}))'
        ),
        "gpu_util_ratio": f"avg(DCGM_FI_DEV_GPU_UTIL{{{dcgm}}}) / 100",
        "cpu_util_ratio": (
            f"sum(rate(container_cpu_usage_seconds_total{{{pods}}}[30s]))"
            f' / sum(kube_pod_container_resource_requests{{{pods},resource="cpu"}})'
        ),
        "memory_util_ratio": (
            f"sum(container_memory_working_set_bytes{{{pods}}})"
            f' / sum(kube_pod_container_resource_requests{{{pods},resource="memory"}})'
        ),
        "vram_used_bytes": f"sum(DCGM_FI_DEV_FB_USED{{{dcgm}}}) * 1048576",
        "cpu_request_cores": f'avg(kube_pod_container_resource_requests{{{pods},resource="cpu"}})',
        "memory_request_bytes": (
            f'avg(kube_pod_container_resource_requests{{{pods},resource="memory"}})'
        ),
    }


def build_series(
    requests: pd.DataFrame,
    history: pd.DataFrame,
    cluster: dict[str, pd.Series],
    config: list[tuple[float, float, float]],
    start: float,
    duration_s: int,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-second series (:data:`SERIES_COLUMNS`) and latency histograms of one run, on the
    twin's histogram edges so that the KPIs of both backends are computed alike."""
    n = duration_s
    out = pd.DataFrame(np.nan, index=range(n), columns=list(SERIES_COLUMNS))
    out["time_s"] = np.arange(n, dtype=float)
    hist = np.zeros((n, len(DEFAULT_HIST_EDGES_S) - 1))
    if len(requests):
        sent = requests["timestamp"].to_numpy(float) - start
        lat = requests["response_time_ms"].to_numpy(float) / 1e3
        done = sent + lat
        exc = requests.get("exception")
        ok = (
            np.ones(len(lat), bool)
            if exc is None
            else (exc.isna() | (exc.astype(str).str.strip() == "")).to_numpy()
        )
        offered = np.bincount(np.clip(sent.astype(int), 0, None), minlength=n)[:n]
        out["offered_rps"] = offered.astype(float)
        sec = np.floor(done).astype(int)
        inside = (sec >= 0) & (sec < n)
        served = np.bincount(sec[inside & ok], minlength=n)[:n].astype(float)
        out["throughput_rps"] = served
        out["failure_rps"] = np.bincount(sec[inside & ~ok], minlength=n)[:n].astype(float)
        for s in np.unique(sec[inside & ok]):
            v = lat[(sec == s) & ok]
            out.loc[s, "latency_avg_s"] = float(v.mean())
            out.loc[s, "latency_p95_s"] = float(np.quantile(v, 0.95))
            out.loc[s, "latency_p99_s"] = float(np.quantile(v, 0.99))
            hist[s] = np.histogram(v, DEFAULT_HIST_EDGES_S)[0]
    if len(history):
        users = history.groupby(np.floor(history["timestamp"] - start).astype(int))["user_count"]
        u = users.max()
        u = u[(u.index >= 0) & (u.index < n)]
        out.loc[u.index, "users"] = u.to_numpy(float)
    for col, samples in cluster.items():
        kept = samples[(samples.index >= 0) & (samples.index < n)]
        out.loc[kept.index, col] = kept.to_numpy(float)
    for t, batch, inst in config:
        i = int(t - start)
        if 0 <= i < n:
            out.loc[i, "max_batch_size"] = batch
            out.loc[i, "instance_count"] = inst
    return out, hist


def _wait_scraped(ep: TestbedEndpoints, t: float, timeout_s: float = 60.0) -> None:
    """Until Prometheus holds a kube-state-metrics sample taken after ``t`` (the run's end)."""
    from ecrl.testbed.monitoring import query

    promql = f'max(timestamp(kube_deployment_spec_replicas{{deployment="{DEPLOYMENT}"}}))'

    def scraped() -> bool:
        r = query(ep.prom_url, promql)
        return bool(r) and float(r[0]["value"][1]) >= t

    wait_until("a Prometheus scrape after the run", scraped, timeout_s, 0.5)


# ------------------------------------------------------------------------ runs
def run_one_testbed(
    mode: str,
    shape: LoadShape,
    tb: Testbed,
    ep: TestbedEndpoints,
    out_dir: Path,
    slo_p95_s: float,
    seed: int,
    repeat: int,
    services: Services | None = None,
) -> RunResult:
    """Reset, drive with Locust along ``shape``, measure; returns the run like the twin's.

    ``services`` (policy server and collector running) is needed for ``rl``: the extender and
    the actuator run for exactly this run.
    """
    if mode != "rl":
        reset(tb, ep, mode)
        _wait_scraped(ep, time.time())  # the series starts from the reset state
        return drive_run(mode, shape, ep, out_dir, slo_p95_s, seed, repeat)
    if services is None:
        raise ValueError("rl mode needs the services (policy server, collector) running")
    try:
        services.start_extender()  # before the reset: the run's first pod goes through it too
        reset(tb, ep, mode)
        _wait_scraped(ep, time.time())
        services.start_actuator(out_dir / "audit" / f"{shape.name}-{mode}-{repeat}.jsonl")
        return drive_run(mode, shape, ep, out_dir, slo_p95_s, seed, repeat)
    finally:
        services.stop(ACTUATOR)
        services.stop(EXTENDER)


def drive_run(
    mode: str,
    shape: LoadShape,
    ep: TestbedEndpoints,
    out_dir: Path,
    slo_p95_s: float,
    seed: int,
    repeat: int,
) -> RunResult:
    """Locust along ``shape`` against the data plane, then the run's series and KPIs."""
    from ecrl.load.locust_run import run_locust

    trace = out_dir / f"{shape.name}-{mode}-{repeat}.shape.csv"
    trace.write_text(
        "time_s,users\n" + "".join(f"{t:g},{v:g}\n" for t, v in shape.points), encoding="utf-8"
    )
    start = time.time()
    with ConfigSampler(ep.triton_http) as sampler:
        res = run_locust(
            ep.triton_http,
            str(trace),
            out_dir / f"{shape.name}-{mode}-{repeat}",
            grpc_url=ep.triton_grpc,
        )
    end = time.time()
    _wait_scraped(ep, end)
    duration = math.ceil(shape.duration_s)
    cluster = {
        col: _range(ep.prom_url, q, start, end)
        for col, q in cluster_queries(ep.namespace, ep.dcgm_selector).items()
    }
    requests = res.requests if res.requests is not None else pd.DataFrame()
    series, hist = build_series(requests, res.history, cluster, sampler.samples, start, duration)
    kpis = compute_kpis(series, hist, DEFAULT_HIST_EDGES_S, ep.slo(slo_p95_s))
    return RunResult(mode, shape.name, repeat, seed, series, hist, kpis, [])


def interleaved(
    cfg: ExperimentConfig, shapes: list[LoadShape]
) -> list[tuple[str, LoadShape, int, int]]:
    """(mode, shape, seed, repeat) in the order real-time runs go: every mode once per repeat,
    the order reversed on odd repeats (A B, B A, …) so drift over the session (warming, other
    load on the machine) does not always favour the mode that runs first."""
    tasks = []
    for si, shape in enumerate(shapes):
        scaled = shape.scaled(cfg.time_scale) if cfg.time_scale != 1.0 else shape
        for rep in range(cfg.repeats):
            modes = cfg.modes if rep % 2 == 0 else tuple(reversed(cfg.modes))
            tasks.extend((mode, scaled, run_seed(cfg.seed, si, rep), rep) for mode in modes)
    return tasks


def services_for(tb: Testbed, ep: TestbedEndpoints, slo_p95_s: float) -> Services:
    """ECRL's services configured for this testbed: the box's SLO, and the collector told the
    emulator's time scale so the policy sees the box's rates and latencies."""
    from ecrl.twin.spec import DeploymentSpec

    d = DeploymentSpec()
    return Services(
        tb,
        ServicesConfig(
            prom_url=ep.prom_url,
            triton_http=ep.triton_http,
            namespace=ep.namespace,
            deployment=DEPLOYMENT,
            slo_p95_s=slo_p95_s,
            time_scale=ep.emulator_time_scale,
            min_replicas=d.min_replicas,
            max_replicas=d.max_replicas,
        ),
    )


def run_experiment_testbed(
    cfg: ExperimentConfig,
    shapes: list[LoadShape],
    tb: Testbed,
    ep: TestbedEndpoints,
    out_dir: Path,
    slo_p95_s: float,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every (shape, repeat, mode) in real time; returns (kpis per run, long series)."""
    check_modes(cfg.modes)
    raw = out_dir / "locust"
    raw.mkdir(parents=True, exist_ok=True)
    tasks = interleaved(cfg, shapes)
    total_s = sum(t[1].duration_s for t in tasks)
    bar = tqdm(total=round(total_s), desc="testbed runs", unit="s", disable=not progress)
    results = []
    services = services_for(tb, ep, slo_p95_s) if "rl" in cfg.modes else None
    try:
        if services is not None:
            services.start_policy_server()
            services.start_collector()
        for mode, shape, seed, rep in tasks:
            bar.set_postfix_str(f"{shape.name}/{mode}/{rep}")
            results.append(
                run_one_testbed(mode, shape, tb, ep, raw, slo_p95_s, seed, rep, services)
            )
            bar.update(round(shape.duration_s))
    finally:
        bar.close()
        if services is not None:
            services.stop_all()
    return frames(results)


def frames(results: list[RunResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(KPIs, one row per run; long per-second series) of real-time runs, as the twin's."""
    kpis = pd.DataFrame(
        [
            {"mode": r.mode, "profile": r.shape, "repeat": r.repeat, "seed": r.seed, **r.kpis}
            for r in results
        ]
    )
    series = pd.concat(
        [r.series.assign(mode=r.mode, profile=r.shape, repeat=r.repeat) for r in results],
        ignore_index=True,
    )
    return kpis, series
