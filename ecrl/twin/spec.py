"""What the twin simulates: the cluster (nodes, GPUs) and the managed inference Deployment.

Frozen config dataclasses loaded from YAML (``ecrl/configs/*.yaml``) and validated at
start; a bad field gives a one-line :class:`ecrl.errors.ConfigError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ecrl.config import bounds, from_file

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class GpuSpec:
    """One physical GPU, advertised to Kubernetes as ``slots`` time-sliced ``nvidia.com/gpu``."""

    slots: int = field(default=4, metadata=bounds(1, 64))
    """Time-slicing replicas (NVIDIA device plugin ``sharing.timeSlicing.resources[].replicas``)."""
    speed: float = field(default=1.0, metadata=bounds(0.05, 20.0))
    """Throughput relative to the profile's GPU (1.0 = the calibrated card)."""
    vram_bytes: int | None = None
    """Memory of this card; None = the profile's GPU."""


@dataclass(frozen=True)
class NodeSpec:
    """A Kubernetes node: allocatable CPU/memory and its GPUs."""

    name: str
    cpu_cores: float = field(default=16.0, metadata=bounds(0.5, 1024.0))
    """Allocatable CPU. The seeds leave the reference box's CPU unspecified: set it to yours."""
    memory_bytes: int = field(default=32 * GIB, metadata=bounds(GIB // 2, None))
    gpus: tuple[GpuSpec, ...] = (GpuSpec(),)


@dataclass(frozen=True)
class DeploymentSpec:
    """The MobileNetV4 Triton Deployment and its initial settings (seeds/002: 2 CPU, 4 GB)."""

    initial_replicas: int = field(default=1, metadata=bounds(0, 64))
    min_replicas: int = field(default=1, metadata=bounds(0, 64))
    max_replicas: int = field(default=4, metadata=bounds(1, 64))
    cpu_request_cores: float = field(default=2.0, metadata=bounds(0.1, 64.0))
    """Requests = limits (Guaranteed QoS), as in the seeds' baseline pod."""
    memory_request_bytes: int = field(default=4 * GIB, metadata=bounds(64 * MIB, None))
    max_batch_size: int = field(default=8, metadata=bounds(1, 256))
    batch_delay_s: float = field(default=0.0, metadata=bounds(0.0, 1.0))
    """Triton ``max_queue_delay_microseconds`` / 1e6."""
    instance_count: int = field(default=1, metadata=bounds(1, 8))
    max_queue_size: int = field(default=512, metadata=bounds(1, 1_000_000))
    """Triton dynamic batcher ``default_queue_policy.max_queue_size``: beyond it, rejected."""
    request_timeout_s: float = field(default=10.0, metadata=bounds(0.1, 600.0))
    """Client timeout: a request still queued after this counts as failed."""

    def validate(self) -> None:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas: must be <= max_replicas")
        if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas: must be within [min_replicas, max_replicas]")


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster scenario for the twin: nodes, the Deployment, the SLO and the users' think time."""

    name: str = "reference-box"
    profile: str = "rtx3080-mobilenetv4"
    """Built-in profile name or a path to a profile YAML."""
    nodes: tuple[NodeSpec, ...] = (NodeSpec(name="box"),)
    deployment: DeploymentSpec = DeploymentSpec()
    slo_p95_s: float = field(default=0.15, metadata=bounds(0.001, 60.0))
    """p95 latency target: ~2× the unloaded p95 of the seeds (74 ms)."""
    think_time_s: tuple[float, float] = (0.4, 1.0)
    """Locust ``between(a, b)`` wait: mean 0.7 s gives the seeds' 13 req/s at 10 users, 72 ms."""
    system_reserved_cpu_cores: float = field(default=1.0, metadata=bounds(0.0, 64.0))
    """CPU taken by system pods (MicroK8s control plane, monitoring) on the first node only."""

    def validate(self) -> None:
        if not self.nodes:
            raise ValueError("nodes: at least one node is required")
        if self.think_time_s[0] > self.think_time_s[1] or self.think_time_s[0] < 0:
            raise ValueError("think_time_s: must be [min, max] with 0 <= min <= max")
        if len({n.name for n in self.nodes}) != len(self.nodes):
            raise ValueError("nodes: node names must be unique")

    @property
    def mean_think_s(self) -> float:
        return 0.5 * (self.think_time_s[0] + self.think_time_s[1])

    @property
    def total_gpu_slots(self) -> int:
        return sum(g.slots for n in self.nodes for g in n.gpus)


def load_cluster(path: str) -> ClusterSpec:
    """Load a cluster scenario YAML (one-line ConfigError naming the field on bad input)."""
    return from_file(ClusterSpec, path)


def builtin_cluster_path(name: str) -> str:
    """Path of a cluster scenario shipped with the package (``ecrl/configs/<name>.yaml``)."""
    from importlib.resources import files

    return str(files("ecrl") / "configs" / f"{name}.yaml")


def resolve_cluster(name_or_path: str) -> ClusterSpec:
    """A packaged cluster scenario by name (``multi-node``) or a path to a cluster YAML."""
    is_path = name_or_path.endswith((".yaml", ".yml"))
    return load_cluster(name_or_path if is_path else builtin_cluster_path(name_or_path))
