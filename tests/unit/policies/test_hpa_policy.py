"""HPA v2 policy against upstream's documented behaviour (docs examples, replica_calculator.go,
horizontal.go)."""

from __future__ import annotations

from typing import Any

import pytest

from ecrl.policies import HpaPolicy, PodMetrics, make_policy
from ecrl.policies.base import Observation

from .observations import make_observation

LONG_AGO = -10_000.0  # started and ready long before the test: outside every init period


def pod(
    name: str,
    cpu: float | None = None,
    *,
    queue_s: float | None = None,
    ready: bool = True,
    start: float = LONG_AGO,
    ready_at: float | None = LONG_AGO,
) -> PodMetrics:
    return PodMetrics(
        name=name,
        ready=ready,
        start_time_s=start,
        ready_time_s=ready_at,
        cpu_usage_cores=cpu,
        queue_time_avg_s=queue_s,
    )


def observe(
    t: float,
    pods: list[PodMetrics],
    *,
    desired: int | None = None,
    lo: int = 1,
    hi: int = 20,
    request_cores: float = 1.0,
) -> Observation:
    return make_observation(
        t,
        pods,
        desired_replicas=len(pods) if desired is None else desired,
        min_replicas=lo,
        max_replicas=hi,
        cpu_request_cores=request_cores,
    )


def cpu_pods(n: int, cores: float) -> list[PodMetrics]:
    return [pod(f"p{i}", cpu=cores) for i in range(n)]


def replicas_after(policy: HpaPolicy, obs: Observation) -> int:
    """The replica count after the policy's action (unchanged on a no-op)."""
    action = policy.decide(obs)
    return obs.desired_replicas if action.desired_replicas is None else action.desired_replicas


def hpa(name: str = "hpa-cpu", **kwargs: Any) -> HpaPolicy:
    policy = make_policy(name, **kwargs)
    assert isinstance(policy, HpaPolicy)
    return policy


NO_DOWN_WINDOW = {"scale_down": {"stabilization_window_s": 0}}


# -- docs, "Algorithm details" ------------------------------------------------------------


def test_hpa_doubles_replicas_when_metric_is_twice_the_target() -> None:
    # Docs: current 200m, desired 100m -> 200.0 / 100.0 == 2.0 -> replicas doubled.
    policy = hpa("hpa-queue", target_queue_time_s=0.1)
    pods = [pod("a", queue_s=0.2), pod("b", queue_s=0.2)]
    assert replicas_after(policy, observe(0.0, pods)) == 4


def test_hpa_halves_replicas_when_metric_is_half_the_target() -> None:
    # Docs: current 50m, desired 100m -> 50.0 / 100.0 == 0.5 -> replicas halved.
    policy = hpa("hpa-queue", target_queue_time_s=0.1, behavior=NO_DOWN_WINDOW)
    pods = [pod(f"p{i}", queue_s=0.05) for i in range(4)]
    assert replicas_after(policy, observe(0.0, pods)) == 2


@pytest.mark.parametrize(("cores", "expected"), [(0.88, 4), (0.72, 4), (0.89, 5), (0.60, 3)])
def test_hpa_does_not_scale_inside_tolerance_band(cores: float, expected: int) -> None:
    # Target 80 %: 88 % and 72 % are within 10 % of it; 89 % and 60 % are not.
    policy = hpa(behavior=NO_DOWN_WINDOW)
    assert replicas_after(policy, observe(0.0, cpu_pods(4, cores))) == expected


def test_hpa_default_cpu_target_is_80_percent() -> None:
    assert hpa().config.target_cpu_utilization_percent == 80


def test_hpa_cpu_utilization_is_sum_of_usage_over_sum_of_requests() -> None:
    # 4.3 cores used of 4 cores requested = 107 % -> 107 / 80 * 4 pods = 5.35 -> 6.
    pods = [pod("a", cpu=0.5), pod("b", cpu=1.5), pod("c", cpu=1.3), pod("d", cpu=1.0)]
    assert replicas_after(hpa(), observe(0.0, pods)) == 6


def test_hpa_truncates_utilization_to_whole_percent() -> None:
    # 88.9 % becomes 88 % (integer arithmetic upstream), which is inside the band.
    assert replicas_after(hpa(), observe(0.0, cpu_pods(4, 0.889))) == 4


