"""Carry out a clamped :class:`~ecrl.policies.base.Action` on the cluster and on Triton.

- replicas: the Deployment's ``scale`` subresource (what ``kubectl scale`` and the HPA use);
- CPU/memory requests: the pod ``resize`` subresource (in-place, Kubernetes 1.33), pod by
  pod; when the API refuses it (older cluster, infeasible, a memory-limit decrease) the
  Deployment's pod template is patched instead — a rolling update;
- Triton ``max_batch_size`` / ``max_queue_delay_microseconds`` / instance count: the model
  repository's load-with-config (``POST /v2/repository/models/<m>/load``). A load sent to a
  Service reaches one pod, and a new or restarted pod starts from the repository's
  ``config.pbtxt``: on the GPU box (``--triton-pod-port``) :class:`PodTritons` loads every ready
  pod by its IP and, every tick, reloads any pod whose config is not the target (new replicas,
  restarts). On the testbed the emulator's Service endpoint stands for the repository (a load
  there reaches every pod and the pods it starts), so one load at ``--triton-url`` suffices.

Every operation returns an :class:`~.loop.OpResult`; no failure escapes to the loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from ecrl.policies.base import Action, Observation
from ecrl.serving import MODEL_NAME
from services.collector.observation import Batching
from services.collector.sources import SourceError, model_config, parse_model_config

from .loop import OpResult

log = logging.getLogger("ecrl.actuator.apply")

REQUEST_TIMEOUT_S = (2.0, 5.0)
"""(connect, read) for every API call: a hung apiserver must not hang a tick for long."""
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


def _api_errors() -> tuple[type[BaseException], ...]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError, OSError)


def _why(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    body = getattr(exc, "body", None)
    if status is not None:
        detail = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
        try:
            doc = json.loads(detail)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and "message" in doc:
            detail = str(doc["message"])
        return f"HTTP {status} {reason}: {detail}"[:300]
    return " ".join(str(exc).split())[:300]


def resources_patch(obs: Observation, action: Action) -> dict[str, dict[str, str]]:
    """``resources`` for the new requests; limits follow where they equalled the requests
    (Guaranteed QoS must stay Guaranteed for an in-place resize) or would fall below them."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if action.cpu_request_cores is not None:
        cpu = f"{round(action.cpu_request_cores * 1000)}m"
        requests["cpu"] = cpu
        if obs.cpu_limit_cores <= max(obs.cpu_request_cores, action.cpu_request_cores) + 1e-9:
            limits["cpu"] = cpu
    if action.memory_request_bytes is not None:
        mem = str(int(action.memory_request_bytes))
        requests["memory"] = mem
        if obs.memory_limit_bytes <= max(obs.memory_request_bytes, action.memory_request_bytes):
            limits["memory"] = mem
    out = {"requests": requests}
    if limits:
        out["limits"] = limits
    return out


def triton_config(obs: Observation, action: Action) -> dict:
    """The model config to load: the action's settings over the current ones."""
    batch = obs.max_batch_size if action.max_batch_size is None else action.max_batch_size
    delay_s = obs.batch_delay_s if action.batch_delay_s is None else action.batch_delay_s
    count = obs.instance_count if action.instance_count is None else action.instance_count
    return model_config(Batching(int(batch), delay_s, int(count)))


