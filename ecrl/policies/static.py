"""Static allocation: set fixed targets once after reset, then leave everything alone.

The over-provisioning reference point of the comparison: what a careful operator would
deploy by hand (a fixed replica count and, optionally, fixed Triton batching, instance
count and pod resources) with no autoscaler at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ecrl.config import bounds
from ecrl.policies.base import Action, Observation


@dataclass(frozen=True, slots=True)
class StaticConfig:
    """The fixed targets; ``None`` leaves that setting as the deployment has it."""

    replicas: int = field(default=1, metadata=bounds(1, 64, "replicas to hold"))
    max_batch_size: int | None = field(default=None, metadata=bounds(1, 1024, "Triton batch"))
    batch_delay_s: float | None = field(
        default=None, metadata=bounds(0.0, 1.0, "Triton max_queue_delay, seconds")
    )
    instance_count: int | None = field(default=None, metadata=bounds(1, 16, "instances/GPU"))
    cpu_request_cores: float | None = field(default=None, metadata=bounds(0.05, 64.0, "cores"))
    memory_request_bytes: int | None = field(
        default=None, metadata=bounds(64 * 2**20, 2**40, "bytes")
    )
    period_s: float = field(default=15.0, metadata=bounds(1.0, 600.0, "call period, seconds"))


class StaticPolicy:
    """Issues the configured targets on the first call after :meth:`reset`, then no-ops."""

    def __init__(self, config: StaticConfig | None = None, name: str = "static") -> None:
        self.config = config or StaticConfig()
        self.name = name
        self.period_s = self.config.period_s
        self.reset()

    def reset(self) -> None:
        """Arm the one-shot action again for a new run."""
        self._issued = False

    def decide(self, obs: Observation) -> Action:
        """First call: the fixed targets; later calls: no-op."""
        if self._issued:
            return Action(reason="static: allocation already issued")
        self._issued = True
        cfg = self.config
        return Action(
            desired_replicas=cfg.replicas,
            max_batch_size=cfg.max_batch_size,
            batch_delay_s=cfg.batch_delay_s,
            instance_count=cfg.instance_count,
            cpu_request_cores=cfg.cpu_request_cores,
            memory_request_bytes=cfg.memory_request_bytes,
            reason=f"static: fixed allocation of {cfg.replicas} replicas",
        )