def test_hpa_rounds_cpu_usage_up_to_whole_millicores() -> None:
    # 8.1m of a 10m request is read as 9m (Quantity.MilliValue rounds up): 90 % -> 2 pods.
    assert replicas_after(hpa(), observe(0.0, cpu_pods(1, 0.0081), request_cores=0.01)) == 2


def test_hpa_queue_metric_truncates_to_whole_milliseconds() -> None:
    # prometheus-adapter truncates 11.9 ms to 11 ms: 11 / 10 is inside the band, hold.
    policy = hpa("hpa-queue", target_queue_time_s=0.01)
    pods = [pod("a", queue_s=0.0119), pod("b", queue_s=0.0119)]
    assert replicas_after(policy, observe(0.0, pods)) == 2


def test_hpa_queue_metric_averages_milliseconds_over_pods() -> None:
    # (100 ms + 50 ms) / 2 = 75 ms against 50 ms -> ratio 1.5 -> 3 replicas.
    policy = hpa("hpa-queue", target_queue_time_s=0.05)
    pods = [pod("a", queue_s=0.1), pod("b", queue_s=0.05)]
    assert replicas_after(policy, observe(0.0, pods)) == 3


# -- behavior: stabilization and rate limits ----------------------------------------------


def test_hpa_scale_down_stabilization_picks_max_recommendation_over_300s() -> None:
    policy = hpa()
    replicas = 4
    timeline = {}
    for step in range(24):
        t = 15.0 * step
        # 80 % keeps 4 at t=0; 60 % at t=30 recommends 3; otherwise 40 % recommends half.
        util = 0.8 if t == 0 else 0.6 if t == 30 else 0.4
        replicas = replicas_after(policy, observe(t, cpu_pods(replicas, util)))
        timeline[t] = replicas
    assert all(timeline[t] == 4 for t in timeline if t < 300)
    assert timeline[300.0] == 3  # the 3 recommended at t=30 is the highest left in the window
    assert timeline[315.0] == 3
    assert timeline[330.0] == 2  # t=30 has left the window


def test_hpa_first_sync_does_not_scale_down_inside_the_window() -> None:
    # The current count is recorded as the first recommendation (recordInitialRecommendation).
    assert replicas_after(hpa(), observe(0.0, cpu_pods(4, 0.2))) == 4


def test_hpa_scale_up_from_one_replica_is_max_of_double_and_plus_four() -> None:
    policy = hpa()
    # 1000 % of request against 80 % recommends 13; Percent 100 -> 2, Pods 4 -> 5; Max -> 5.
    assert replicas_after(policy, observe(0.0, cpu_pods(1, 10.0))) == 5
    # The next period starts from 5: max(5 * 2, 5 + 4) = 10.
    assert replicas_after(policy, observe(15.0, cpu_pods(5, 10.0))) == 10


def test_hpa_select_policy_min_takes_the_smaller_scale_up() -> None:
    policy = hpa(behavior={"scale_up": {"select_policy": "Min"}})
    assert replicas_after(policy, observe(0.0, cpu_pods(1, 10.0))) == 2


def test_hpa_pods_policy_counts_scale_events_within_its_period() -> None:
    one_pod_a_minute = {"scale_up": {"policies": [{"type": "Pods", "value": 1, "period_s": 60}]}}
    policy = hpa(behavior=one_pod_a_minute)
    replicas = 1
    seen = []
    for t in (0.0, 15.0, 30.0, 45.0, 60.0):
        replicas = replicas_after(policy, observe(t, cpu_pods(replicas, 10.0)))
        seen.append(replicas)
    assert seen == [2, 2, 2, 2, 3]


def test_hpa_scale_down_percent_policy_limits_removal_per_period() -> None:
    half_a_minute = {
        "scale_down": {
            "stabilization_window_s": 0,
            "policies": [{"type": "Percent", "value": 50, "period_s": 60}],
        }
    }
    policy = hpa(behavior=half_a_minute)
    replicas = 8
    seen = []
    for t in (0.0, 15.0, 45.0, 60.0):
        replicas = replicas_after(policy, observe(t, cpu_pods(replicas, 0.01)))
        seen.append(replicas)
    assert seen == [4, 4, 4, 2]


