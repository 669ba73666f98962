"""A Knative-KPA-like concurrency autoscaler with stable and panic modes, as a pure policy.

Follows knative/serving ``pkg/autoscaler/scaling/autoscaler.go`` (``Scale``) and the
``config-autoscaler`` ConfigMap docs ("Additional autoscaling configuration for Knative Pod
Autoscaler"). The observed value is the revision's total in-flight requests: the mean of
``PodMetrics.concurrency`` over ready pods that report it, times the ready-pod count (the
scraper's "one pod stands for the others" rule in ``pkg/autoscaler/metrics/stats_scraper.go``).
It is averaged over a stable window (60 s) and a panic window (10 % of it). No scale-to-zero:
a GPU model server keeps at least one replica. Time comes only from ``Observation.time_s``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ecrl.config import bounds
from ecrl.policies.base import Action, Observation

CONTAINER_CONCURRENCY_TARGET = 100.0
"""``container-concurrency-target-default: "100"`` (config-autoscaler)."""
TARGET_UTILIZATION_PERCENT = 70.0
"""``container-concurrency-target-percentage: "70"`` (config-autoscaler;
``defaultTargetUtilization = 0.7`` in ``pkg/autoscaler/config``)."""
STABLE_WINDOW_S = 60.0
"""``stable-window: "60s"``; allowed 6s..1h (KPA docs, "Stable window")."""
PANIC_WINDOW_PERCENT = 10.0
"""``panic-window-percentage: "10.0"``: panic window = 10 % of the stable window (6 s)."""
PANIC_THRESHOLD_PERCENT = 200.0
"""``panic-threshold-percentage: "200.0"``: panic when the panic-window demand is 2x ready pods."""
MAX_SCALE_UP_RATE = 1000.0
"""``max-scale-up-rate: "1000.0"`` (config-autoscaler)."""
MAX_SCALE_DOWN_RATE = 2.0
"""``max-scale-down-rate: "2.0"``: at most halve the ready pods per decision."""
TICK_S = 2.0
"""``tickInterval = 2 * time.Second`` in ``pkg/autoscaler/scaling/multiscaler.go``."""
TARGET_MIN = 0.01
"""``autoscaling.TargetMin``: the smallest target value per pod."""


@dataclass(frozen=True, slots=True)
class KpaConfig:
    """config-autoscaler keys of the KPA (concurrency metric) with knative's defaults."""

    container_concurrency_target: float = field(
        default=CONTAINER_CONCURRENCY_TARGET,
        metadata=bounds(TARGET_MIN, 10000.0, "requests in flight per pod at 100 %"),
    )
    """Knative's default suits HTTP servers; set it from the batch size for a GPU server."""
    target_utilization_percent: float = field(
        default=TARGET_UTILIZATION_PERCENT, metadata=bounds(1.0, 100.0, "percent")
    )
    stable_window_s: float = field(default=STABLE_WINDOW_S, metadata=bounds(6.0, 3600.0, "seconds"))
    panic_window_percent: float = field(
        default=PANIC_WINDOW_PERCENT, metadata=bounds(1.0, 100.0, "percent of stable window")
    )
    panic_threshold_percent: float = field(
        default=PANIC_THRESHOLD_PERCENT, metadata=bounds(110.0, 1000.0, "percent")
    )
    max_scale_up_rate: float = field(
        default=MAX_SCALE_UP_RATE, metadata=bounds(1.0, None, "must be > 1")
    )
    max_scale_down_rate: float = field(
        default=MAX_SCALE_DOWN_RATE, metadata=bounds(1.0, None, "must be > 1")
    )
    tick_s: float = field(default=TICK_S, metadata=bounds(0.1, 600.0, "seconds"))
    min_replicas: int = field(default=1, metadata=bounds(1, None, "no scale-to-zero"))

    def validate(self) -> None:
        if self.max_scale_up_rate <= 1.0:
            raise ValueError("max_scale_up_rate: must be > 1")
        if self.max_scale_down_rate <= 1.0:
            raise ValueError("max_scale_down_rate: must be > 1")

    @property
    def target_value(self) -> float:
        """Per-pod target concurrency: the container target times the utilization."""
        target = self.container_concurrency_target * self.target_utilization_percent / 100.0
        return max(TARGET_MIN, target)

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percent / 100.0


