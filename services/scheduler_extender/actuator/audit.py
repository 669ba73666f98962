"""The audit log: one JSON object per tick (state, raw action, clamped action, reason, ops).

Lines are appended and flushed per tick, so ``tail -f | jq`` follows the loop and a crash
loses at most the tick in progress. Non-finite floats (a pod without a limit) become null.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

from ecrl.jsonsafe import finite
from ecrl.policies.base import Action, Observation

from .loop import TickRecord


def _action(action: Action | None) -> dict[str, Any] | None:
    return None if action is None else dataclasses.asdict(action)


def observation_summary(obs: Observation | None) -> dict[str, Any] | None:
    """The settings and signals a reader needs to judge a decision (not every pod)."""
    if obs is None:
        return None
    return {
        "time_s": obs.time_s,
        "desired_replicas": obs.desired_replicas,
        "ready_replicas": obs.ready_replicas,
        "pending_replicas": obs.pending_replicas,
        "min_replicas": obs.min_replicas,
        "max_replicas": obs.max_replicas,
        "free_gpu_slots": obs.free_gpu_slots,
        "cpu_request_cores": obs.cpu_request_cores,
        "memory_request_bytes": obs.memory_request_bytes,
        "max_batch_size": obs.max_batch_size,
        "batch_delay_s": obs.batch_delay_s,
        "instance_count": obs.instance_count,
        "request_rate_rps": obs.request_rate_rps,
        "p95_latency_s": obs.p95_latency_s,
        "success_ratio": obs.success_ratio,
        "gpu_util_ratio": obs.gpu_util_ratio,
        "pod_cpu_usage_cores": [p.cpu_usage_cores for p in obs.pods],
        "last_change_age_s": obs.last_change_age_s,
    }


def record_json(rec: TickRecord) -> dict[str, Any]:
    """The audit line of one tick."""
    snap = rec.snapshot
    decision = rec.decision
    return finite(
        {
            "time": dt.datetime.fromtimestamp(rec.time_s, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "time_s": rec.time_s,
            "tick": rec.tick,
            "leader": rec.leader,
            "shadow": rec.shadow,
            "outcome": rec.outcome,
            "reason": rec.reason,
            "state": None
            if snap is None
            else {
                "tick": snap.tick,
                "schema_version": snap.schema_version,
                "schema_hash": snap.schema_hash,
                "values": list(snap.values),
                "missing_inputs": list(snap.missing_inputs),
                "age_s": snap.age_s,
                "stale": snap.stale,
            },
            "state_problem": rec.state_problem,
            "observation": observation_summary(rec.observation),
            "raw_action": None
            if rec.raw_action is None
            else {
                "source": "policy" if rec.outcome == "policy" else "fallback",
                "heads": rec.raw_heads(),
                "indices": None if decision is None else list(decision.action),
                "policy_version": None if decision is None else decision.policy_version,
                "policy_fallback": None if decision is None else decision.fallback.value,
                "action": _action(rec.raw_action),
            },
            "clamped_action": _action(rec.clamped_action),
            "clamp_reasons": list(rec.clamp_reasons),
            "fallback_reason": rec.fallback_reason,
            "ops": [dataclasses.asdict(o) for o in rec.ops],
            "duration_s": rec.duration_s,
        }
    )


class AuditLog:
    """Appends one JSON line per tick to ``path`` (thread-safe; flushed per line)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")

    def write(self, record: TickRecord) -> None:
        line = json.dumps(record_json(record), separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
