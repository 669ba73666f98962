"""The twin behaves like the system it models (directions the physics dictates)."""

from __future__ import annotations

import itertools

import numpy as np

from ecrl.experiment.kpis import histogram_quantile
from ecrl.twin.observe import series_row
from ecrl.twin.twin import Twin

from .conftest import cluster_with


def run_static(profile, cluster, users=None, rps=None, seconds=240, seed=1):
    tw = Twin(cluster, profile, seed=seed, record_histograms=True)
    hist, served, rows = 0.0, 0.0, []
    for _ in range(seconds):
        r = tw.step(users if users is not None else 0.0, rps=rps)
        hist = hist + r.hist[0]
        served += r.served[0]
        rows.append(series_row(tw, r))
    p95 = histogram_quantile(np.asarray(hist), tw.hist_edges_s, 0.95)
    lat = np.nansum([x["latency_avg_s"] * x["throughput_rps"] for x in rows]) / served
    return {"p95": p95, "rps": served / seconds, "lat": lat, "rows": rows, "twin": tw}


def test_p95_does_not_improve_when_replicas_are_removed_under_constant_load(profile):
    p95 = [
        run_static(profile, cluster_with(initial_replicas=r, max_replicas=4), users=60)["p95"]
        for r in (4, 3, 2, 1)
    ]
    for more, fewer in itertools.pairwise(p95):
        assert fewer >= more * 0.98, f"p95 by replicas 4..1: {p95}"
    assert p95[-1] > 1.5 * p95[0]


def test_batching_raises_throughput_at_saturation(profile):
    # CPU generous so that the GPU executor is the bottleneck.
    kw = {"cpu_request_cores": 8.0, "request_timeout_s": 5.0, "memory_request_bytes": 16 * 2**30}
    b1 = run_static(profile, cluster_with(max_batch_size=1, **kw), rps=400.0)
    b16 = run_static(profile, cluster_with(max_batch_size=16, **kw), rps=400.0)
    assert b16["rps"] > 1.5 * b1["rps"]


def test_batching_delay_costs_latency_at_light_load(profile):
    kw = {"cpu_request_cores": 8.0}
    no_delay = run_static(profile, cluster_with(max_batch_size=1, **kw), users=10)
    delayed = run_static(
        profile, cluster_with(max_batch_size=16, batch_delay_s=0.02, **kw), users=10
    )
    assert delayed["lat"] > no_delay["lat"] + 0.003


def test_too_little_memory_gets_pods_oom_killed_under_load(profile):
    res = run_static(
        profile, cluster_with(memory_request_bytes=int(1.6 * 2**30)), users=100, seconds=120
    )
    assert res["twin"].totals["oom_kills"][0] >= 1
    assert res["twin"].totals["failed"][0] > 0


def test_a_cpu_limit_below_demand_throttles_throughput(profile):
    low = run_static(profile, cluster_with(cpu_request_cores=0.5), users=50)
    high = run_static(profile, cluster_with(cpu_request_cores=4.0), users=50)
    assert low["rps"] < 0.6 * high["rps"]


def test_config_changes_that_do_not_fit_in_vram_are_refused(profile):
    tw = Twin(cluster_with(initial_replicas=4), profile, seed=0)
    tw.set_targets(instances=np.array([8.0]), max_batch=np.array([64.0]))
    assert tw.totals["rejected"][0] == 1
    tw.set_targets(instances=np.array([2.0]))
    assert tw.totals["rejected"][0] == 1
