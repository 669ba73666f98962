"""Kubernetes HorizontalPodAutoscaler (autoscaling/v2) reproduced as a pure policy.

Follows upstream ``pkg/controller/podautoscaler`` — ``replica_calculator.go`` (pod grouping,
missing/unready rules, tolerance) and ``horizontal.go`` (reconcile, stabilization windows,
rate-limit policies) — and the docs page "Horizontal Pod Autoscaling" (sections "Algorithm
details" and "Configurable scaling behavior"). One algorithm, two metric sources:

* ``cpu``: Resource metric ``cpu``, target ``averageUtilization`` (default 80 %);
  utilization = sum(usage) / sum(requests) over the pods that count, in integer percent.
* ``queue_time``: Pods metric ``queue_time_avg_s`` with target ``averageValue`` — Triton's
  recipe of scaling on average queue time per request (e.g. 50 ms).

Values are handled as upstream does, in integer milli-units (``Quantity.MilliValue``).
Time comes only from :attr:`Observation.time_s`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ecrl.config import bounds
from ecrl.policies.base import Action, Observation, PodMetrics

SYNC_PERIOD_S = 15.0
"""kube-controller-manager ``--horizontal-pod-autoscaler-sync-period`` default 15s (HPA docs)."""
TOLERANCE = 0.1
"""``--horizontal-pod-autoscaler-tolerance`` default 0.1 (HPA docs, "Algorithm details")."""
CPU_INITIALIZATION_PERIOD_S = 300.0
"""``--horizontal-pod-autoscaler-cpu-initialization-period`` default 5m (HPA docs)."""
INITIAL_READINESS_DELAY_S = 30.0
"""``--horizontal-pod-autoscaler-initial-readiness-delay`` default 30s (HPA docs)."""
DOWNSCALE_STABILIZATION_S = 300
"""``--horizontal-pod-autoscaler-downscale-stabilization`` default 5m; also the scaleDown
``stabilizationWindowSeconds`` default (HPA docs, "Default Behavior")."""
DEFAULT_CPU_UTILIZATION_PERCENT = 80
"""Server-side default target (``pkg/apis/autoscaling/v1/defaults.go`` and v2 ``defaults.go``:
80 %), which ``kubectl autoscale`` gets when ``--cpu-percent`` is not given ("If it's not
specified or negative, a default autoscaling policy will be used")."""
METRICS_WINDOW_S = 15.0
"""metrics-server ``--metric-resolution=15s`` in its release manifest: the ``window`` of a
PodMetrics sample, used by the CPU readiness rule of ``groupPods``."""
LEGACY_SCALE_UP_FACTOR = 2.0
LEGACY_SCALE_UP_MINIMUM = 4.0
"""``scaleUpLimitFactor`` / ``scaleUpLimitMinimum`` in horizontal.go, used only when the HPA
spec has no ``behavior`` field (``normalizeDesiredReplicas``)."""

MetricName = Literal["cpu", "queue_time"]
SelectPolicy = Literal["Max", "Min", "Disabled"]


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """One ``HPAScalingPolicy``: change at most ``value`` Pods or Percent per ``period_s``."""

    type: Literal["Pods", "Percent"]
    value: int = field(metadata=bounds(1, None, "upstream validation: value > 0"))
    period_s: int = field(metadata=bounds(1, 1800, "periodSeconds; upstream allows (0, 1800]"))


@dataclass(frozen=True, slots=True)
class ScaleUpRules:
    """``behavior.scaleUp``; defaults are upstream's (``autoscaling/v2`` ``defaults.go``)."""

    stabilization_window_s: int = field(default=0, metadata=bounds(0, 3600, "upstream range"))
    select_policy: SelectPolicy = "Max"
    policies: tuple[ScalingPolicy, ...] = (
        ScalingPolicy("Percent", 100, 15),
        ScalingPolicy("Pods", 4, 15),
    )

    def validate(self) -> None:
        if not self.policies:
            raise ValueError("policies: list at least one policy")


@dataclass(frozen=True, slots=True)
class ScaleDownRules:
    """``behavior.scaleDown``; defaults are upstream's (300 s window, 100 % per 15 s)."""

    stabilization_window_s: int = field(
        default=DOWNSCALE_STABILIZATION_S, metadata=bounds(0, 3600, "upstream range")
    )
    select_policy: SelectPolicy = "Max"
    policies: tuple[ScalingPolicy, ...] = (ScalingPolicy("Percent", 100, 15),)

    def validate(self) -> None:
        if not self.policies:
            raise ValueError("policies: list at least one policy")


@dataclass(frozen=True, slots=True)
class HpaBehavior:
    """The HPA ``spec.behavior`` field; unset parts take upstream defaults."""

    scale_up: ScaleUpRules = ScaleUpRules()
    scale_down: ScaleDownRules = ScaleDownRules()


@dataclass(frozen=True, slots=True)
class HpaConfig:
    """One HPA object plus the kube-controller-manager flags that shape it."""

    metric: MetricName = "cpu"
    """``cpu``: Resource metric, averageUtilization; ``queue_time``: Pods metric, averageValue."""
    target_cpu_utilization_percent: int = field(
        default=DEFAULT_CPU_UTILIZATION_PERCENT, metadata=bounds(1, 1000, "percent of request")
    )
    target_queue_time_s: float = field(
        default=0.05, metadata=bounds(0.001, 60.0, "average queue time per request, seconds")
    )
    behavior: HpaBehavior = HpaBehavior()
    """``spec.behavior``; ignored when ``spec_has_behavior`` is false."""
    spec_has_behavior: bool = True
    """False reproduces an HPA whose spec has no ``behavior`` field (as ``kubectl autoscale``
    creates): upstream then takes the legacy ``normalizeDesiredReplicas`` path."""
    sync_period_s: float = field(default=SYNC_PERIOD_S, metadata=bounds(1.0, 600.0, "seconds"))
    tolerance: float = field(default=TOLERANCE, metadata=bounds(0.0, 1.0, "usage-ratio band"))
    cpu_initialization_period_s: float = field(
        default=CPU_INITIALIZATION_PERIOD_S, metadata=bounds(0.0, 3600.0, "seconds")
    )
    initial_readiness_delay_s: float = field(
        default=INITIAL_READINESS_DELAY_S, metadata=bounds(0.0, 3600.0, "seconds")
    )
    metrics_window_s: float = field(
        default=METRICS_WINDOW_S, metadata=bounds(0.0, 600.0, "metrics-server sample window")
    )
    downscale_stabilization_s: float = field(
        default=float(DOWNSCALE_STABILIZATION_S),
        metadata=bounds(0.0, 3600.0, "window of the legacy path (no spec.behavior)"),
    )


def _milli(value: float) -> int:
    """``Quantity.MilliValue()``: the value in milli-units, rounded up (as metrics-server's)."""
    return math.ceil(round(value * 1000.0, 6))


def _adapter_milli(value: float) -> int:
    """prometheus-adapter's ``NewMilliQuantity(int64(value*1000.0))``: truncated milli-units."""
    return int(value * 1000.0)


@dataclass(frozen=True, slots=True)
class PodGroups:
    """``groupPods`` output: metric values of the counted pods and the set-aside pod names."""

    metrics: dict[str, int]
    ready_count: int
    unready: tuple[str, ...]
    missing: tuple[str, ...]


def group_pods(
    pods: tuple[PodMetrics, ...], values: dict[str, int | None], now_s: float, cfg: HpaConfig
) -> PodGroups:
    """Split pods as upstream ``groupPods`` does: counted, unready (set aside) and missing.

    A pod that is not ready, was never ready and has no metric stands for upstream's
    ``Pending`` phase (the observation has no phase). The CPU-only readiness rules use
    ``Observation.time_s`` as the metric timestamp.
    """
    metrics: dict[str, int] = {}
    unready: list[str] = []
    missing: list[str] = []
    for pod in pods:
        value = values[pod.name]
        if value is None and not pod.ready and pod.ready_time_s is None:
            unready.append(pod.name)  # Pending pods are set aside ("unreadyPods")
            continue
        if value is None:
            missing.append(pod.name)
            continue
        if cfg.metric == "cpu" and _cpu_sample_unready(pod, now_s, cfg):
            unready.append(pod.name)
            continue
        metrics[pod.name] = value
    return PodGroups(metrics, len(metrics), tuple(unready), tuple(missing))


def _cpu_sample_unready(pod: PodMetrics, now_s: float, cfg: HpaConfig) -> bool:
    """CPU rule of ``groupPods``: ignore samples taken while the pod was still initializing."""
    if now_s < pod.start_time_s + cfg.cpu_initialization_period_s:
        # Unready, or not one full metric window collected since the pod turned Ready.
        return not pod.ready or (
            pod.ready_time_s is not None and now_s < pod.ready_time_s + cfg.metrics_window_s
        )
    # After the period: ignore an unready pod whose Ready condition last changed within the
    # initial readiness delay after its start. The observation has no transition time: a
    # never-ready pod's condition dates from its start, otherwise ready_time_s bounds it.
    last_transition_s = pod.start_time_s if pod.ready_time_s is None else pod.ready_time_s
    return not pod.ready and pod.start_time_s + cfg.initial_readiness_delay_s > last_transition_s


def replica_count(
    groups: PodGroups,
    current: int,
    tolerance: float,
    ratio_of: Callable[[dict[str, int]], float],
    down_fill: int,
) -> int:
    """``GetResourceReplicas`` / ``calcPlainMetricReplicas`` after grouping (upstream order).

    ``ratio_of`` turns per-pod milli-values into the usage ratio; ``down_fill`` is the value
    assumed for pods with missing metrics when scaling down.
    """

    def within(ratio: float) -> bool:
        return 1.0 - tolerance <= ratio <= 1.0 + tolerance

    metrics = dict(groups.metrics)
    usage_ratio = ratio_of(metrics)
    scale_up_with_unready = bool(groups.unready) and usage_ratio > 1.0
    if not scale_up_with_unready and not groups.missing:
        if within(usage_ratio):
            return current
        return math.ceil(usage_ratio * groups.ready_count)
    if groups.missing:
        if usage_ratio < 1.0:  # scale-down: missing pods use 100 % of request / the target
            metrics.update(dict.fromkeys(groups.missing, down_fill))
        elif usage_ratio > 1.0:  # scale-up: missing pods use 0
            metrics.update(dict.fromkeys(groups.missing, 0))
    if scale_up_with_unready:  # scale-up: unready pods use 0
        metrics.update(dict.fromkeys(groups.unready, 0))
    new_ratio = ratio_of(metrics)
    flipped = (usage_ratio < 1.0 < new_ratio) or (usage_ratio > 1.0 > new_ratio)
    if within(new_ratio) or flipped:
        return current
    new_replicas = math.ceil(new_ratio * len(metrics))
    if (new_ratio < 1.0 and new_replicas > current) or (new_ratio > 1.0 and new_replicas < current):
        return current  # the changed pod count would flip the direction
    return new_replicas


@dataclass(slots=True)
class _Timed:
    """A timestamped integer: a recommendation or a scale event's replica change."""

    time_s: float
    value: int


def _store(samples: list[_Timed], now_s: float, value: int, old_before_s: float) -> None:
    """Reuse the last slot older than ``old_before_s`` or append (upstream's bookkeeping)."""
    old = [i for i, s in enumerate(samples) if s.time_s < old_before_s]
    if old:
        samples[old[-1]] = _Timed(now_s, value)
    else:
        samples.append(_Timed(now_s, value))


def _change_in_period(events: list[_Timed], now_s: float, period_s: int) -> int:
    """``getReplicasChangePerPeriod``: replicas changed by events newer than the period."""
    return sum(e.value for e in events if e.time_s > now_s - period_s)


class HpaPolicy:
    """The HPA controller for one Deployment: one reconcile every ``sync_period_s`` seconds."""

    def __init__(self, config: HpaConfig | None = None, name: str | None = None) -> None:
        self.config = config or HpaConfig()
        self.name = name or ("hpa-cpu" if self.config.metric == "cpu" else "hpa-queue")
        self.period_s = self.config.sync_period_s
        self.reset()

    def reset(self) -> None:
        """Forget recommendations, scale events and the sync schedule."""
        self._recommendations: list[_Timed] = []
        self._initial_recorded = False
        self._up_events: list[_Timed] = []
        self._down_events: list[_Timed] = []
        self._next_sync_s: float | None = None

    def decide(self, obs: Observation) -> Action:
        """Run ``reconcileAutoscaler`` if a sync is due, else return a no-op."""
        now = obs.time_s
        if self._next_sync_s is not None and now < self._next_sync_s - 1e-9:
            return Action(reason="hpa: waiting for the next sync period")
        self._next_sync_s = now + self.period_s
        current, lo, hi = obs.desired_replicas, obs.min_replicas, obs.max_replicas
        if not self._initial_recorded:  # recordInitialRecommendation
            self._recommendations.append(_Timed(now, current))
            self._initial_recorded = True
        if current == 0 and lo != 0:
            return Action(reason="hpa: scaling disabled since the replica count is zero")
        if current > hi:
            desired, why = hi, "current replicas above maxReplicas"
        elif current < lo:
            desired, why = lo, "current replicas below minReplicas"
        else:
            proposal, why = self._metric_replicas(obs, current)
            if proposal is None:
                return Action(reason=f"hpa: {why}; not scaling")
            desired, limit = self._normalize(now, current, proposal, lo, hi)
            why = f"{why} -> {proposal}, {limit}"
        if desired == current:
            return Action(reason=f"hpa: {why}; stay at {current}")
        self._store_scale_event(now, current, desired)
        return Action(desired_replicas=desired, reason=f"hpa: {why}; {current} -> {desired}")

    # -- replica calculator -------------------------------------------------------------

    def _metric_replicas(self, obs: Observation, current: int) -> tuple[int | None, str]:
        """Proposed replicas from the metric, or None (upstream returns an error) and why."""
        cfg = self.config
        if not obs.pods:
            return None, "no pods returned by selector"
        if cfg.metric == "cpu":
            request_m = _milli(obs.cpu_request_cores)
            if request_m <= 0:
                return None, "missing request for cpu"
            target = cfg.target_cpu_utilization_percent
            values = {
                p.name: None if p.cpu_usage_cores is None else _milli(p.cpu_usage_cores)
                for p in obs.pods
            }

            def usage_of(m: dict[str, int]) -> int:
                # GetResourceUtilizationRatio: integer percent of the summed requests.
                return (sum(m.values()) * 100) // (request_m * len(m))

            down_fill = request_m * max(100, target) // 100
            label = "cpu utilization %"
        else:
            target = _milli(cfg.target_queue_time_s)
            values = {
                p.name: None if p.queue_time_avg_s is None else _adapter_milli(p.queue_time_avg_s)
                for p in obs.pods
            }

            def usage_of(m: dict[str, int]) -> int:
                # GetMetricUsageRatio: integer average over the pods, in milli-seconds.
                return sum(m.values()) // len(m)

            down_fill = target
            label = "queue time ms"
        groups = group_pods(obs.pods, values, obs.time_s, cfg)
        if not groups.metrics:
            return None, "did not receive metrics for targeted pods (pods might be unready)"
        proposal = replica_count(
            groups, current, cfg.tolerance, lambda m: usage_of(m) / target, down_fill
        )
        return proposal, f"{label} {usage_of(groups.metrics)} vs target {target}"

    # -- horizontal.go normalization ----------------------------------------------------

    def _normalize(
        self, now: float, current: int, desired: int, lo: int, hi: int
    ) -> tuple[int, str]:
        """Stabilize, then rate-limit and clamp; legacy path without ``spec.behavior``."""
        behavior = self.config.behavior
        if not self.config.spec_has_behavior:
            return self._normalize_legacy(now, current, desired, lo, hi)
        stabilized = self._stabilize(now, current, desired, behavior)
        if stabilized > current:
            limit = self._rate_limit(now, current, behavior.scale_up)
            limit = max(limit, current)
            allowed = min(hi, limit)
            if stabilized > allowed:
                return allowed, ("ScaleUpLimit" if limit < hi else "TooManyReplicas")
        elif stabilized < current:
            limit = self._rate_limit(now, current, behavior.scale_down)
            limit = min(limit, current)
            allowed = max(lo, limit)
            if stabilized < allowed:
                return allowed, ("ScaleDownLimit" if lo < limit else "TooFewReplicas")
        if stabilized == desired:
            return stabilized, "DesiredWithinRange"
        return stabilized, ("ScaleUpStabilized" if desired >= current else "ScaleDownStabilized")

    def _stabilize(self, now: float, current: int, desired: int, behavior: HpaBehavior) -> int:
        """``stabilizeRecommendationWithBehaviors``: min over the up window, max over the down."""
        recs = self._recommendations
        up_cutoff = now - behavior.scale_up.stabilization_window_s
        down_cutoff = now - behavior.scale_down.stabilization_window_s
        up_rec = min([desired] + [r.value for r in recs if r.time_s > up_cutoff])
        down_rec = max([desired] + [r.value for r in recs if r.time_s > down_cutoff])
        _store(recs, now, desired, min(up_cutoff, down_cutoff))
        return min(max(current, up_rec), down_rec)

    def _rate_limit(self, now: float, current: int, rules: ScaleUpRules | ScaleDownRules) -> int:
        """``calculateScaleUpLimitWithScalingRules`` / ``calculateScaleDownLimitWithBehaviors``:
        the policies' bounds from the replica count at the start of each policy's period."""
        if rules.select_policy == "Disabled":
            return current
        up = isinstance(rules, ScaleUpRules)
        proposals = []
        for p in rules.policies:
            start = (
                current
                - _change_in_period(self._up_events, now, p.period_s)
                + _change_in_period(self._down_events, now, p.period_s)
            )
            if p.type == "Pods":
                proposals.append(start + p.value if up else start - p.value)
            elif up:  # rounded up so that a small Percent can still add a pod
                proposals.append(math.ceil(start * (1 + p.value / 100)))
            else:  # the int32() conversion truncates toward zero
                proposals.append(int(start * (1 - p.value / 100)))
        # "Max" selects the largest change: the highest bound up, the lowest bound down.
        pick_high = (rules.select_policy == "Max") == up
        return max(proposals) if pick_high else min(proposals)

    def _normalize_legacy(
        self, now: float, current: int, desired: int, lo: int, hi: int
    ) -> tuple[int, str]:
        """``normalizeDesiredReplicas``: max over the downscale window, then at most
        ``max(2 * current, 4)`` and within [minReplicas, maxReplicas]."""
        recs = self._recommendations
        cutoff = now - self.config.downscale_stabilization_s
        stabilized = max([desired] + [r.value for r in recs if r.time_s >= cutoff])
        _store(recs, now, desired, cutoff)
        up_limit = int(max(LEGACY_SCALE_UP_FACTOR * current, LEGACY_SCALE_UP_MINIMUM))
        allowed_max = min(hi, up_limit)
        if stabilized < lo:
            return lo, "TooFewReplicas"
        if stabilized > allowed_max:
            return allowed_max, ("ScaleUpLimit" if up_limit < hi else "TooManyReplicas")
        return stabilized, "DesiredWithinRange"

    def _store_scale_event(self, now: float, current: int, desired: int) -> None:
        """``storeScaleEvent``: remember the change for the rate-limit policies."""
        behavior = self.config.behavior
        if not self.config.spec_has_behavior:
            return  # upstream stores no events without a behavior field
        if desired > current:
            longest = max(p.period_s for p in behavior.scale_up.policies)
            _store(self._up_events, now, desired - current, now - longest)
        else:
            longest = max(p.period_s for p in behavior.scale_down.policies)
            _store(self._down_events, now, current - desired, now - longest)
