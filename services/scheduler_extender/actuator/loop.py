"""One control tick, pure over injected parts (collector, policy, applier, leadership, audit).

State → (stale? hold ``hold_ticks`` ticks, then fallback on no measurements) → envelope mask →
policy Decide →
decode → envelope clamp → apply (unless shadow) → one audit record. Every policy-server
failure (unreachable, NOT_SERVING, deadline, rejected state) and a schema mismatch make the
HPA-equivalent rule decide this tick instead, still behind the envelope; the reason is
audited, logged and counted. Nothing here raises for a dependency failure. A stale state's
measurements are old, not current: the fallback sees them as missing (as the HPA does when
the metrics API has nothing fresh: no scaling), and only the replica bounds are enforced.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from ecrl.actions import HEADS, decode
from ecrl.envelope import EnvelopeConfig, action_masks, clamp
from ecrl.errors import InvalidRequest, Permanent, Temporary
from ecrl.policies.base import Action, Observation
from ecrl.policies.hpa import HpaConfig, HpaPolicy
from ecrl.schema import SCHEMA_HASH
from services.policy_server.results import Decision, Fallback

from .metrics import ActuatorMetrics
from .state import Snapshot, StateUnavailable

log = logging.getLogger("ecrl.actuator")
SETTLED_FIELDS = (
    "max_batch_size",
    "batch_delay_s",
    "instance_count",
    "cpu_request_cores",
    "memory_request_bytes",
)
"""Settings read back from the (lagging) collector state; replicas are read live instead."""


@dataclass(frozen=True)
class OpResult:
    """One change attempted on the cluster: what, whether it worked, and the detail."""

    op: str
    """``replicas``, ``resize`` or ``triton_config``."""
    outcome: str
    """``ok``, ``fallback`` (done another way, e.g. rolling update) or ``error``."""
    detail: str = ""


class StateSource(Protocol):
    def get(self) -> Snapshot: ...


class PolicySource(Protocol):
    def decide(
        self, state_values: Sequence[float], mask: Sequence[bool] = (), *, tick: int = 0
    ) -> Decision: ...


class Applier(Protocol):
    def current_replicas(self) -> int | None:
        """The live spec.replicas (scale subresource), None when it cannot be read."""
        ...

    def apply(self, obs: Observation, action: Action) -> list[OpResult]:
        """Carry out every non-None setting of ``action``; errors come back as results."""
        ...

    def maintain(self) -> list[OpResult]:
        """Every leader tick (not in shadow): converge what drifted; errors as results."""
        ...


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...


class Auditor(Protocol):
    def write(self, record: TickRecord) -> None: ...


@dataclass(frozen=True)
class TickSettings:
    """What the loop needs from :class:`~.config.ActuatorConfig` (kept small for tests)."""

    min_replicas: int = 1
    max_replicas: int = 4
    hold_ticks: int = 2
    max_state_age_s: float = 15.0
    shadow: bool = False
    settle_s: float = 60.0
    """Longest wait for an applied resize/Triton change to show in the state before the
    setting may change again (a rolling update of a few pods takes tens of seconds)."""
    envelope: EnvelopeConfig = field(default_factory=EnvelopeConfig)


@dataclass(frozen=True)
class TickRecord:
    """Everything one tick saw and did (the audit line)."""

    tick: int
    time_s: float
    leader: bool
    shadow: bool
    outcome: str
    """``policy``, ``fallback``, ``hold`` or ``not_leader``."""
    reason: str
    snapshot: Snapshot | None = None
    state_problem: str = ""
    observation: Observation | None = None
    """The observation decided on (bounds and live replicas applied)."""
    decision: Decision | None = None
    raw_action: Action | None = None
    clamped_action: Action | None = None
    clamp_reasons: tuple[str, ...] = ()
    fallback_reason: str = ""
    ops: tuple[OpResult, ...] = ()
    duration_s: float = 0.0

    def raw_heads(self) -> dict[str, float] | None:
        """The policy's step per head (None when the fallback decided)."""
        if self.decision is None:
            return None
        return {h.name: h.steps[i] for h, i in zip(HEADS, self.decision.action, strict=True)}


