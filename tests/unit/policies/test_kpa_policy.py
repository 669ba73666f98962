"""Knative-KPA-like policy: stable/panic windows, panic entry and exit, rate limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ecrl.policies import KpaPolicy, PodMetrics, make_policy
from ecrl.policies.base import Observation

from .observations import make_observation

TICK_S = 2.0


def observe(
    t: float, replicas: int, per_pod: float | None, lo: int = 1, hi: int = 50
) -> Observation:
    pods = tuple(
        PodMetrics(
            name=f"p{i}",
            ready=True,
            start_time_s=-1000.0,
            ready_time_s=-990.0,
            cpu_usage_cores=0.5,
            concurrency=per_pod,
        )
        for i in range(replicas)
    )
    return make_observation(
        t, pods, desired_replicas=replicas, min_replicas=lo, max_replicas=hi, free_gpu_slots=50
    )


@dataclass(frozen=True)
class Step:
    t: float
    replicas: int
    panic: bool


def run(
    policy: KpaPolicy,
    demand: Callable[[float], float],
    start: float,
    end: float,
    replicas: int,
    *,
    hi: int = 50,
) -> list[Step]:
    """Tick every 2 s; the total in-flight demand is spread over the (instantly ready) pods."""
    steps = []
    t = start
    while t < end:
        action = policy.decide(observe(t, replicas, demand(t) / replicas, hi=hi))
        if action.desired_replicas is not None:
            replicas = action.desired_replicas
        steps.append(Step(t, replicas, policy.in_panic))
        t += TICK_S
    return steps


def kpa(**kwargs: Any) -> KpaPolicy:
    # Container target 10 at 70 % -> 7 in-flight requests per pod.
    policy = make_policy("kpa", container_concurrency_target=10.0, **kwargs)
    assert isinstance(policy, KpaPolicy)
    return policy


def test_kpa_defaults_match_config_autoscaler() -> None:
    cfg = KpaPolicy().config
    assert (cfg.stable_window_s, cfg.panic_window_s, cfg.tick_s) == (60.0, 6.0, 2.0)
    assert cfg.target_value == 70.0  # 70 % of container-concurrency-target-default 100
    assert (cfg.max_scale_up_rate, cfg.max_scale_down_rate) == (1000.0, 2.0)


def test_kpa_settles_on_stable_concurrency_over_target() -> None:
    policy = kpa()
    warm = run(policy, lambda t: 28.0, 0.0, 70.0, replicas=4)  # 28 / 7 = 4 pods
    assert warm[-1] == Step(68.0, 4, False)
    # Demand 40 -> ceil(40 / 7) = 6 once the stable window has absorbed it; 6 / 4 < 2: no panic.
    steps = run(policy, lambda t: 40.0, 70.0, 140.0, replicas=4)
    assert not any(s.panic for s in steps)
    assert steps[-1].replicas == 6


def test_kpa_enters_panic_when_short_window_demand_doubles_ready_pods() -> None:
    policy = kpa()
    assert run(policy, lambda t: 5.0, 0.0, 70.0, replicas=1)[-1] == Step(68.0, 1, False)
    # Burst to 40 at t=70: panic window (5 + 5 + 40) / 3 -> 3 pods, 3 / 1 >= 200 %.
    steps = run(policy, lambda t: 40.0, 70.0, 80.0, replicas=1)
    assert steps[0] == Step(70.0, 3, True)
    assert steps[-1].replicas == 6  # keeps growing on the panic window: ceil(40 / 7)


def test_kpa_panics_at_exactly_twice_the_ready_pods() -> None:
    # 14 in flight on 1 pod: ceil(14 / 7) = 2 pods wanted, 2 / 1 reaches the 200 % threshold.
    policy = kpa()
    assert policy.decide(observe(0.0, 1, 14.0)).desired_replicas == 2
    assert policy.in_panic


def test_kpa_does_not_scale_down_while_panicking_and_leaves_after_a_stable_window() -> None:
    policy = kpa()
    run(policy, lambda t: 5.0, 0.0, 70.0, replicas=1)
    burst = run(policy, lambda t: 40.0, 70.0, 76.0, replicas=1)
    last_over_threshold_s = 70.0  # later burst ticks need < 2x the grown pod count
    calm = run(policy, lambda t: 5.0, 76.0, 200.0, replicas=burst[-1].replicas)
    in_panic = [s for s in calm if s.panic]
    assert in_panic
    assert all(s.replicas == burst[-1].replicas for s in in_panic)  # no scale-down in panic
    assert in_panic[-1].t <= last_over_threshold_s + 60.0
    assert calm[len(in_panic)].t > last_over_threshold_s + 60.0
    assert calm[-1].replicas == 1


def test_kpa_extends_panic_while_over_threshold() -> None:
    policy = kpa()
    # Capped at 2 pods, 700 in flight stays far over 2x: panic is re-armed every tick.
    burst = run(policy, lambda t: 700.0, 0.0, 100.0, replicas=1, hi=2)
    assert burst[-1] == Step(98.0, 2, True)
    calm = run(policy, lambda t: 0.0, 100.0, 170.0, replicas=2, hi=2)
    assert all(s.panic for s in calm if s.t <= 98.0 + 60.0)
    assert not calm[-1].panic


def test_kpa_starts_in_panic_with_several_pods_then_halves_at_most_per_tick() -> None:
    policy = kpa()
    steps = run(policy, lambda t: 0.0, 0.0, 80.0, replicas=8)
    assert all(s.replicas == 8 and s.panic for s in steps if s.t <= 60.0)
    after = [s.replicas for s in steps if s.t > 60.0]
    assert after[:4] == [4, 2, 1, 1]  # max-scale-down-rate 2: floor(ready / 2) per tick


def test_kpa_never_scales_below_one_replica() -> None:
    steps = run(kpa(), lambda t: 0.0, 0.0, 30.0, replicas=1)
    assert all(s.replicas == 1 for s in steps)


def test_kpa_max_scale_up_rate_caps_growth_per_tick() -> None:
    policy = kpa(max_scale_up_rate=2.0)
    steps = run(policy, lambda t: 700.0, 0.0, 6.0, replicas=1)
    assert [s.replicas for s in steps] == [2, 4, 8]


def test_kpa_respects_max_replicas() -> None:
    action = kpa().decide(observe(0.0, 1, 700.0, hi=3))
    assert action.desired_replicas == 3


def test_kpa_decides_only_every_tick() -> None:
    policy = kpa()
    reasons = [policy.decide(observe(t, 1, 100.0)).reason for t in (0.0, 1.0, 2.0, 3.0)]
    assert ["waiting" in r for r in reasons] == [False, True, False, True]


def test_kpa_extrapolates_reporting_pods_to_all_ready_pods() -> None:
    # One of 2 ready pods reports 14 in flight: the revision total is 14 * 2 = 28 -> 4 pods.
    obs = observe(0.0, 2, 14.0)
    silent = replace(obs.pods[1], concurrency=None)
    action = kpa().decide(replace(obs, pods=(obs.pods[0], silent)))
    assert action.desired_replicas == 4


def test_kpa_holds_without_concurrency_data() -> None:
    action = kpa().decide(observe(0.0, 2, None))
    assert action.is_noop()
    assert "no data" in action.reason
