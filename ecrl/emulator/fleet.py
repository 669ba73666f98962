"""The emulated data plane as a whole: pods on GPUs behind one Service endpoint.

The fleet plays three real parts the testbed cannot run: the GPU (through :class:`Gpu`), each
Triton pod (:class:`EmulatedPod`), and the Kubernetes Service in front of them (a request
goes to a uniformly random ready pod, as kube-proxy's iptables mode does). Pods come and go
as the Kubernetes watcher (``ecrl.emulator.kube``) or the standalone mode says.

Model control (Triton's load-with-config) sent to the Service endpoint reloads every pod and
becomes the configuration new pods start with — as if the model repository were updated; a
request carrying the ``x-ecrl-pod`` header reaches that pod only (on a real cluster the
actuator dials each pod's address).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ecrl import serving
from ecrl.emulator.pod import EmulatedPod, Gpu, InferError, TritonConfig
from ecrl.filesd import write_sd
from ecrl.twin.profile import Profile

log = logging.getLogger("ecrl.emulator.fleet")

POD_HEADER = "x-ecrl-pod"


@dataclass(frozen=True)
class PodSpec:
    """What the emulator needs to know about a ready pod of the Deployment."""

    name: str
    namespace: str
    node: str
    cpu_limit_cores: float
    memory_limit_bytes: int


@dataclass(frozen=True)
class GpuNodeSpec:
    """A GPU node as the GPU operator labels it (count, product, memory) plus the card speed."""

    name: str
    gpu_count: int = 1
    product: str = "NVIDIA-GeForce-RTX-3080"
    memory_mib: int = 10240
    speed: float = 1.0


class Fleet:
    """Pods, GPUs, routing and the model repository state of the emulated data plane."""

    def __init__(
        self,
        profile: Profile,
        config: TritonConfig,
        time_scale: float = 1.0,
        sd_dir: Path | None = None,
        metrics_address: str = "127.0.0.1:8002",
        seed: int | None = None,
    ) -> None:
        config.validate()
        self.profile = profile
        self.config = config
        self.time_scale = time_scale
        self.sd_dir = sd_dir
        self.metrics_address = metrics_address
        self.pods: dict[str, EmulatedPod] = {}
        self.nodes: dict[str, GpuNodeSpec] = {}
        self.gpus: dict[tuple[str, int], Gpu] = {}
        self.rng = random.Random(seed)
        self.started = time.time()
        self.model_ready = True
        self.routing_failures = 0
        self._reload_lock = asyncio.Lock()

    # -- topology ----------------------------------------------------------------------
    def set_node(self, node: GpuNodeSpec) -> None:
        self.nodes[node.name] = node
        for i in range(max(node.gpu_count, 1)):
            key = (node.name, i)
            if key not in self.gpus:
                self.gpus[key] = Gpu(
                    node=node.name,
                    index=i,
                    uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_DNS, f'{node.name}/{i}')}",
                    product=node.product,
                    vram_bytes=node.memory_mib * 2**20,
                    speed=node.speed,
                    background_util=self.profile.gpu.background_util_ratio,
                    temp_c=self.profile.gpu.temp_idle_c,
                )
            else:
                self.gpus[key].speed = node.speed

    def add_pod(self, spec: PodSpec) -> EmulatedPod:
        """Start serving a ready pod (idempotent; a changed CPU limit is resized in place)."""
        existing = self.pods.get(spec.name)
        if existing is not None:
            if existing.cpu_limit_cores != spec.cpu_limit_cores:
                existing.set_cpu_limit(spec.cpu_limit_cores)
            existing.memory_limit_bytes = spec.memory_limit_bytes
            return existing
        if spec.node not in self.nodes:
            self.set_node(GpuNodeSpec(spec.node))
        node = self.nodes[spec.node]
        # The device plugin hands out time-sliced replicas of the least-loaded physical GPU.
        gpu = min(
            (self.gpus[(node.name, i)] for i in range(max(node.gpu_count, 1))),
            key=lambda g: len(g.pods),
        )
        pod = EmulatedPod(
            spec.name,
            spec.namespace,
            spec.node,
            gpu,
            self.profile,
            self.config,
            spec.cpu_limit_cores,
            spec.memory_limit_bytes,
            self.time_scale,
        )
        gpu.pods.append(pod)
        self.pods[spec.name] = pod
        log.info("pod serving", extra={"pod": spec.name, "node": spec.node, "gpu": gpu.index})
        self.write_sd()
        return pod

    async def remove_pod(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is None:
            return
        pod.gpu.pods.remove(pod)
        await pod.close()
        log.info("pod gone", extra={"pod": name})
        self.write_sd()

    # -- serving -----------------------------------------------------------------------
    def route(self, pod_name: str | None = None) -> EmulatedPod:
        """The pod a request goes to: the named one, or a random ready pod (the Service)."""
        if pod_name:
            pod = self.pods.get(pod_name)
            if pod is None:
                raise InferError(f"no ready pod named '{pod_name}'", "OTHER")
            return pod
        if not self.pods:
            self.routing_failures += 1
            raise InferError("no ready endpoints for the inference Service", "OTHER")
        return self.rng.choice(list(self.pods.values()))

    def ready(self) -> bool:
        return bool(self.pods) and self.model_ready

    async def load(self, model_config: dict | None, pod_name: str | None = None) -> TritonConfig:
        """Triton load-with-config: validate, wait the reload time, then swap (old config keeps
        serving meanwhile). A config that does not fit a GPU's memory fails like a CUDA OOM and
        leaves the old one loaded."""
        async with self._reload_lock:
            new = self.config.merged(model_config or {})
            targets = [self.route(pod_name)] if pod_name else list(self.pods.values())
            for gpu in {id(p.gpu): p.gpu for p in targets}.values():
                need = sum(
                    self.profile.vram_per_replica_bytes(
                        (new if p in targets else p.config).instance_count,
                        (new if p in targets else p.config).max_batch_size,
                    )
                    for p in gpu.pods
                )
                if need > gpu.vram_bytes:
                    raise ValueError(
                        f"failed to load '{serving.MODEL_NAME}': CUDA out of memory on "
                        f"{gpu.node}/gpu{gpu.index} (emulated: needs {need / 2**20:.0f} MiB "
                        f"of {gpu.vram_bytes / 2**20:.0f} MiB)"
                    )
            await asyncio.sleep(self.profile.server.reload_s)
            for p in targets:
                p.apply(new)
            if not pod_name:
                self.config = new
            log.info(
                "model loaded",
                extra={"pod": pod_name or "*", "config": new.__dict__, "pods": len(targets)},
            )
            return new

    def sample_usage(self) -> None:
        now = time.monotonic()
        for p in self.pods.values():
            p.sample_usage(now)
        gp = self.profile.gpu
        for g in self.gpus.values():
            target = gp.temp_idle_c + (gp.temp_max_c - gp.temp_idle_c) * g.util()
            g.temp_c += (target - g.temp_c) * (1.0 / 60.0)

    # -- Prometheus service discovery --------------------------------------------------------
    def write_sd(self) -> None:
        """file_sd targets: one per pod (Triton metrics) and one per node (DCGM)."""
        if self.sd_dir is None:
            return
        triton = [
            {
                "targets": [self.metrics_address],
                "labels": {
                    "__metrics_path__": f"/metrics/pods/{p.namespace}/{p.name}",
                    "namespace": p.namespace,
                    "pod": p.name,
                    "node": p.node,
                    "emulated": "true",
                },
            }
            for p in sorted(self.pods.values(), key=lambda p: p.name)
        ]
        dcgm = [
            {
                "targets": [self.metrics_address],
                "labels": {
                    "__metrics_path__": f"/metrics/gpus/{n}",
                    "node": n,
                    "emulated": "true",
                },
            }
            for n in sorted(self.nodes)
        ]
        write_sd(self.sd_dir, "triton", triton)
        write_sd(self.sd_dir, "dcgm", dcgm)
