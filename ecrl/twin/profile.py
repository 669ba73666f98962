"""Calibration profile: what one inference pod costs and how fast it serves.

A profile is measured (``ecrl calibrate``) or derived from published figures, and every
number in the YAML cites where it comes from. The twin reads nothing else about the model
or the hardware, so moving from the reference box to another box is a new profile.

Time model of one request (see ``ecrl.twin.cluster`` for how these combine)::

    latency = client_overhead + server CPU work (processor-shared, throttled by the pod's
              CPU limit) + queue wait + batch-forming wait + batch execution on the GPU
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ecrl.config import bounds, from_file

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class ModelInfo:
    """The served model, for the report (not used by the dynamics)."""

    name: str
    params_m: float = field(metadata=bounds(0.0, None, "parameters, millions"))
    gmacs: float = field(metadata=bounds(0.0, None, "multiply-accumulates per image, billions"))
    input_shape: tuple[int, ...] = (3, 224, 224)


@dataclass(frozen=True)
class GpuInfo:
    """One GPU model: memory, power envelope and how time-slicing shares it."""

    name: str
    vram_bytes: int = field(metadata=bounds(1, None))
    power_idle_w: float = field(metadata=bounds(0.0, None))
    power_max_w: float = field(metadata=bounds(0.0, None))
    temp_idle_c: float = 35.0
    temp_max_c: float = 83.0
    background_util_ratio: float = field(default=0.0, metadata=bounds(0.0, 0.9))
    """GPU time used by others (e.g. a desktop display on the card); the model gets the rest."""
    timeslice_overhead_ratio: float = field(default=0.05, metadata=bounds(0.0, 1.0))
    """Throughput lost per additional busy context under time-slicing (context switches)."""

    def validate(self) -> None:
        if self.power_max_w < self.power_idle_w:
            raise ValueError("power_max_w: must be >= power_idle_w")


@dataclass(frozen=True)
class ComputeTable:
    """Batch execution time on the GPU, measured per batch size (linear in between)."""

    batch_sizes: tuple[int, ...]
    exec_s: tuple[float, ...]
    """GPU-busy time of one batch execution when the instance has the GPU to itself."""

    def validate(self) -> None:
        if len(self.batch_sizes) != len(self.exec_s) or len(self.batch_sizes) < 2:
            raise ValueError("exec_s: needs one value per batch size, at least two sizes")
        if any(b2 <= b1 for b1, b2 in zip(self.batch_sizes, self.batch_sizes[1:], strict=False)):
            raise ValueError("batch_sizes: must be strictly increasing")
        if self.batch_sizes[0] != 1:
            raise ValueError("batch_sizes: must start at 1")
        if any(t <= 0 for t in self.exec_s):
            raise ValueError("exec_s: every time must be > 0")
        if any(t2 < t1 for t1, t2 in zip(self.exec_s, self.exec_s[1:], strict=False)):
            raise ValueError("exec_s: must not decrease with batch size")

    def exec_time_s(self, batch: np.ndarray | float) -> np.ndarray:
        """Execution time for (possibly fractional) batch sizes; linear extrapolation above."""
        b = np.asarray(batch, dtype=float)
        xs = np.asarray(self.batch_sizes, dtype=float)
        ys = np.asarray(self.exec_s, dtype=float)
        slope_hi = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return np.where(b > xs[-1], ys[-1] + (b - xs[-1]) * slope_hi, np.interp(b, xs, ys))


@dataclass(frozen=True)
class ServerCosts:
    """Per-request and per-pod costs of the Triton server outside batch execution."""

    client_overhead_s: float = field(metadata=bounds(0.0, 10.0))
    """Latency the client sees outside the server (serialization, network); uses no pod resource."""
    cpu_s_per_request: float = field(metadata=bounds(0.0, 10.0))
    """CPU-seconds of protocol decode + pre/post-processing per request in the pod."""
    cpu_idle_cores: float = field(metadata=bounds(0.0, 64.0))
    host_s_per_batch: float = field(metadata=bounds(0.0, 10.0))
    """Instance time per batch outside the GPU (input/output copies, runtime overhead)."""
    service_cv: float = field(default=0.02, metadata=bounds(0.0, 2.0))
    """Coefficient of variation of the no-queue latency (jitter)."""
    memory_base_bytes: int = field(default=GIB, metadata=bounds(0, None))
    memory_per_instance_bytes: int = field(default=300 * MIB, metadata=bounds(0, None))
    memory_per_inflight_bytes: int = field(default=3 * MIB, metadata=bounds(0, None))
    vram_context_bytes: int = field(default=500 * MIB, metadata=bounds(0, None))
    vram_per_instance_bytes: int = field(default=900 * MIB, metadata=bounds(0, None))
    vram_per_batch_item_bytes: int = field(default=8 * MIB, metadata=bounds(0, None))
    startup_mean_s: float = field(default=15.0, metadata=bounds(0.0, 3600.0))
    """Pod creation → Ready: scheduling, image (cached), Triton start, model load, probe."""
    startup_cv: float = field(default=0.2, metadata=bounds(0.0, 2.0))
    reload_s: float = field(default=2.0, metadata=bounds(0.0, 600.0))
    """Triton model-control load-with-config: the new config serves after this delay."""
    oom_restart_s: float = field(default=10.0, metadata=bounds(0.0, 600.0))
    """Kubelet restart back-off after an OOM kill (first step of CrashLoopBackOff)."""


@dataclass(frozen=True)
class Profile:
    """A calibration profile: model, GPU, batch execution table and server costs."""

    name: str
    description: str
    model: ModelInfo
    gpu: GpuInfo
    compute: ComputeTable
    server: ServerCosts

    def vram_per_replica_bytes(
        self, instances: np.ndarray | int, max_batch: np.ndarray | int
    ) -> np.ndarray:
        """VRAM one replica holds: CUDA context + per-instance weights/arena + batch buffers."""
        s = self.server
        inst = np.asarray(instances, dtype=float)
        return s.vram_context_bytes + inst * (
            s.vram_per_instance_bytes
            + np.asarray(max_batch, dtype=float) * s.vram_per_batch_item_bytes
        )


def load_profile(path: str) -> Profile:
    """Load and validate a profile YAML (a bad field gives a one-line ConfigError)."""
    return from_file(Profile, path)


def builtin_profile_path(name: str) -> str:
    """Path of a profile shipped with the package (``ecrl/profiles/<name>.yaml``)."""
    from importlib.resources import files

    return str(files("ecrl") / "profiles" / f"{name}.yaml")
