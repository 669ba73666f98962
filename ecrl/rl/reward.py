"""The reward of the seeds, per control tick, plus a churn penalty.

``R = w1·GPU_util_gain + w2·resource_efficiency − w3·latency_penalty − w4·qos_violation
− w5·churn`` (seeds/001 §4, seeds/002; DESIGN.md). Each term is a plain, bounded number so the
weights read as exchange rates ("one fully violated tick costs as much as about seven GPU
replicas kept for a tick" with the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ecrl.config import bounds


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward terms (all ≥ 0; the signs are in the formula)."""

    w_gpu_util_gain: float = field(default=0.25, metadata=bounds(0.0, 100.0))
    """w1: GPU busy share of the workload itself on the GPUs it holds (background excluded)."""
    w_resource_efficiency: float = field(default=1.0, metadata=bounds(0.0, 100.0))
    """w2: 1 − the share of the Deployment's maximum GPU slots, CPU and memory it holds."""
    w_latency_penalty: float = field(default=0.5, metadata=bounds(0.0, 100.0))
    """w3: how far p95 is above the SLO, relative to the SLO (capped at 3×)."""
    w_qos_violation: float = field(default=6.0, metadata=bounds(0.0, 1000.0))
    """w4: share of the tick's seconds with p95 > SLO or any failed request (the KPI's rule)."""
    w_churn: float = field(default=0.25, metadata=bounds(0.0, 100.0))
    """w5: per replica added/removed and per other setting changed."""


@dataclass(frozen=True)
class TickOutcome:
    """What one tick produced in every environment (arrays shaped [envs] or [envs, seconds])."""

    p95_s: np.ndarray
    """[envs, seconds] p95 latency of each second (NaN when nothing was served)."""
    failed: np.ndarray
    """[envs, seconds] failed requests per second."""
    workload_gpu_busy_ratio: np.ndarray
    """[envs] mean GPU busy share of the workload on the GPUs it holds."""
    held_share: np.ndarray
    """[envs] mean share of max GPU slots / CPU / memory held by the Deployment (0–1)."""
    churn: np.ndarray
    """[envs] :func:`ecrl.actions.changes` of the action taken."""


def reward_terms(out: TickOutcome, slo_p95_s: float) -> dict[str, np.ndarray]:
    """Each unweighted term per env (logged to TensorBoard so a reader sees what drives R)."""
    p95 = np.nan_to_num(out.p95_s, nan=0.0)
    violated = (p95 > slo_p95_s) | (out.failed > 0)
    return {
        "gpu_util_gain": out.workload_gpu_busy_ratio,
        "resource_efficiency": 1.0 - out.held_share,
        "latency_penalty": np.clip(p95 / slo_p95_s - 1.0, 0.0, 3.0).mean(axis=1),
        "qos_violation": violated.mean(axis=1),
        "churn": out.churn,
    }


def reward(terms: dict[str, np.ndarray], cfg: RewardConfig) -> np.ndarray:
    """The weighted sum (the seeds' formula plus churn)."""
    return (
        cfg.w_gpu_util_gain * terms["gpu_util_gain"]
        + cfg.w_resource_efficiency * terms["resource_efficiency"]
        - cfg.w_latency_penalty * terms["latency_penalty"]
        - cfg.w_qos_violation * terms["qos_violation"]
        - cfg.w_churn * terms["churn"]
    )