def test_hpa_scale_up_limit_below_current_holds_instead_of_scaling_down() -> None:
    one_pod_a_minute = {"scale_up": {"policies": [{"type": "Pods", "value": 1, "period_s": 60}]}}
    policy = hpa(behavior=one_pod_a_minute)
    assert replicas_after(policy, observe(0.0, cpu_pods(1, 0.8), lo=5)) == 5  # +4 event
    # The policy allows 1 + 1 = 2 from the period start, below the current 5: hold at 5.
    assert replicas_after(policy, observe(15.0, cpu_pods(5, 10.0), lo=5)) == 5


def test_hpa_scale_down_limit_above_current_holds_instead_of_scaling_up() -> None:
    one_pod_a_minute = {
        "scale_down": {
            "stabilization_window_s": 0,
            "policies": [{"type": "Pods", "value": 1, "period_s": 60}],
        }
    }
    policy = hpa(behavior=one_pod_a_minute)
    assert replicas_after(policy, observe(0.0, cpu_pods(10, 0.8), hi=5)) == 5  # -5 event
    # The policy allows 10 - 1 = 9 from the period start, above the current 5: hold at 5.
    assert replicas_after(policy, observe(15.0, cpu_pods(5, 0.01), hi=5)) == 5


def test_hpa_disabled_scale_down_never_removes_pods() -> None:
    never_down = {"scale_down": {"stabilization_window_s": 0, "select_policy": "Disabled"}}
    policy = hpa(behavior=never_down)
    for step in range(5):
        assert replicas_after(policy, observe(15.0 * step, cpu_pods(4, 0.01))) == 4


def test_hpa_without_behavior_field_limits_scale_up_to_double_or_four() -> None:
    # Legacy normalizeDesiredReplicas: max(2 * 1, 4) = 4 instead of the behavior default 5.
    policy = hpa(spec_has_behavior=False)
    assert replicas_after(policy, observe(0.0, cpu_pods(1, 10.0))) == 4


# -- missing metrics and unready pods ------------------------------------------------------


def test_hpa_missing_metrics_count_as_zero_on_scale_up() -> None:
    # 160 % on the reporting pod alone would double; with the missing pod at 0 it is 80 %.
    assert replicas_after(hpa(), observe(0.0, [pod("a", cpu=1.6), pod("b")])) == 2
    # 240 % -> recomputed 120 % -> 1.5 * 2 pods = 3.
    assert replicas_after(hpa(), observe(0.0, [pod("a", cpu=2.4), pod("b")])) == 3


def test_hpa_missing_metrics_count_as_full_request_on_scale_down() -> None:
    # 25 % on 3 pods alone -> 1; with the 4th at 100 %: 43 % -> 0.5375 * 4 = 2.15 -> 3.
    pods = [*cpu_pods(3, 0.25), pod("missing")]
    assert replicas_after(hpa(behavior=NO_DOWN_WINDOW), observe(0.0, pods)) == 3


def test_hpa_missing_metrics_count_as_target_when_target_exceeds_100_percent() -> None:
    # Target 150 %: the missing pod is assumed at 150 % -> 90 % -> 0.6 * 2 = 1.2 -> hold 2.
    policy = hpa(target_cpu_utilization_percent=150, behavior=NO_DOWN_WINDOW)
    assert replicas_after(policy, observe(0.0, [pod("a", cpu=0.3), pod("missing")])) == 2


def test_hpa_does_not_scale_when_missing_metrics_flip_the_direction() -> None:
    # 70 % says scale down; with 3 missing pods at 100 % it becomes 92 %: a flip, so hold.
    pods = [pod("a", cpu=0.7), pod("b"), pod("c"), pod("d")]
    assert replicas_after(hpa(behavior=NO_DOWN_WINDOW), observe(0.0, pods)) == 4


def test_hpa_does_not_scale_up_when_the_counted_pods_flip_the_direction() -> None:
    # spec.replicas is 2 while 4 pods still exist: 50 % with the missing pod at 100 % gives
    # 62 % -> 0.775 * 4 = 3.1 -> 4, above 2 although the usage says scale down: hold.
    pods = [*cpu_pods(3, 0.5), pod("missing")]
    assert replicas_after(hpa(behavior=NO_DOWN_WINDOW), observe(0.0, pods, desired=2)) == 2


