"""The safety envelope: what any policy may change on the cluster, and by how much (DESIGN.md).

Two views of the same rules, kept in one module so they cannot drift apart:

- :func:`action_masks` — which discrete steps a learned policy may take now (masked logits in
  training and serving, so the policy never even proposes an unsafe step);
- :func:`clamp` — the actuator's last line: any policy's :class:`Action` is cut back to what the
  envelope allows, with a reason per cut for the audit log.

Rules: replicas within [min, max], at most ``max_replica_step`` per tick, never more new pods
than free GPU slots (no Pending pods), scale-down only after a cool-down; batching/instances
grow only with framebuffer to spare; CPU/memory requests within bounds, grow only where the
node has room, and memory shrinks only with head-room over the largest working set (no OOM
kill). Missing inputs make the envelope refuse the step that needs them (hold), never guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ecrl.actions import BATCHING_LADDER, HEADS, MIB, ladder_index
from ecrl.config import bounds
from ecrl.policies.base import Action, Observation

GIB = 1024**3
MAX_BATCH = max(b for b, _ in BATCHING_LADDER)
MAX_DELAY_S = max(d for _, d in BATCHING_LADDER)


@dataclass(frozen=True)
class EnvelopeConfig:
    """Limits in front of every policy's actions."""

    max_replica_step: int = field(default=2, metadata=bounds(1, 64))
    """Largest replica change per tick."""
    scale_down_cooldown_s: float = field(default=30.0, metadata=bounds(0.0, 3600.0))
    """No scale-down until this long after the last change (lets new pods' metrics settle)."""
    cpu_min_cores: float = field(default=0.5, metadata=bounds(0.1, 64.0))
    cpu_max_cores: float = field(default=4.0, metadata=bounds(0.1, 64.0))
    memory_min_bytes: int = field(default=GIB, metadata=bounds(64 * MIB, None))
    memory_max_bytes: int = field(default=8 * GIB, metadata=bounds(64 * MIB, None))
    memory_headroom_ratio: float = field(default=0.25, metadata=bounds(0.0, 0.9))
    """Shrink memory only if the largest working set stays below (1 − this) × the new request."""
    instances_max: int = field(default=3, metadata=bounds(1, 8))
    vram_margin_bytes: int = field(default=GIB, metadata=bounds(0, None))
    """Batching/instance growth needs this much free framebuffer on the hosting GPUs."""

    def validate(self) -> None:
        if self.cpu_min_cores > self.cpu_max_cores:
            raise ValueError("cpu_min_cores: must be <= cpu_max_cores")
        if self.memory_min_bytes > self.memory_max_bytes:
            raise ValueError("memory_min_bytes: must be <= memory_max_bytes")


def _replica_ok(obs: Observation, delta: int, cfg: EnvelopeConfig) -> str:
    """'' if a replica change of ``delta`` is allowed, else why not."""
    target = obs.desired_replicas + delta
    if delta > 0:
        if target > obs.max_replicas:
            return "above max_replicas"
        if delta > obs.free_gpu_slots:
            return "not enough free GPU slots"
        cpu, mem = obs.node_cpu_free_cores, obs.node_memory_free_bytes
        if cpu is None or cpu < delta * obs.cpu_request_cores - 1e-9:
            return "no node CPU for the new pods"
        if mem is None or mem < delta * obs.memory_request_bytes:
            return "no node memory for the new pods"
    if delta < 0:
        if target < obs.min_replicas:
            return "below min_replicas"
        age = obs.last_change_age_s
        if age is None or age < cfg.scale_down_cooldown_s:
            return "scale-down cool-down"
    if abs(delta) > cfg.max_replica_step:
        return "step larger than max_replica_step"
    return ""


def _vram_room(obs: Observation, cfg: EnvelopeConfig) -> bool:
    return obs.vram_free_bytes is not None and obs.vram_free_bytes >= cfg.vram_margin_bytes


def _batching_ok(obs: Observation, rung: int, cfg: EnvelopeConfig) -> str:
    if not 0 <= rung < len(BATCHING_LADDER):
        return "off the batching ladder"
    if BATCHING_LADDER[rung][0] > obs.max_batch_size and not _vram_room(obs, cfg):
        return "no framebuffer to spare"
    return ""


def _instances_ok(obs: Observation, target: int, cfg: EnvelopeConfig) -> str:
    if not 1 <= target <= cfg.instances_max:
        return "instances out of [1, instances_max]"
    if target > obs.instance_count and not _vram_room(obs, cfg):
        return "no framebuffer to spare"
    return ""


