"""Emulated GPU nodes for the testbed, generated from the twin's cluster scenarios.

The twin and the testbed read one definition of a cluster (``ecrl/configs/*.yaml``): each
node becomes a kwok-managed Node object carrying what the NVIDIA GPU operator puts on a
MicroK8s GPU node — ``nvidia.com/gpu`` capacity as time-sliced replicas and the
gpu-feature-discovery labels — plus ``ecrl.io/gpu-speed`` for the data-plane emulator. The
reference box also exists as a hand-written manifest (``deploy/testbed/nodes-reference-box.yaml``)
that documents the labels one by one.
"""

from __future__ import annotations

from pathlib import Path

from ecrl.twin.spec import ClusterSpec, NodeSpec, resolve_cluster

MIB = 2**20


def product_label(node: NodeSpec) -> str:
    """``nvidia.com/gpu.product``: the card named by the node name's last segment.

    The twin's scenario has no product field; its node names end in the card
    (``box-rtx3080``, ``edge-t4``). Time-sliced products carry the operator's ``-SHARED``.
    """
    card = node.name.rsplit("-", 1)[-1].upper()
    return f"NVIDIA-{card}-SHARED"


def node_manifest(node: NodeSpec, profile_vram_bytes: int) -> dict:
    """The Node object for one scenario node (a kwok fake node, Ready once kwok sees it)."""
    gpus = node.gpus
    slots = sum(g.slots for g in gpus)
    vram = (gpus[0].vram_bytes or profile_vram_bytes) if gpus else 0
    labels = {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "ecrl.io/emulated": "true",
    }
    annotations = {
        "kwok.x-k8s.io/node": "fake",
        "metrics.k8s.io/resource-metrics-path": f"/metrics/nodes/{node.name}/metrics/resource",
    }
    if gpus:
        labels |= {
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.count": str(len(gpus)),
            "nvidia.com/gpu.product": product_label(node),
            "nvidia.com/gpu.memory": str(vram // MIB),
            "nvidia.com/gpu.replicas": str(gpus[0].slots),
            "nvidia.com/gpu.sharing-strategy": "time-slicing",
        }
        # One speed per node: the emulator models a node's GPUs as one kind of card.
        annotations["ecrl.io/gpu-speed"] = str(gpus[0].speed)
    cpu = f"{round(node.cpu_cores * 1000)}m"
    mem = f"{node.memory_bytes // MIB}Mi"
    resources = {"cpu": cpu, "memory": mem, "pods": "110"}
    if gpus:
        resources["nvidia.com/gpu"] = str(slots)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels, "annotations": annotations},
        "spec": {},
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "operatingSystem": "linux",
            },
            "phase": "Running",
        },
    }


def manifests(cluster: ClusterSpec, profile_vram_bytes: int) -> dict:
    """A v1 List of every node of the scenario (``kubectl apply -f`` takes it as JSON)."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [node_manifest(n, profile_vram_bytes) for n in cluster.nodes],
    }


def write_manifests(scenario: str, out: Path) -> Path:
    """Write the node list of a scenario (``multi-node`` or a cluster YAML) to ``out``."""
    import json

    from ecrl.twin.profile import builtin_profile_path, load_profile

    cluster = resolve_cluster(scenario)
    prof = cluster.profile
    profile = load_profile(prof if prof.endswith((".yaml", ".yml")) else builtin_profile_path(prof))
    out.write_text(json.dumps(manifests(cluster, profile.gpu.vram_bytes), indent=1))
    return out