class TritonLoader:
    """Load-with-config through tritonclient's HTTP model-control API."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def load(self, config: dict) -> None:
        import tritonclient.http as th

        host = self.url.removeprefix("http://").removeprefix("https://")
        client = th.InferenceServerClient(
            host,
            ssl=self.url.startswith("https://"),
            connection_timeout=self.timeout_s,
            network_timeout=self.timeout_s,
        )
        try:
            client.load_model(MODEL_NAME, config=json.dumps(config))
        finally:
            client.close()


def config_matches(current: dict, target: dict) -> bool:
    """Triton's model config (``GET /v2/models/<m>/config``) has the target's settings.

    Instances compare as configured (``placed=False``): Triton lists the GPUs it placed them
    on, the target none. A config that does not parse (``{}`` for a pod that did not answer)
    does not match, so the pod is loaded.
    """
    try:
        return parse_model_config(current, placed=False) == parse_model_config(target, placed=False)
    except SourceError:
        return False


class PodTritons:
    """Every ready Triton pod on the target config, by pod IP (the real cluster).

    ``load`` sets the target and loads it on every ready pod; ``maintain`` (each tick) reads
    each ready pod's config and reloads those that differ — a replica the actuator just added
    or a restarted container starts from the repository's ``config.pbtxt``.
    """

    def __init__(
        self,
        ready_pods: Callable[[], list[tuple[str, str]]],
        port: int,
        timeout_s: float = 10.0,
    ) -> None:
        self.ready_pods = ready_pods
        """(name, pod IP) of the Deployment's ready pods."""
        self.port = port
        self.timeout_s = timeout_s
        self.target: dict | None = None

    def _client(self, ip: str):
        import tritonclient.http as th

        host = f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}"
        return th.InferenceServerClient(
            host, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
        )

    def load(self, config: dict) -> None:
        """Load ``config`` on every ready pod; raises naming the pods that failed."""
        self.target = config
        pods = self.ready_pods()
        if not pods:
            raise RuntimeError("no ready Triton pod to load the config on")
        failed = [f"{name}: {err}" for name, err in self._load_all(pods) if err]
        if failed:
            raise RuntimeError(f"load-with-config failed on {len(failed)} pod(s): {failed}")

    def _load_all(self, pods: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out = []
        for name, ip in pods:
            client = self._client(ip)
            try:
                client.load_model(MODEL_NAME, config=json.dumps(self.target))
                out.append((name, ""))
            except Exception as exc:  # tritonclient, gevent and socket errors
                out.append((name, " ".join(str(exc).split())[:200]))
            finally:
                client.close()
        return out

    def maintain(self) -> list[OpResult]:
        """Reload the ready pods whose config is not the target; one result per reload."""
        if self.target is None:
            return []
        try:
            pods = self.ready_pods()
        except Exception as exc:  # the API is down: nothing to converge this tick
            return [OpResult("triton_config", "error", f"cannot list pods: {_why(exc)}")]
        drifted = []
        for name, ip in pods:
            client = self._client(ip)
            try:
                current = client.get_model_config(MODEL_NAME)
            except Exception:  # a pod still loading, or unreachable: try to load it
                current = {}
            finally:
                client.close()
            if not config_matches(current, self.target):
                drifted.append((name, ip))
        target = json.dumps(self.target, separators=(",", ":"))
        return [
            OpResult("triton_config", "error" if err else "ok", f"{name}: {err or target}")
            for name, err in self._load_all(drifted)
        ]


class KubeApplier:
    """:class:`~.loop.Applier` over the Kubernetes API (an ApiClient) and a Triton loader."""

    def __init__(
        self,
        api,
        namespace: str,
        deployment: str,
        triton: Callable[[dict], None] | None,
        upkeep: Callable[[], list[OpResult]] | None = None,
    ) -> None:
        from kubernetes import client

        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.deployment = deployment
        self.triton = triton
        """Load-with-config of a target model config (raises on failure)."""
        self.upkeep = upkeep
        """Every-tick convergence (:meth:`PodTritons.maintain`), if any."""

    def maintain(self) -> list[OpResult]:
        """Every-tick upkeep (Triton config on new/restarted pods); [] when there is none."""
        return self.upkeep() if self.upkeep is not None else []

    def ready_pods(self) -> list[tuple[str, str]]:
        """(name, IP) of the Deployment's Ready pods (its selector's ``matchLabels``)."""
        dep = self.apps.read_namespaced_deployment(
            self.deployment, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
        )
        labels = dep.spec.selector.match_labels or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S
        ).items
        return [
            (p.metadata.name, p.status.pod_ip)
            for p in pods
            if p.metadata.deletion_timestamp is None
            and p.status.pod_ip
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def current_replicas(self) -> int | None:
        try:
            scale = self.apps.read_namespaced_deployment_scale(
                self.deployment, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
        except _api_errors() as exc:
            log.warning("cannot read the scale subresource", extra={"error": _why(exc)})
            return None
        return scale.spec.replicas

    def apply(self, obs: Observation, action: Action) -> list[OpResult]:
        ops: list[OpResult] = []
        if action.desired_replicas is not None:
            ops.append(self.scale(action.desired_replicas))
        if action.cpu_request_cores is not None or action.memory_request_bytes is not None:
            ops.append(self.resize(resources_patch(obs, action)))
        if (
            action.max_batch_size is not None
            or action.batch_delay_s is not None
            or action.instance_count is not None
        ):
            ops.append(self.reload(triton_config(obs, action)))
        return ops

    def scale(self, replicas: int) -> OpResult:
        try:
            self.apps.patch_namespaced_deployment_scale(
                self.deployment,
                self.namespace,
                {"spec": {"replicas": int(replicas)}},
                _content_type=MERGE,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except _api_errors() as exc:
            return OpResult("replicas", "error", _why(exc))
        return OpResult("replicas", "ok", f"spec.replicas={replicas} (scale subresource)")

    def resize(self, resources: dict) -> OpResult:
        """In place on every live pod; the pod template (rolling update) if that is refused."""
        try:
            dep = self.apps.read_namespaced_deployment(
                self.deployment, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
            container = dep.spec.template.spec.containers[0].name
            labels = dep.spec.selector.match_labels or {}
            selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_S
            ).items
        except _api_errors() as exc:
            return OpResult("resize", "error", _why(exc))
        body = {"spec": {"containers": [{"name": container, "resources": resources}]}}
        refused = ""
        resized = 0
        for pod in pods:
            if pod.metadata.deletion_timestamp is not None:
                continue
            try:
                self.core.patch_namespaced_pod_resize(
                    pod.metadata.name,
                    self.namespace,
                    body,
                    _content_type=STRATEGIC,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
                resized += 1
            except _api_errors() as exc:
                refused = f"{pod.metadata.name}: {_why(exc)}"
                break
        if not refused:
            return OpResult("resize", "ok", f"{resized} pod(s) resized in place to {resources}")
        template = {"spec": {"template": body}}
        try:
            self.apps.patch_namespaced_deployment(
                self.deployment,
                self.namespace,
                template,
                _content_type=STRATEGIC,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except _api_errors() as exc:
            return OpResult(
                "resize", "error", f"in-place refused ({refused}); template: {_why(exc)}"
            )
        return OpResult("resize", "fallback", f"in-place refused ({refused}); rolling update")

    def reload(self, config: dict) -> OpResult:
        if self.triton is None:
            return OpResult("triton_config", "error", "no Triton URL configured")
        try:
            self.triton(config)
        except Exception as exc:  # tritonclient raises its own, gevent and socket errors
            return OpResult("triton_config", "error", " ".join(str(exc).split())[:300])
        return OpResult("triton_config", "ok", json.dumps(config, separators=(",", ":")))