def _cpu_ok(obs: Observation, target: float, cfg: EnvelopeConfig) -> str:
    if not cfg.cpu_min_cores - 1e-9 <= target <= cfg.cpu_max_cores + 1e-9:
        return "cpu request out of bounds"
    grow = (target - obs.cpu_request_cores) * max(obs.desired_replicas, 1)
    if grow > 0 and (obs.node_cpu_free_cores is None or obs.node_cpu_free_cores < grow - 1e-9):
        return "node has no CPU to spare"
    return ""


def _memory_ok(obs: Observation, target: int, cfg: EnvelopeConfig) -> str:
    if not cfg.memory_min_bytes <= target <= cfg.memory_max_bytes:
        return "memory request out of bounds"
    if target > obs.memory_request_bytes:
        grow = (target - obs.memory_request_bytes) * max(obs.desired_replicas, 1)
        if obs.node_memory_free_bytes is None or obs.node_memory_free_bytes < grow:
            return "node has no memory to spare"
    if target < obs.memory_request_bytes:
        used = [p.memory_usage_bytes for p in obs.pods if p.memory_usage_bytes is not None]
        if not used or max(used) > (1 - cfg.memory_headroom_ratio) * target:
            return "working set too close to the smaller request"
    return ""


def head_masks(obs: Observation, cfg: EnvelopeConfig) -> list[np.ndarray]:
    """Allowed steps per head (the no-op is always allowed: holding is always safe)."""
    rung = ladder_index(obs.max_batch_size, obs.batch_delay_s)
    checks = {
        "replicas": lambda s: _replica_ok(obs, int(s), cfg),
        "batching": lambda s: _batching_ok(obs, rung + int(s), cfg),
        "instances": lambda s: _instances_ok(obs, obs.instance_count + int(s), cfg),
        "cpu_request": lambda s: _cpu_ok(obs, obs.cpu_request_cores + s, cfg),
        "memory_request": lambda s: _memory_ok(obs, obs.memory_request_bytes + int(s) * MIB, cfg),
    }
    return [np.array([s == 0 or not checks[h.name](s) for s in h.steps], dtype=bool) for h in HEADS]


def action_masks(obs: Observation, cfg: EnvelopeConfig | None = None) -> np.ndarray:
    """Flat boolean mask over every head's steps (length ``sum(NVEC)``, head order)."""
    return np.concatenate(head_masks(obs, cfg or EnvelopeConfig()))


def clamp(
    obs: Observation, action: Action, cfg: EnvelopeConfig | None = None
) -> tuple[Action, list[str]]:
    """``action`` cut back to the envelope, and a reason for every setting it refused or cut."""
    cfg = cfg or EnvelopeConfig()
    reasons: list[str] = []
    out = action
    if action.desired_replicas is not None:
        delta = action.desired_replicas - obs.desired_replicas
        sign = 1 if delta > 0 else -1
        allowed = next((d for d in range(delta, 0, -sign) if not _replica_ok(obs, d, cfg)), 0)
        if allowed != delta:
            reasons.append(f"replicas {action.desired_replicas}: {_replica_ok(obs, delta, cfg)}")
        out = replace(out, desired_replicas=obs.desired_replicas + allowed if allowed else None)
    if action.max_batch_size is not None or action.batch_delay_s is not None:
        batch = action.max_batch_size or obs.max_batch_size
        delay = obs.batch_delay_s if action.batch_delay_s is None else action.batch_delay_s
        grows = batch > obs.max_batch_size
        if not (1 <= batch <= MAX_BATCH and 0.0 <= delay <= MAX_DELAY_S):
            reasons.append(f"batching ({batch}, {delay}): outside the batching ladder's range")
            out = replace(out, max_batch_size=None, batch_delay_s=None)
        elif grows and not _vram_room(obs, cfg):
            reasons.append(f"max_batch_size {batch}: no framebuffer to spare")
            out = replace(out, max_batch_size=None, batch_delay_s=None)
        elif (batch, delay) == (obs.max_batch_size, obs.batch_delay_s):
            out = replace(out, max_batch_size=None, batch_delay_s=None)
    for name, target, check, current in (
        ("instance_count", action.instance_count, _instances_ok, obs.instance_count),
        ("cpu_request_cores", action.cpu_request_cores, _cpu_ok, obs.cpu_request_cores),
        ("memory_request_bytes", action.memory_request_bytes, _memory_ok, obs.memory_request_bytes),
    ):
        if target is None:
            continue
        why = check(obs, target, cfg) if target != current else "unchanged"  # type: ignore[operator]
        if why:
            if why != "unchanged":
                reasons.append(f"{name} {target}: {why}")
            out = replace(out, **{name: None})
    return out, reasons
