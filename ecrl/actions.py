"""The discrete action space of learned policies: small steps on every managed setting.

One action = one choice per head (a ``MultiDiscrete`` vector). Steps, not absolute targets:
a small move per tick is what an operator trusts, what the safety envelope can reason about,
and what keeps a policy from thrashing. :func:`decode` turns the choice into the same
:class:`ecrl.policies.base.Action` (absolute targets) every policy returns.

Triton's ``max_batch_size`` and ``max_queue_delay_microseconds`` move together along one
ladder ordered from latency-first to throughput-first, so one head covers both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from ecrl.policies.base import Action, Observation

MIB = 1024**2


@dataclass(frozen=True)
class Head:
    """One component of the action: its name, unit and the steps it can take."""

    name: str
    unit: str
    steps: tuple[float, ...]

    @property
    def noop(self) -> int:
        return self.steps.index(0)


BATCHING_LADDER: tuple[tuple[int, float], ...] = (
    (1, 0.0),
    (2, 0.0),
    (4, 0.0),
    (8, 0.0),
    (8, 0.002),
    (16, 0.002),
    (16, 0.005),
    (32, 0.005),
    (32, 0.010),
)
"""(max_batch_size, batch_delay_s) from latency-first to throughput-first; (8, 0) is the seeds'."""

HEADS: tuple[Head, ...] = (
    Head("replicas", "pods", (-2, -1, 0, 1, 2)),
    Head("batching", "ladder steps", (-1, 0, 1)),
    Head("instances", "model instances", (-1, 0, 1)),
    Head("cpu_request", "cores", (-0.5, 0, 0.5)),
    Head("memory_request", "MiB", (-512, 0, 512)),
)
NVEC: tuple[int, ...] = tuple(len(h.steps) for h in HEADS)
NOOP: tuple[int, ...] = tuple(h.noop for h in HEADS)
OFFSETS: tuple[int, ...] = tuple(sum(NVEC[:i]) for i in range(len(NVEC)))
"""Where each head's entries start in the flat mask / logits vector."""


def ladder_index(max_batch_size: int, batch_delay_s: float) -> int:
    """The ladder rung closest to a (batch, delay) setting (exact match when on the ladder)."""

    def distance(rung: tuple[int, float]) -> tuple[float, float]:
        return (abs(rung[0] - max_batch_size), abs(rung[1] - batch_delay_s))

    return min(range(len(BATCHING_LADDER)), key=lambda i: distance(BATCHING_LADDER[i]))


def decode(obs: Observation, choice: Sequence[int], reason: str = "") -> Action:
    """Absolute targets for ``choice`` (one index per head) from the current settings."""
    steps = [h.steps[int(c)] for h, c in zip(HEADS, choice, strict=True)]
    d_rep, d_batch, d_inst, d_cpu, d_mem = steps
    batch = delay = None
    if d_batch:
        rung = ladder_index(obs.max_batch_size, obs.batch_delay_s) + int(d_batch)
        batch, delay = BATCHING_LADDER[min(max(rung, 0), len(BATCHING_LADDER) - 1)]
    return Action(
        desired_replicas=obs.desired_replicas + int(d_rep) if d_rep else None,
        max_batch_size=batch,
        batch_delay_s=delay,
        instance_count=obs.instance_count + int(d_inst) if d_inst else None,
        cpu_request_cores=obs.cpu_request_cores + d_cpu if d_cpu else None,
        memory_request_bytes=obs.memory_request_bytes + int(d_mem) * MIB if d_mem else None,
        reason=reason,
    )


def changes(choice: Sequence[int]) -> float:
    """How much a choice changes (|replica step| + one per other setting touched): churn."""
    return sum(
        abs(h.steps[int(c)]) if h.name == "replicas" else float(int(c) != h.noop)
        for h, c in zip(HEADS, choice, strict=True)
    )


def spec_json() -> str:
    """The action space as JSON (ONNX metadata, GetPolicyInfo)."""
    return json.dumps(
        {
            "heads": [{"name": h.name, "unit": h.unit, "steps": h.steps} for h in HEADS],
            "batching_ladder": BATCHING_LADDER,
        }
    )
