"""Thin Kubernetes API adapters: list/watch nodes and pods for the caches, and the Binding
subresource.

Lists and watches ask for raw JSON (``_preload_content=False``): the caches parse the same v1
JSON the scheduler sends, and skipping the client's model classes keeps them cheap.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

REQUEST_TIMEOUT_S = (2.0, 5.0)
"""(connect, read) for every API call: a hung apiserver must not hang a refresh or a bind."""
POD_FIELD_SELECTOR = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
"""Only pods that hold resources on a node (the cache re-checks both conditions)."""


def api_client(kubeconfig: Path | None):
    """An ApiClient from ``kubeconfig``, else in-cluster, else the default kubeconfig.

    urllib3 retries are off: the cache re-lists every interval anyway, and a bind should
    report its failure to the scheduler at once rather than after hidden retries.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    configuration.retries = 0
    return client.ApiClient(configuration)


class KubeSource:
    """:class:`~services.scheduler_extender.cache.ClusterSource` (re-lists) and
    :class:`~services.scheduler_extender.informer.WatchSource` (list + watch) over CoreV1Api."""

    def __init__(self, api) -> None:
        from kubernetes import client

        self.v1 = client.CoreV1Api(api)

    def list_nodes(self) -> list[dict]:
        return self.list("nodes")[0]

    def list_pods(self) -> list[dict]:
        return self.list("pods")[0]

    def _lister(self, kind: str):
        if kind == "nodes":
            return self.v1.list_node, {}
        if kind == "pods":
            return self.v1.list_pod_for_all_namespaces, {"field_selector": POD_FIELD_SELECTOR}
        raise ValueError(f"unknown kind {kind!r}")

    def list(self, kind: str) -> tuple[list[dict], str]:
        """``(items, resourceVersion)`` from the apiserver's watch cache."""
        fn, kwargs = self._lister(kind)
        resp = fn(
            resource_version="0",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S,
            **kwargs,
        )
        doc = json.loads(resp.data)
        return doc.get("items") or [], doc["metadata"]["resourceVersion"]

    def watch(self, kind: str, resource_version: str, timeout_s: float) -> Iterator[dict]:
        """Events after ``resource_version`` with bookmarks; the server ends the stream after
        ``timeout_s``, and a stream silent for 5 s longer raises (read timeout)."""
        from kubernetes.watch.watch import iter_resp_lines

        fn, kwargs = self._lister(kind)
        resp = fn(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=max(int(timeout_s), 1),
            _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT_S[0], timeout_s + 5.0),
            **kwargs,
        )
        try:
            for line in iter_resp_lines(resp):
                if line:
                    yield json.loads(line)
        finally:
            resp.release_conn()


class KubeBinder:
    """Binds a pod through ``POST .../pods/{name}/binding`` (what DefaultBinder does)."""

    def __init__(self, api) -> None:
        from kubernetes import client

        self.v1 = client.CoreV1Api(api)

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, **({"uid": uid} if uid else {})},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        # _preload_content=False: the client's V1Binding model cannot deserialize the
        # apiserver's Status reply (kubernetes-client/python issue 825).
        self.v1.create_namespaced_pod_binding(
            name, namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