def unmeasured(obs: Observation, now_s: float) -> Observation:
    """``obs`` at ``now_s`` with every measurement missing and the settings kept: what is known
    of the cluster when the metrics are stale (replicas live, requests and batching)."""
    pods = tuple(
        replace(
            p,
            cpu_usage_cores=None,
            queue_time_avg_s=None,
            concurrency=None,
            request_rate_rps=None,
            memory_usage_bytes=None,
        )
        for p in obs.pods
    )
    return replace(
        obs,
        time_s=now_s,
        pods=pods,
        request_rate_rps=None,
        p95_latency_s=None,
        success_ratio=None,
        gpu_util_ratio=None,
        vram_used_bytes=None,
    )


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


class _NoAudit:
    def write(self, record: TickRecord) -> None:
        pass


class Actuator:
    """The control loop's tick; :meth:`tick` never raises for a dependency failure."""

    def __init__(
        self,
        settings: TickSettings,
        state: StateSource,
        policy: PolicySource,
        applier: Applier,
        leadership: Leadership,
        audit: Auditor | None = None,
        metrics: ActuatorMetrics | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.settings = settings
        self.state = state
        self.policy = policy
        self.applier = applier
        self.leadership = leadership
        self.audit = audit or _NoAudit()
        self.metrics = metrics or ActuatorMetrics()
        self.clock = clock
        self.timer = timer
        # HPA-equivalent fallback: sync on every tick it is asked (the loop sets the pace).
        self.fallback = HpaPolicy(HpaConfig(sync_period_s=1.0), name="actuator-fallback")
        self.ticks = 0
        self.stale_ticks = 0
        self.last_snapshot: Snapshot | None = None
        self.in_flight: dict[str, tuple[float, float]] = {}
        """Setting → (target applied, when): changes the collector does not show yet."""

    # ------------------------------------------------------------------------------ a tick
    def tick(self) -> TickRecord:
        start = self.timer()
        self.ticks += 1
        leader = self.leadership.is_leader
        self.metrics.leader.set(1 if leader else 0)
        base = TickRecord(
            tick=self.ticks,
            time_s=self.clock(),
            leader=leader,
            shadow=self.settings.shadow,
            outcome="not_leader",
            reason="not the Lease holder: deciding nothing",
        )
        record = self._decide_and_apply(base) if leader else base
        if leader and not self.settings.shadow:
            record = replace(record, ops=record.ops + tuple(self.applier.maintain()))
        record = replace(record, duration_s=self.timer() - start)
        self._account(record)
        return record

    def _decide_and_apply(self, rec: TickRecord) -> TickRecord:
        snap, problem = self._read_state()
        rec = replace(rec, snapshot=snap, state_problem=problem)
        self.stale_ticks = self.stale_ticks + 1 if problem else 0
        if snap is None:
            return replace(rec, outcome="hold", reason=f"hold: {problem}; no state to act on")
        obs = self._effective(snap.observation)
        rec = replace(rec, observation=obs)
        if problem and self.stale_ticks <= self.settings.hold_ticks:
            why = f"hold {self.stale_ticks}/{self.settings.hold_ticks}: {problem}"
            return replace(rec, outcome="hold", reason=why)
        if problem:
            obs = unmeasured(obs, rec.time_s)  # audited as decided on: nothing measured
            rec = replace(rec, observation=obs)
            return self._finish(rec, obs, None, "stale_state", problem)
        if snap.schema_hash != SCHEMA_HASH:
            why = f"collector schema {snap.schema_hash[:12]} is not ours {SCHEMA_HASH[:12]}"
            return self._finish(rec, obs, None, "schema_mismatch", why)
        mask = action_masks(obs, self.settings.envelope)
        try:
            decision = self.policy.decide(snap.values, mask, tick=snap.tick)
        except Temporary as exc:  # PolicyUnavailable: unreachable, NOT_SERVING, deadline
            return self._finish(rec, obs, None, "policy_unavailable", str(exc))
        except InvalidRequest as exc:  # the server refused our state (schema, length)
            return self._finish(rec, obs, None, "policy_rejected_state", str(exc))
        except Permanent as exc:  # PolicyServerError
            return self._finish(rec, obs, None, "policy_error", str(exc))
        if decision.fallback is not Fallback.NONE:
            why = f"policy server answered from its heuristic ({decision.fallback.value})"
            return self._finish(rec, obs, decision, f"policy_{decision.fallback.value}", why)
        return self._finish(rec, obs, decision, "", "")

    def _read_state(self) -> tuple[Snapshot | None, str]:
        """The newest snapshot (or the last one seen) and why it is not usable ('' if it is)."""
        try:
            snap = self.state.get()
        except StateUnavailable as exc:
            return self.last_snapshot, f"state missing ({exc})"
        self.last_snapshot = snap
        if snap.stale:
            return snap, f"state stale (collector: {', '.join(snap.stale_inputs) or 'stale'})"
        if snap.age_s is None or snap.age_s > self.settings.max_state_age_s:
            return snap, f"state stale (age {snap.age_s} s > {self.settings.max_state_age_s} s)"
        return snap, ""

    def _effective(self, obs: Observation) -> Observation:
        """The actuator's bounds, and the live replica count (the collector lags a scrape):
        pods asked for but not yet seen are taken off the free GPU slots."""
        s = self.settings
        obs = replace(obs, min_replicas=s.min_replicas, max_replicas=s.max_replicas)
        live = self.applier.current_replicas()
        if live is None or live == obs.desired_replicas:
            return obs
        unseen = max(live - obs.desired_replicas, 0)
        return replace(
            obs, desired_replicas=live, free_gpu_slots=max(obs.free_gpu_slots - unseen, 0)
        )

    def _finish(
        self,
        rec: TickRecord,
        obs: Observation,
        decision: Decision | None,
        fallback_reason: str,
        detail: str,
    ) -> TickRecord:
        """Decode or fall back, clamp, apply unless shadow."""
        if fallback_reason:
            raw = self.fallback.decide(obs)
            outcome, reason = "fallback", f"fallback ({fallback_reason}): {detail}; {raw.reason}"
        else:
            assert decision is not None
            raw = decode(obs, decision.action, reason=f"policy {decision.policy_version}")
            outcome, reason = "policy", raw.reason
        clamped, cuts = clamp(obs, raw, self.settings.envelope)
        clamped, waits = self._settle(obs, clamped, rec.time_s)
        cuts.extend(waits)
        ops: list[OpResult] = []
        if self.settings.shadow:
            reason += "; shadow: not applied"
        elif not clamped.is_noop():
            ops = self.applier.apply(obs, clamped)
            self._remember(clamped, rec.time_s)
        return replace(
            rec,
            outcome=outcome,
            reason=reason,
            decision=decision,
            raw_action=raw,
            clamped_action=clamped,
            clamp_reasons=tuple(cuts),
            fallback_reason=fallback_reason,
            ops=tuple(ops),
        )

    def _settle(self, obs: Observation, action: Action, now_s: float) -> tuple[Action, list[str]]:
        """Drop a setting whose previous change the collector does not show yet (a rolling
        update or reload in flight): no second rollout on top of the first, no step decoded
        from a stale value. Replicas are exempt: they are read live from the scale subresource.
        """
        waits: list[str] = []
        for name, target in self.in_flight.items():
            target_value, applied_s = target
            if (
                _same(getattr(obs, name), target_value)
                or now_s - applied_s > self.settings.settle_s
            ):
                continue
            if getattr(action, name) is not None:
                waits.append(f"{name}: waiting for the change to {target_value} to show")
                action = replace(action, **{name: None})
        self.in_flight = {
            k: v
            for k, v in self.in_flight.items()
            if not _same(getattr(obs, k), v[0]) and now_s - v[1] <= self.settings.settle_s
        }
        return action, waits

    def _remember(self, action: Action, now_s: float) -> None:
        for name in SETTLED_FIELDS:
            value = getattr(action, name)
            if value is not None:
                self.in_flight[name] = (value, now_s)

    def _account(self, rec: TickRecord) -> None:
        m = self.metrics
        m.ticks.labels(rec.outcome).inc()
        m.tick_seconds.observe(rec.duration_s)
        if rec.fallback_reason:
            m.fallbacks.labels(rec.fallback_reason).inc()
        for op in rec.ops:
            m.ops.labels(op.op, op.outcome).inc()
        level = logging.WARNING if rec.fallback_reason or rec.outcome == "hold" else logging.INFO
        log.log(
            level,
            "tick",
            extra={
                "tick": rec.tick,
                "outcome": rec.outcome,
                "reason": rec.reason,
                "ops": [f"{o.op}:{o.outcome}" for o in rec.ops],
            },
        )
        try:
            self.audit.write(rec)
        except OSError as exc:  # a full disk must not stop control; logged and visible
            log.error("audit write failed", extra={"error": str(exc)})
