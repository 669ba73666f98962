"""One tick = query Prometheus, read Triton's model config, build, encode, keep.

:class:`Collector` owns the loop (a stoppable background thread, one tick per period) and the
:class:`StateStore` (the last N states; readers get immutable :class:`State` objects, so the
gRPC and HTTP handlers never block a tick nor see half a state — Trimaran's snapshot pattern).

A tick whose required inputs are missing or stale produces **no** state: the store keeps the
previous one, the API serves it with its age and the reason the newest tick was stale, and
``ecrl_collector_ticks_total{outcome="stale"}`` counts it. Consumers (the actuator) decide
from the age whether the state is still usable (the envelope holds on stale input).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ecrl import schema
from ecrl.policies.base import Observation

from .config import CollectorConfig
from .metrics import CollectorMetrics
from .observation import (
    OPTIONAL_FIELDS,
    POD_FIELDS,
    Batching,
    BuildInput,
    ChangeTracker,
    Settings,
    StaleInputs,
    build,
    to_box_time,
)
from .queries import REQUIRED, Query, ksm_resource, render
from .sources import Fetched, SourceError

log = logging.getLogger("ecrl.collector")

HISTORY_WINDOW_S = 660
"""Generation history read per tick: 11 min, so that "no change for 10 min" (the schema's
:data:`ecrl.schema.AGE_CAP_S`) can be seen in full."""
TRITON_INPUT = "triton_model_config"


@dataclass(frozen=True)
class State:
    """One produced state (immutable; shared by every reader)."""

    tick: int
    values: np.ndarray
    """The encoded state (float32, :data:`ecrl.schema.STATE_DIM` long)."""
    missing_inputs: tuple[str, ...]
    observed_at_s: float
    """Newest Prometheus sample used (unix s)."""
    produced_at_s: float
    observation: Observation
    diagnostics: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class TickResult:
    """What one tick did: a new state, or why not."""

    state: State | None
    stale_inputs: tuple[str, ...]
    query_errors: dict[str, str]
    duration_s: float


class QuerySource(Protocol):
    def fetch(self, queries: Sequence[Query], eval_time_s: float) -> Fetched: ...


class StateStore:
    """The last ``size`` states; a condition wakes watchers on each new one."""

    def __init__(self, size: int) -> None:
        self._states: deque[State] = deque(maxlen=size)
        self._cond = threading.Condition()
        self._closed = False
        self.last_stale: tuple[str, ...] = ()
        """Required inputs that made the newest tick stale (empty: it produced a state)."""
        self.last_attempt_s: float | None = None

    def put(self, state: State) -> None:
        with self._cond:
            self._states.append(state)
            self.last_stale = ()
            self._cond.notify_all()

    def mark_stale(self, missing: tuple[str, ...]) -> None:
        with self._cond:
            self.last_stale = missing

    def latest(self) -> State | None:
        with self._cond:
            return self._states[-1] if self._states else None

    def all(self) -> list[State]:
        with self._cond:
            return list(self._states)

    def wait_newer(self, tick: int, timeout_s: float) -> State | None:
        """The latest state if its tick is above ``tick``, waiting up to ``timeout_s``."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or (bool(self._states) and self._states[-1].tick > tick),
                timeout=timeout_s,
            )
            if self._states and self._states[-1].tick > tick:
                return self._states[-1]
            return None

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake every watcher for good (server shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Collector:
    """Produces one state per tick from Prometheus and Triton (sources injected)."""

    def __init__(
        self,
        config: CollectorConfig,
        prometheus: QuerySource,
        triton: Callable[[], Batching],
        metrics: CollectorMetrics | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.prometheus = prometheus
        self.triton = triton
        self.metrics = metrics or CollectorMetrics()
        self.clock = clock
        self.timer = timer
        self.store = StateStore(config.history)
        self.settings = Settings(
            config.min_replicas, config.max_replicas, config.slo_p95_s, config.gpu_node_label
        )
        self.queries = render(
            {
                "namespace": config.namespace,
                "deployment": config.deployment,
                "model": config.model,
                "window": f"{config.rate_window_s:g}s",
                "history": f"{HISTORY_WINDOW_S}s",
                "gpu_resource": ksm_resource(config.gpu_resource),
                "gpu_node_label": config.gpu_node_label,
            }
        )
        self.changes = ChangeTracker()
        self._ticks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_tick: Callable[[TickResult], None] | None = None
        """Called after every tick (the server updates gRPC health from it)."""
        self.metrics.age_from(self.state_age_s)

    # ------------------------------------------------------------------------------ a tick
    def tick(self) -> TickResult:
        """Run one tick now; never raises for a source failure (it becomes a missing input)."""
        start = self.timer()
        now_s = self.clock()
        fetched = self.prometheus.fetch(self.queries, now_s)
        errors = dict(fetched.errors)
        try:
            batching: Batching | None = self.triton()
        except SourceError as exc:
            batching = None
            errors[TRITON_INPUT] = str(exc)
        for name in errors:
            self.metrics.query_errors.labels(name).inc()
        inp = BuildInput(
            fetched.results,
            batching,
            self.settings,
            now_s,
            self.config.stale_after_s,
            self.changes.update(batching, now_s),
        )
        state: State | None = None
        stale: tuple[str, ...] = ()
        try:
            built = to_box_time(build(inp), self.config.time_scale)
        except StaleInputs as exc:
            stale = exc.missing
            self.store.mark_stale(stale)
            self.metrics.ticks.labels("stale").inc()
            self.metrics.set_missing(self._known_inputs(), stale)
            log.warning(
                "tick stale: no state",
                extra={"missing_required": list(stale), "query_errors": errors},
            )
        else:
            self._ticks += 1
            state = State(
                tick=self._ticks,
                values=schema.encode(built.observation),
                missing_inputs=built.missing_inputs,
                observed_at_s=built.observed_at_s,
                produced_at_s=now_s,
                observation=built.observation,
                diagnostics=built.diagnostics,
            )
            self.store.put(state)
            self.metrics.ticks.labels("state").inc()
            self.metrics.state_tick.set(state.tick)
            self.metrics.set_missing(self._known_inputs(), _input_names(built.missing_inputs))
            log.debug(
                "state",
                extra={"tick": state.tick, "missing": list(state.missing_inputs)},
            )
        self.store.last_attempt_s = now_s
        duration = self.timer() - start
        self.metrics.tick_seconds.observe(duration)
        result = TickResult(state, stale, errors, duration)
        if self.on_tick is not None:
            self.on_tick(result)
        return result

    def _known_inputs(self) -> tuple[str, ...]:
        return (*REQUIRED, TRITON_INPUT, *OPTIONAL_FIELDS, *POD_FIELDS, "request_rate_rps")

    def state_age_s(self) -> float | None:
        """Seconds since the newest sample of the latest state (None: no state yet)."""
        state = self.store.latest()
        return None if state is None else max(self.clock() - state.observed_at_s, 0.0)

    # ------------------------------------------------------------------------------ the loop
    def run(self) -> None:
        """Tick every ``period_s`` until :meth:`stop`; an overrun skips the missed slots."""
        period = self.config.period_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug must not end the loop: logged, and the next tick tries
                log.exception("tick failed")
            next_at += period
            now = time.monotonic()
            if now > next_at:
                next_at += period * ((now - next_at) // period + 1)
            self._stop.wait(next_at - now)

    def start(self) -> None:
        """Run the loop in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="collector", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the loop (the tick in progress finishes) and wake every watcher."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.store.close()


def _input_names(missing: Sequence[str]) -> set[str]:
    """``field@pod`` → ``field`` (the metric has one series per input, not per pod)."""
    return {m.split("@", 1)[0] for m in missing}