class KpaPolicy:
    """Knative's ``autoscaler.Scale`` run every ``tick_s``; samples on every call."""

    def __init__(self, config: KpaConfig | None = None, name: str = "kpa") -> None:
        self.config = config or KpaConfig()
        self.name = name
        self.period_s = self.config.tick_s
        self.reset()

    def reset(self) -> None:
        """Forget the metric windows, the panic state and the tick schedule."""
        self._samples: deque[tuple[float, float]] = deque()
        self._panic_since_s: float | None = None
        self._max_panic_pods = 0
        self._started = False
        self._next_tick_s: float | None = None

    @property
    def in_panic(self) -> bool:
        """Whether the autoscaler is in panic mode (only scales up)."""
        return self._panic_since_s is not None

    def decide(self, obs: Observation) -> Action:
        """Record the concurrency sample; on a due tick, compute the desired pod count."""
        now = obs.time_s
        self._record(obs)
        ready_count = obs.ready_replicas
        if not self._started:
            # newAutoscaler: start in panic mode when more than one pod is ready, so that a
            # restart with no metric history does not scale down at once.
            self._started = True
            if ready_count > 1:
                self._panic_since_s, self._max_panic_pods = now, ready_count
        if self._next_tick_s is not None and now < self._next_tick_s - 1e-9:
            return Action(reason="kpa: waiting for the next tick")
        self._next_tick_s = now + self.period_s
        stable = self._window_average(now, self.config.stable_window_s)
        if stable is None:
            return Action(reason="kpa: no data to scale on yet")
        panic = self._window_average(now, self.config.panic_window_s) or 0.0
        desired, mode = self._scale(now, stable, panic, ready_count)
        lo = max(self.config.min_replicas, obs.min_replicas)
        desired = min(max(desired, lo), obs.max_replicas)  # KPA reconciler's min/max bounds
        why = f"kpa {mode}: concurrency stable {stable:.2f}, panic {panic:.2f}"
        if desired == obs.desired_replicas:
            return Action(reason=f"{why}; stay at {desired}")
        return Action(
            desired_replicas=desired, reason=f"{why}; {obs.desired_replicas} -> {desired}"
        )

    def _record(self, obs: Observation) -> None:
        """Append the revision's total concurrency, as knative's scraper reports it."""
        reported = [p.concurrency for p in obs.pods if p.ready and p.concurrency is not None]
        if reported:
            self._samples.append((obs.time_s, sum(reported) / len(reported) * obs.ready_replicas))
        horizon = obs.time_s - self.config.stable_window_s
        while self._samples and self._samples[0][0] <= horizon:
            self._samples.popleft()

    def _window_average(self, now: float, window_s: float) -> float | None:
        """Mean of the samples in ``(now - window_s, now]``; None when there are none."""
        inside = [v for t, v in self._samples if t > now - window_s]
        return sum(inside) / len(inside) if inside else None

    def _scale(self, now: float, stable: float, panic: float, ready_count: int) -> tuple[int, str]:
        """``autoscaler.Scale`` from the windowed values: rate limits, then panic logic."""
        cfg = self.config
        ready = max(1.0, float(ready_count))  # use 1 if there are zero current pods
        max_up = math.ceil(cfg.max_scale_up_rate * ready)
        max_down = math.floor(ready / cfg.max_scale_down_rate)
        dspc = math.ceil(stable / cfg.target_value)
        dppc = math.ceil(panic / cfg.target_value)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))
        over_threshold = dppc / ready >= cfg.panic_threshold_percent / 100.0
        if over_threshold:
            self._panic_since_s = now  # begin panicking, or extend the panic window
        elif self._panic_since_s is not None and self._panic_since_s + cfg.stable_window_s < now:
            # stop panicking after the surge has made its way into the stable metric
            self._panic_since_s, self._max_panic_pods = None, 0
        if self._panic_since_s is None:
            return desired_stable, "stable"
        # In panic mode only increases are applied; the larger of the two proposals counts.
        self._max_panic_pods = max(self._max_panic_pods, desired_stable, desired_panic)
        return self._max_panic_pods, "panic"
