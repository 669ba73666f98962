"""The fallback decision when no valid learned policy is loaded: the HPA's CPU rule, as steps.

Why it is safe: it can only do what the default HorizontalPodAutoscaler (the baseline every run
is compared against) would do on the same numbers, and less:

- only the ``replicas`` head moves; batching, instances, CPU and memory stay put (NOOP);
- the proposal is upstream's ``ceil(usage_ratio / target · ready)`` with the 0.1 tolerance
  band, clamped to [min, max] replicas (the state's head-room features), then cut to the
  largest step the head has and the safety envelope's mask allows — never past the HPA target;
- a missing CPU metric holds (upstream does not scale on missing metrics), and while pods are
  still starting a scale-up counts them at zero usage (upstream's unready-pod rule);
- it is stateless: the HPA's downscale stabilization window is replaced by the envelope's
  scale-down cool-down, which the mask already enforces.

Input is the encoded state vector (features read by name from :mod:`ecrl.schema`) and the
flat action mask; output is one step index per head, as the learned policy returns.
"""

from __future__ import annotations

import math

import numpy as np

from ecrl.actions import HEADS, NOOP, OFFSETS
from ecrl.policies.hpa import DEFAULT_CPU_UTILIZATION_PERCENT, TOLERANCE
from ecrl.schema import FEATURE_NAMES

TARGET_CPU_RATIO = DEFAULT_CPU_UTILIZATION_PERCENT / 100
"""Usage / request the HPA aims at (upstream default 80 %, see ecrl/policies/hpa.py)."""
_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
_REPLICAS = next(i for i, h in enumerate(HEADS) if h.name == "replicas")


def _feature(state: np.ndarray, name: str) -> float:
    return float(state[_INDEX[name]])


def hpa_replica_delta(state: np.ndarray) -> int:
    """Replica change the HPA CPU rule asks for on ``state`` (0 = hold), within [min, max]."""
    if _feature(state, "cpu_usage_ratio_missing") > 0.5:
        return 0  # no metric, no scaling (upstream: "did not receive metrics")
    ready = _feature(state, "ready_replicas")
    pending = _feature(state, "pending_replicas")
    if ready < 1:
        return 0
    ratio = _feature(state, "cpu_usage_ratio") / TARGET_CPU_RATIO
    if abs(ratio - 1.0) <= TOLERANCE:
        return 0
    if ratio > 1.0 and pending > 0:
        # Scale-up with unready pods: they count at zero usage (replica_calculator.go).
        diluted = ratio * ready / (ready + pending)
        if diluted <= 1.0 + TOLERANCE:
            return 0
    proposal = math.ceil(ratio * ready)
    delta = proposal - _feature(state, "desired_replicas")
    up_room = max(_feature(state, "replica_headroom_up"), 0.0)
    down_room = max(_feature(state, "replica_headroom_down"), 0.0)
    return int(min(max(delta, -down_room), up_room))


def _allowed_step(head: int, wanted: float, mask: np.ndarray) -> int:
    """Index of the allowed step of ``head`` that goes furthest toward ``wanted`` without
    passing it; if even the no-op is forbidden, the allowed step of smallest size."""
    steps = HEADS[head].steps
    allowed = [i for i in range(len(steps)) if mask[OFFSETS[head] + i]]
    toward = [
        i for i in allowed if steps[i] * wanted >= 0 and abs(steps[i]) <= abs(wanted)
    ]  # same direction (or zero), not beyond the target
    if toward:
        return max(toward, key=lambda i: abs(steps[i]))
    return min(allowed, key=lambda i: (abs(steps[i]), steps[i]))


def heuristic_action(state: np.ndarray, mask: np.ndarray) -> tuple[int, ...]:
    """One step index per head: the HPA's replica step where the mask allows it, else NOOP."""
    wanted = [0.0] * len(HEADS)
    wanted[_REPLICAS] = float(hpa_replica_delta(state))
    choice = list(NOOP)
    for head in range(len(HEADS)):
        choice[head] = _allowed_step(head, wanted[head], mask)
    return tuple(choice)
