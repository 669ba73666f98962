"""Invariants of the twin that any bookkeeping mistake would break."""

from __future__ import annotations

import numpy as np

from ecrl.twin.observe import prometheus_samples, series_row
from ecrl.twin.twin import Twin

from .conftest import cluster_with


def test_requests_are_conserved_through_scaling_resizes_and_ooms(profile):
    """arrived = served + failed + queued, whatever the controller does to the pods."""
    rng = np.random.default_rng(7)
    tw = Twin(cluster_with(max_replicas=4), profile, n_envs=8, seed=3)
    for t in range(400):
        if t % 10 == 0:
            tw.set_targets(
                replicas=rng.integers(1, 5, 8).astype(float),
                max_batch=rng.choice([1.0, 8.0, 32.0], 8),
                instances=rng.choice([1.0, 2.0, 4.0], 8),
                cpu_cores=rng.choice([0.5, 1.0, 2.0, 4.0], 8),
                memory_bytes=rng.choice([1.0, 1.5, 4.0], 8) * 2**30,
            )
        tw.step(rng.uniform(0, 150, 8))
    tot = tw.totals
    queued = tw.queue.sum(axis=1)
    np.testing.assert_allclose(
        tot["arrived"], tot["served"] + tot["failed"] + queued, rtol=1e-9, atol=1e-6
    )
    assert tot["oom_kills"].sum() > 0, "the random resizes should have caused at least one OOM kill"
    assert tot["failed"].sum() > 0


def test_littles_law_holds_for_the_backlog_within_five_percent(profile):
    """Time-average backlog L ≈ throughput λ × mean backlog wait W under sustained overload."""
    tw = Twin(
        cluster_with(initial_replicas=1, request_timeout_s=30.0, max_queue_size=100_000),
        profile,
        seed=11,
    )
    backlog, served, wait_weighted = [], 0.0, 0.0
    for _ in range(600):
        q0 = tw.queue.sum()
        r = tw.step(0.0, rps=80.0)  # above one pod's ~70 req/s CPU capacity
        q1 = tw.queue.sum()
        backlog.append(0.5 * (q0 + q1))
        ps = r.pods
        served += r.served[0]
        wait_weighted += float((ps.served * 0.5 * (ps.w0_s + ps.w1_s)).sum())
    mean_l = float(np.mean(backlog[100:]))
    assert mean_l > 20, "the scenario must actually build a backlog"
    lam = served / 600.0
    mean_w = wait_weighted / served
    # compare over the whole run (transients at the start count on both sides)
    mean_l_all = float(np.mean(backlog))
    assert abs(mean_l_all - lam * mean_w) / mean_l_all < 0.05


def test_same_seed_gives_identical_runs_and_other_seeds_differ(profile):
    def run(seed: int) -> np.ndarray:
        tw = Twin(cluster_with(), profile, seed=seed)
        return np.array([tw.step(40.0).served[0] for _ in range(60)])

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_pods_do_not_exceed_gpu_slots_and_extra_pods_stay_pending(profile):
    cluster = cluster_with(max_replicas=6, initial_replicas=1)
    tw = Twin(cluster, profile, seed=0)
    tw.set_targets(replicas=np.array([6.0]))
    for _ in range(60):
        tw.step(10.0)
    row = series_row(tw, tw.step(10.0))
    assert row["gpu_replicas"] == 4  # one GPU advertised as 4 time-sliced slots
    assert row["replicas_ready"] == 4
    assert row["replicas_pending"] == 2


def test_new_pods_become_ready_only_after_the_startup_delay(profile):
    tw = Twin(cluster_with(), profile, seed=0)
    tw.set_targets(replicas=np.array([2.0]))
    ready = []
    for _ in range(60):
        r = tw.step(10.0)
        ready.append(series_row(tw, r)["replicas_ready"])
    first = ready.index(2.0)
    assert 5 <= first <= 40, f"second pod ready after {first} s; profile says ~15 s"


def test_emits_production_metric_names_marked_emulated(profile):
    tw = Twin(cluster_with(), profile, seed=0)
    for _ in range(5):
        tw.step(10.0)
    samples = prometheus_samples(tw)
    names = {s.name for s in samples}
    for required in (
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_POWER_USAGE",
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_exec_count",
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas_ready",
    ):
        assert required in names
    assert all(s.labels.get("emulated") == "true" for s in samples)
    success = sum(s.value for s in samples if s.name == "nv_inference_request_success")
    assert success == tw.totals["served"][0]
