"""The emulator's link to the real control plane: watch the Deployment's pods, report usage.

- **Watch**: lists, then watches (with resync on expiry or error) the pods matching the
  Deployment's selector; a pod is served while it is Running, Ready and not being deleted,
  with the CPU limit Kubernetes reports for it (``status.containerStatuses[].resources`` after
  an in-place resize, else the spec). The node's GPU labels (set as the GPU operator sets them)
  say how many GPUs and which product; ``ecrl.io/gpu-speed`` scales an emulated card's speed.
- **Usage**: every few seconds each served pod's CPU cores and memory go into kwok's usage
  annotations (``kwok.x-k8s.io/usage-cpu`` / ``usage-memory``); kwok turns them into kubelet
  resource metrics, metrics-server serves them, and the real HPA reacts.

The Kubernetes client is blocking; it runs in worker threads and hands results to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from ecrl.emulator import telemetry
from ecrl.emulator.fleet import Fleet, GpuNodeSpec, PodSpec

log = logging.getLogger("ecrl.emulator.kube")

USAGE_CPU = "kwok.x-k8s.io/usage-cpu"
USAGE_MEMORY = "kwok.x-k8s.io/usage-memory"
SPEED_ANNOTATION = "ecrl.io/gpu-speed"
CONTAINER = "triton"


@dataclass(frozen=True)
class Target:
    """Which pods to serve."""

    namespace: str
    label_selector: str


def pod_spec(pod) -> PodSpec | None:
    """The served view of a V1Pod, or None if it should not receive traffic."""
    from kubernetes.utils import parse_quantity

    md, st, spec = pod.metadata, pod.status, pod.spec
    if md.deletion_timestamp is not None or st is None or st.phase != "Running":
        return None
    conds = st.conditions or []
    if not any(c.type == "Ready" and c.status == "True" for c in conds):
        return None
    if not spec.node_name:
        return None
    containers = spec.containers or []
    c = next((c for c in containers if c.name == CONTAINER), containers[0] if containers else None)
    if c is None:
        return None
    res = c.resources
    for cs in st.container_statuses or []:
        if cs.name == c.name and getattr(cs, "resources", None) is not None:
            res = cs.resources  # what the kubelet actually allocated after an in-place resize
    limits = (res.limits or {}) if res else {}
    requests = (res.requests or {}) if res else {}
    cpu = limits.get("cpu") or requests.get("cpu")
    mem = limits.get("memory") or requests.get("memory")
    if cpu is None:
        log.warning("pod has no CPU limit or request; not served", extra={"pod": md.name})
        return None
    return PodSpec(
        name=md.name,
        namespace=md.namespace,
        node=spec.node_name,
        cpu_limit_cores=float(parse_quantity(cpu)),
        memory_limit_bytes=int(parse_quantity(mem)) if mem is not None else 0,
    )


def node_spec(node) -> GpuNodeSpec:
    labels = node.metadata.labels or {}
    ann = node.metadata.annotations or {}

    def num(value: str | None, default: float) -> float:
        try:
            return float(value) if value is not None else default
        except ValueError:
            return default

    return GpuNodeSpec(
        name=node.metadata.name,
        gpu_count=int(num(labels.get("nvidia.com/gpu.count"), 1)),
        product=labels.get("nvidia.com/gpu.product", "NVIDIA-GPU").removesuffix("-SHARED"),
        memory_mib=int(num(labels.get("nvidia.com/gpu.memory"), 10240)),
        speed=num(ann.get(SPEED_ANNOTATION), 1.0),
    )


class KubeLink:
    """Keeps the fleet in step with the cluster and writes usage back to it."""

    def __init__(self, fleet: Fleet, kubeconfig: Path | None, target: Target) -> None:
        from kubernetes import client, config

        if kubeconfig is not None:
            api_client = config.new_client_from_config(config_file=str(kubeconfig))
        else:
            config.load_incluster_config()
            api_client = client.ApiClient()
        self.v1 = client.CoreV1Api(api_client)
        self.fleet = fleet
        self.target = target
        self._stop = threading.Event()
        self._written: dict[str, tuple[str, str]] = {}

    def stop(self) -> None:
        self._stop.set()

    # -- watch ---------------------------------------------------------------------------
    def watch_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread body: list + watch, re-listing on any error (bounded back-off)."""
        from kubernetes import watch

        backoff = 0.5
        while not self._stop.is_set():
            try:
                pods = self.v1.list_namespaced_pod(
                    self.target.namespace, label_selector=self.target.label_selector
                )
                self._submit(loop, self._sync(pods.items))
                w = watch.Watch()
                for ev in w.stream(
                    self.v1.list_namespaced_pod,
                    self.target.namespace,
                    label_selector=self.target.label_selector,
                    resource_version=pods.metadata.resource_version,
                    timeout_seconds=30,
                ):
                    if self._stop.is_set():
                        w.stop()
                        break
                    obj = ev["object"]
                    spec = None if ev["type"] == "DELETED" else pod_spec(obj)
                    self._submit(loop, self._apply(obj.metadata.name, spec))
                backoff = 0.5
            except Exception as exc:  # an apiserver restart must not kill the emulator
                log.warning("pod watch failed; re-listing", extra={"error": str(exc)[:300]})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _submit(self, loop: asyncio.AbstractEventLoop, coro) -> None:
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=30)

    async def _sync(self, items) -> None:
        live = {}
        for pod in items:
            spec = pod_spec(pod)
            if spec is not None:
                live[spec.name] = spec
        for name in list(self.fleet.pods):
            if name not in live:
                await self.fleet.remove_pod(name)
        for spec in live.values():
            await self._apply(spec.name, spec)

    async def _apply(self, name: str, spec: PodSpec | None) -> None:
        if spec is None:
            await self.fleet.remove_pod(name)
            self._written.pop(name, None)
            return
        if spec.node not in self.fleet.nodes:
            try:
                node = await asyncio.to_thread(self.v1.read_node, spec.node)
                self.fleet.set_node(node_spec(node))
            except Exception as exc:
                log.warning("node read failed", extra={"node": spec.node, "error": str(exc)})
        self.fleet.add_pod(spec)

    # -- usage ---------------------------------------------------------------------------
    async def report_usage(self) -> None:
        """Write each served pod's CPU/memory usage where kwok reads it (when changed)."""
        for pod in list(self.fleet.pods.values()):
            cpu = f"{max(round(pod.cpu_usage_cores * 1000), 1)}m"
            mem = str(pod.memory_used_bytes())
            if self._written.get(pod.name) == (cpu, mem):
                continue
            body = {"metadata": {"annotations": {USAGE_CPU: cpu, USAGE_MEMORY: mem}}}
            try:
                await asyncio.to_thread(self.v1.patch_namespaced_pod, pod.name, pod.namespace, body)
                self._written[pod.name] = (cpu, mem)
                telemetry.ANNOTATIONS.labels("ok").inc()
            except Exception as exc:  # the pod may be gone; the watch will say so
                telemetry.ANNOTATIONS.labels("error").inc()
                log.debug("usage patch failed", extra={"pod": pod.name, "error": str(exc)})