def pending(name: str) -> PodMetrics:
    return pod(name, ready=False, start=-5.0, ready_at=None)


def test_hpa_unready_pods_count_as_zero_on_scale_up() -> None:
    # 110 % on 3 ready pods (alone: 1.375 * 3 -> 5); with 1 pending pod at 0: 82 % over
    # 4 pods -> inside the band, hold.
    pods = [*cpu_pods(3, 1.1), pending("x")]
    assert replicas_after(hpa(), observe(0.0, pods)) == 4
    # 160 % on 3 ready pods -> 120 % over 4 pods, outside the band -> 1.5 * 4 = 6.
    pods = [*cpu_pods(3, 1.6), pending("x")]
    assert replicas_after(hpa(), observe(0.0, pods)) == 6


def test_hpa_unready_pods_are_ignored_on_scale_down() -> None:
    # 20 % on the 2 ready pods -> 0.25 * 2 ready pods = 1; the pending pods do not count.
    pods = [*cpu_pods(2, 0.2), pending("x"), pending("y")]
    assert replicas_after(hpa(behavior=NO_DOWN_WINDOW), observe(0.0, pods)) == 1


@pytest.mark.parametrize(("ready_at", "expected"), [(-5.0, 2), (-20.0, 5)])
def test_hpa_ignores_cpu_sample_taken_within_one_window_of_turning_ready(
    ready_at: float, expected: int
) -> None:
    # Pod "new" started 60 s ago (inside the 5 min CPU initialization period) and burns 3 cores.
    # Ready 5 s ago: less than one 15 s metric window, its sample is set aside -> hold at 2.
    # Ready 20 s ago: it counts -> 190 % -> 2.375 * 2 = 4.75 -> 5.
    pods = [pod("old", cpu=0.8), pod("new", cpu=3.0, start=-60.0, ready_at=ready_at)]
    assert replicas_after(hpa(), observe(0.0, pods)) == expected


@pytest.mark.parametrize(("ready_at", "expected"), [(None, 2), (-900.0, 5)])
def test_hpa_after_initialization_ignores_only_never_ready_unready_pods(
    ready_at: float | None, expected: int
) -> None:
    pods = [pod("ok", cpu=0.8), pod("sick", cpu=3.0, ready=False, start=-1000.0, ready_at=ready_at)]
    assert replicas_after(hpa(), observe(0.0, pods)) == expected


def test_hpa_does_not_scale_without_any_metrics() -> None:
    action = hpa().decide(observe(0.0, [pod("a"), pod("b")]))
    assert action.is_noop()
    assert "did not receive metrics" in action.reason


# -- bounds and period ---------------------------------------------------------------------


def test_hpa_clamps_recommendation_to_max_replicas() -> None:
    assert replicas_after(hpa(), observe(0.0, cpu_pods(1, 10.0), hi=3)) == 3


def test_hpa_never_goes_below_min_replicas() -> None:
    assert replicas_after(hpa(behavior=NO_DOWN_WINDOW), observe(0.0, cpu_pods(4, 0.01), lo=2)) == 2


def test_hpa_brings_replicas_outside_min_max_back_at_once() -> None:
    assert replicas_after(hpa(), observe(0.0, cpu_pods(12, 0.8), hi=10)) == 10
    assert replicas_after(hpa(), observe(0.0, cpu_pods(1, 0.8), lo=3)) == 3


def test_hpa_reconciles_once_per_sync_period() -> None:
    policy = hpa()
    actions = [policy.decide(observe(t, cpu_pods(2, 1.6))) for t in (0.0, 5.0, 10.0, 15.0)]
    assert [a.desired_replicas for a in actions] == [4, None, None, 4]
    assert policy.period_s == 15.0


def test_hpa_reset_forgets_past_scale_events() -> None:
    one_pod_a_minute = {"scale_up": {"policies": [{"type": "Pods", "value": 1, "period_s": 60}]}}
    policy = hpa(behavior=one_pod_a_minute)
    assert replicas_after(policy, observe(0.0, cpu_pods(1, 10.0))) == 2
    assert replicas_after(policy, observe(15.0, cpu_pods(2, 10.0))) == 2  # limited by t=0
    policy.reset()
    assert replicas_after(policy, observe(30.0, cpu_pods(2, 10.0))) == 3
