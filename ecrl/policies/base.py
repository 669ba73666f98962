"""The one interface every autoscaling policy implements: observe → act.

Policies are pure decision logic over plain data (house style rule 2). The twin, the
testbed collector and the real cluster all produce an :class:`Observation`; the harness
or the actuator applies the returned :class:`Action` through the safety envelope.

An ``Action`` holds absolute targets; ``None`` means "leave as is". A policy is called
every ``period_s`` seconds of (simulated or real) time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class PodMetrics:
    """What the metrics pipeline knows about one pod of the inference Deployment.

    ``None`` means the metric is missing for this pod (not scraped yet, stale): policies
    must treat it as missing, never as zero (HPA's missing-metric rules depend on it).
    """

    name: str
    ready: bool
    start_time_s: float
    """When the pod was created (simulation/wall clock seconds)."""
    ready_time_s: float | None
    """When the pod last turned Ready; None if never."""
    cpu_usage_cores: float | None
    """Average CPU usage over the metrics window (metrics-server semantics)."""
    queue_time_avg_s: float | None = None
    """Triton average queue time per request over the last window."""
    concurrency: float | None = None
    """Average in-flight requests (queued + executing) over the last window."""
    request_rate_rps: float | None = None
    memory_usage_bytes: float | None = None
    """Container working set (cAdvisor ``container_memory_working_set_bytes``)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """A snapshot of the managed inference Deployment and its GPU node(s)."""

    time_s: float
    pods: tuple[PodMetrics, ...]
    desired_replicas: int
    """spec.replicas of the Deployment (kube_deployment_spec_replicas)."""
    min_replicas: int
    max_replicas: int
    cpu_request_cores: float
    cpu_limit_cores: float
    memory_request_bytes: int
    memory_limit_bytes: int
    max_batch_size: int
    batch_delay_s: float
    instance_count: int
    request_rate_rps: float | None
    """Offered requests per second at the service (success + failure) over the last window."""
    p95_latency_s: float | None
    success_ratio: float | None
    gpu_util_ratio: float | None
    """Mean GPU utilization over the GPUs that host replicas (DCGM_FI_DEV_GPU_UTIL / 100)."""
    vram_used_bytes: float | None
    free_gpu_slots: int
    """Time-sliced GPU slots still free on schedulable nodes (never create Pending pods)."""
    slo_p95_s: float
    """The latency SLO the run is judged against."""
    vram_free_bytes: float | None = None
    """Free framebuffer on the GPUs that host replicas (DCGM_FI_DEV_FB_FREE)."""
    node_cpu_free_cores: float | None = None
    """Smallest unrequested allocatable CPU over the nodes that host replicas (resize room)."""
    node_memory_free_bytes: float | None = None
    """Smallest unrequested allocatable memory over the nodes that host replicas."""
    last_change_age_s: float | None = None
    """Seconds since any managed setting last changed (Deployment generation or model config)."""

    @property
    def ready_replicas(self) -> int:
        return sum(1 for p in self.pods if p.ready)

    @property
    def pending_replicas(self) -> int:
        return sum(1 for p in self.pods if not p.ready)


@dataclass(frozen=True, slots=True)
class Action:
    """Absolute targets for the next period; ``None`` leaves a setting unchanged."""

    desired_replicas: int | None = None
    max_batch_size: int | None = None
    batch_delay_s: float | None = None
    instance_count: int | None = None
    cpu_request_cores: float | None = None
    memory_request_bytes: int | None = None
    reason: str = field(default="", compare=False)
    """Why, in a few words; written to the audit log."""

    def is_noop(self) -> bool:
        return all(
            v is None
            for v in (
                self.desired_replicas,
                self.max_batch_size,
                self.batch_delay_s,
                self.instance_count,
                self.cpu_request_cores,
                self.memory_request_bytes,
            )
        )


@runtime_checkable
class Policy(Protocol):
    """An autoscaling policy: called every ``period_s`` seconds with a fresh observation."""

    name: str
    period_s: float

    def reset(self) -> None:
        """Forget all history (a new run starts)."""

    def decide(self, obs: Observation) -> Action:
        """Return the targets for the next period (pure in ``obs`` and internal history)."""
        ...
