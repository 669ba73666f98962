"""Thin Kubernetes API adapters: list nodes/pods for the cache, and the Binding subresource.

Lists ask for raw JSON (``_preload_content=False``): the cache parses the same v1 JSON the
scheduler sends, and skipping the client's model classes keeps a 2 s re-list cheap.
"""

from __future__ import annotations

import json
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
    """:class:`~services.scheduler_extender.cache.ClusterSource` over CoreV1Api."""

    def __init__(self, api) -> None:
        from kubernetes import client

        self.v1 = client.CoreV1Api(api)

    def list_nodes(self) -> list[dict]:
        resp = self.v1.list_node(
            resource_version="0", _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
        return json.loads(resp.data)["items"]

    def list_pods(self) -> list[dict]:
        resp = self.v1.list_pod_for_all_namespaces(
            resource_version="0",
            field_selector=POD_FIELD_SELECTOR,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        return json.loads(resp.data)["items"]


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
