"""Placement scoring: which node should host the next inference pod (pure logic, no torch).

One transport-free core used three ways: by the twin (a :data:`ecrl.twin.twin.PlacementScorer`
hook, :func:`twin_placement`), by the policy server's ``ScoreNodes`` and by the scheduler
extender's ``/prioritize`` (:func:`extender_priorities` scales scores to 0–10).

- :class:`NodeState` is the plain per-node data a collector or the twin provides;
  :func:`node_features` turns candidate nodes into a versioned feature matrix ``[n_nodes, F]``:
  each node's own features followed by their mean over the candidates (DeepSets-style
  context), so a scorer applying the SAME weights to every row is permutation-equivariant
  and works for any node count.
- The default kube-scheduler's scores are reproduced from upstream (NodeResourcesFit
  LeastAllocated and NodeResourcesBalancedAllocation): the GPU-unaware baseline.
- :class:`MlpNodeScorer` (numpy weights, ``.npz``) and :class:`OnnxNodeScorer` (onnxruntime,
  metadata checked against the node schema hash) are the learned scorers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ecrl.errors import InvalidRequest, Permanent

if TYPE_CHECKING:
    from ecrl.twin.twin import PlacementScorer, Twin

NODE_SCHEMA_VERSION = "ecrl.node/v1"
ONNX_KIND = "placement-scorer"
INPUT_NAME = "node_features"
OUTPUT_NAME = "scores"
MAX_NODE_SCORE = 100
"""framework.MaxNodeScore (k8s.io/kube-scheduler/framework): every score plugin's range."""
MAX_EXTENDER_PRIORITY = 10
"""extenderv1.MaxExtenderPriority (k8s.io/kube-scheduler/extender/v1/types.go)."""
COUNT_CAP = 64.0
"""Slot and replica counts are capped (no edge node comes close; keeps inputs bounded)."""

LOCAL_FEATURES: tuple[str, ...] = (
    "gpu_slots_free_ratio",
    "gpu_slots_free",
    "gpu_speed_rel",
    "gpu_speed_share_after",
    "gpu_util_ratio",
    "gpu_util_missing",
    "vram_free_ratio",
    "cpu_free_ratio_after",
    "memory_free_ratio_after",
    "replicas",
    "least_allocated_ratio",
    "balanced_allocation_ratio",
)
"""Per-node features, in order (``*_after``: as if the incoming pod were bound there)."""
NODE_FEATURE_NAMES: tuple[str, ...] = LOCAL_FEATURES + tuple(f"mean_{n}" for n in LOCAL_FEATURES)
NODE_FEATURE_DIM = len(NODE_FEATURE_NAMES)


def node_schema_hash() -> str:
    """SHA-256 (first 16 hex) of the node schema version and the ordered feature names."""
    blob = json.dumps({"version": NODE_SCHEMA_VERSION, "features": NODE_FEATURE_NAMES})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


NODE_SCHEMA_HASH = node_schema_hash()


@dataclass(frozen=True, slots=True)
class NodeState:
    """What is known about one candidate node (from the collector, or read off the twin)."""

    name: str
    gpu_count: int
    gpu_slots_total: int
    """Time-sliced ``nvidia.com/gpu`` allocatable on the node."""
    gpu_slots_free: int
    gpu_speed: float
    """Mean throughput of the node's GPUs relative to the profile's card (1.0 = calibrated)."""
    gpu_util_ratio: float | None
    """DCGM_FI_DEV_GPU_UTIL / 100, averaged over the node's GPUs; None = missing."""
    vram_free_ratio: float
    cpu_allocatable_cores: float
    cpu_requested_cores: float
    """Sum of requests of the pods bound to the node (kube-scheduler's NodeInfo.Requested)."""
    memory_allocatable_bytes: float
    memory_requested_bytes: float
    replicas: int
    """Pods of the managed Deployment already on the node."""


@dataclass(frozen=True, slots=True)
class PodRequest:
    """The incoming pod's requests (one time-sliced GPU slot is implied)."""

    cpu_cores: float
    memory_bytes: float


def check_nodes(nodes: Sequence[NodeState], pod: PodRequest) -> None:
    """Refuse inputs no cluster produces (InvalidRequest names the node and field)."""
    if not nodes:
        raise InvalidRequest("nodes: at least one candidate node is required")
    for n in nodes:
        for name in ("gpu_slots_total", "cpu_allocatable_cores", "memory_allocatable_bytes"):
            v = getattr(n, name)
            if not (math.isfinite(v) and v > 0):
                raise InvalidRequest(f"nodes[{n.name}].{name}: must be > 0, got {v!r}")
        for name in ("gpu_slots_free", "cpu_requested_cores", "memory_requested_bytes", "replicas"):
            v = getattr(n, name)
            if not (math.isfinite(v) and v >= 0):
                raise InvalidRequest(f"nodes[{n.name}].{name}: must be >= 0, got {v!r}")
    if not (pod.cpu_cores >= 0 and pod.memory_bytes >= 0):
        raise InvalidRequest(f"pod: requests must be >= 0, got {pod!r}")


# ---------------------------------------------------------------- default kube-scheduler scores
# Reproduced from kubernetes/kubernetes pkg/scheduler/framework/plugins/noderesources/:
# least_allocated.go (leastResourceScorer, leastRequestedScore), balanced_allocation.go
# (balancedResourceScorer) and resource_allocation.go (requested = node's requests + the pod's).
# Default resources: cpu and memory with weight 1 each (config/v1 defaults); integers as in Go.


def _node_requests(node: NodeState, pod: PodRequest) -> tuple[list[int], list[int]]:
    """(requested incl. the pod, allocatable) as Go ints: CPU in millicores, memory in bytes."""
    requested = [
        round(1000 * (node.cpu_requested_cores + pod.cpu_cores)),
        round(node.memory_requested_bytes + pod.memory_bytes),
    ]
    return requested, [
        round(1000 * node.cpu_allocatable_cores),
        round(node.memory_allocatable_bytes),
    ]


def least_allocated_score(node: NodeState, pod: PodRequest) -> int:
    """NodeResourcesFit LeastAllocated: mean over cpu, memory of (alloc − req)·100 // alloc."""
    requested, allocatable = _node_requests(node, pod)
    total, weights = 0, 0
    for req, alloc in zip(requested, allocatable, strict=True):
        if alloc == 0:
            continue
        total += 0 if req > alloc else (alloc - req) * MAX_NODE_SCORE // alloc
        weights += 1
    return total // weights if weights else 0


def balanced_allocation_score(node: NodeState, pod: PodRequest) -> int:
    """NodeResourcesBalancedAllocation: (1 − std of requested fractions)·100, std = |f₁ − f₂|/2."""
    requested, allocatable = _node_requests(node, pod)
    fractions = [min(r / a, 1.0) for r, a in zip(requested, allocatable, strict=True) if a]
    std = 0.0
    if len(fractions) == 2:
        std = abs((fractions[0] - fractions[1]) / 2)
    elif len(fractions) > 2:
        mean = sum(fractions) / len(fractions)
        std = math.sqrt(sum((f - mean) ** 2 for f in fractions) / len(fractions))
    return int((1 - std) * MAX_NODE_SCORE)


# ------------------------------------------------------------------------------- node features
def node_features(nodes: Sequence[NodeState], pod: PodRequest) -> np.ndarray:
    """Feature matrix ``[n_nodes, NODE_FEATURE_DIM]`` (float32): own features, then their mean.

    Pass the candidates the scheduler's filter kept (what ``/prioritize`` receives): the mean
    is context over the choice being made.
    """
    check_nodes(nodes, pod)
    rows = []
    for n in nodes:
        util_missing = n.gpu_util_ratio is None or not math.isfinite(n.gpu_util_ratio)
        rows.append(
            [
                n.gpu_slots_free / n.gpu_slots_total,
                min(n.gpu_slots_free, COUNT_CAP),
                n.gpu_speed,
                n.gpu_speed * max(n.gpu_count, 1) / (min(n.replicas, COUNT_CAP) + 1.0),
                0.0 if util_missing else n.gpu_util_ratio,
                float(util_missing),
                n.vram_free_ratio,
                1.0 - (n.cpu_requested_cores + pod.cpu_cores) / n.cpu_allocatable_cores,
                1.0 - (n.memory_requested_bytes + pod.memory_bytes) / n.memory_allocatable_bytes,
                min(n.replicas, COUNT_CAP),
                least_allocated_score(n, pod) / MAX_NODE_SCORE,
                balanced_allocation_score(n, pod) / MAX_NODE_SCORE,
            ]
        )
    local = np.clip(np.asarray(rows, dtype=np.float64), -COUNT_CAP, COUNT_CAP)
    context = np.broadcast_to(local.mean(axis=0), local.shape)
    return np.concatenate([local, context], axis=1).astype(np.float32)


# ---------------------------------------------------------------------- the columnar path
# A 100-node /prioritize through the policy server spent ~1.3 ms building, checking and
# featurizing NodeState objects one by one (BENCHMARKS.md). The same arithmetic on columns
# gives equal results — not just close: the Go integer scores are computed in int64 — and
# hands anything unusual back to the per-node code, which then refuses it in its own words.

_EXACT_INT = float(2**53)
"""Millicores and bytes above this are not exact in float64: the per-node path decides."""


_INT_COLUMNS = ("gpu_count", "gpu_slots_total", "gpu_slots_free", "replicas")
_FLOAT_COLUMNS = (
    "gpu_speed",
    "gpu_util_ratio",
    "vram_free_ratio",
    "cpu_allocatable_cores",
    "cpu_requested_cores",
    "memory_allocatable_bytes",
    "memory_requested_bytes",
)
"""The numeric :class:`NodeState` fields by column type (None reads as NaN in a float table)."""
_read_ints = attrgetter(*_INT_COLUMNS)
_read_floats = attrgetter(*_FLOAT_COLUMNS)


@dataclass(frozen=True)
class NodeColumns:
    """Candidate nodes as columns (one array per :class:`NodeState` field, same order)."""

    names: tuple[str, ...]
    gpu_count: np.ndarray
    gpu_slots_total: np.ndarray
    gpu_slots_free: np.ndarray
    gpu_speed: np.ndarray
    gpu_util_ratio: np.ndarray
    """0.0 where :attr:`gpu_util_present` is False."""
    gpu_util_present: np.ndarray
    vram_free_ratio: np.ndarray
    cpu_allocatable_cores: np.ndarray
    cpu_requested_cores: np.ndarray
    memory_allocatable_bytes: np.ndarray
    memory_requested_bytes: np.ndarray
    replicas: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def of(cls, nodes: Sequence[NodeState]) -> NodeColumns:
        """Columns of ``nodes`` (the per-node and columnar paths see the same numbers)."""
        present = np.fromiter((n.gpu_util_ratio is not None for n in nodes), bool, len(nodes))
        return cls.read(nodes, present)

    @classmethod
    def read(cls, records: Sequence[Any], util_present: np.ndarray) -> NodeColumns:
        """Columns of records with :class:`NodeState`'s attribute names: NodeState itself, or
        the policy server's ``ecrl.v1.NodeState`` message. Two C-level getter calls per record
        (one per column was a pass over the records each). ``gpu_util_ratio`` counts only where
        ``util_present`` (an absent proto field reads 0.0, an absent NodeState value None)."""
        n = len(records)
        ints = np.array(list(map(_read_ints, records)), dtype=np.int64).reshape(
            n, len(_INT_COLUMNS)
        )
        floats = np.array(list(map(_read_floats, records)), dtype=np.float64).reshape(
            n, len(_FLOAT_COLUMNS)
        )
        columns = {name: ints[:, i] for i, name in enumerate(_INT_COLUMNS)}
        columns.update({name: floats[:, i] for i, name in enumerate(_FLOAT_COLUMNS)})
        columns["gpu_util_ratio"] = np.where(util_present, columns["gpu_util_ratio"], 0.0)
        return cls(
            names=tuple(map(attrgetter("name"), records)),
            gpu_util_present=util_present,
            **columns,
        )

    def take(self, idx: Sequence[int]) -> NodeColumns:
        """The rows ``idx``, in that order (a subset of a memoized table's columns)."""
        sel = np.asarray(idx, dtype=np.intp)
        names = self.names
        arrays = {f: getattr(self, f)[sel] for f in _ARRAY_FIELDS}
        return NodeColumns(names=tuple([names[i] for i in sel.tolist()]), **arrays)

    def states(self) -> list[NodeState]:
        """Back to :class:`NodeState` objects (the per-node path, for what it must decide)."""
        util = [
            float(u) if present else None
            for u, present in zip(self.gpu_util_ratio, self.gpu_util_present, strict=True)
        ]
        return [
            NodeState(
                name=name,
                gpu_count=int(self.gpu_count[i]),
                gpu_slots_total=int(self.gpu_slots_total[i]),
                gpu_slots_free=int(self.gpu_slots_free[i]),
                gpu_speed=float(self.gpu_speed[i]),
                gpu_util_ratio=util[i],
                vram_free_ratio=float(self.vram_free_ratio[i]),
                cpu_allocatable_cores=float(self.cpu_allocatable_cores[i]),
                cpu_requested_cores=float(self.cpu_requested_cores[i]),
                memory_allocatable_bytes=float(self.memory_allocatable_bytes[i]),
                memory_requested_bytes=float(self.memory_requested_bytes[i]),
                replicas=int(self.replicas[i]),
            )
            for i, name in enumerate(self.names)
        ]


_ARRAY_FIELDS = tuple(f.name for f in fields(NodeColumns) if f.name != "names")


def columns_pass_check_nodes(cols: NodeColumns, pod: PodRequest) -> bool:
    """:func:`check_nodes` as one vector test (False: let it raise its message)."""
    positive = (cols.gpu_slots_total, cols.cpu_allocatable_cores, cols.memory_allocatable_bytes)
    counts = (cols.gpu_slots_free, cols.cpu_requested_cores, cols.memory_requested_bytes)
    return bool(
        len(cols)
        and all((np.isfinite(c) & (c > 0)).all() for c in positive)
        and all((np.isfinite(c) & (c >= 0)).all() for c in (*counts, cols.replicas))
        and pod.cpu_cores >= 0
        and pod.memory_bytes >= 0
    )


def kube_plugin_scores(
    cpu_used: np.ndarray,
    cpu_alloc: np.ndarray,
    mem_used: np.ndarray,
    mem_alloc: np.ndarray,
    pod: PodRequest,
) -> dict[str, np.ndarray] | None:
    """:func:`least_allocated_score` and :func:`balanced_allocation_score` of many nodes at
    once (int64), from the nodes' requested (without the pod) and allocatable cores and bytes.

    The same integer operations as the per-node functions, so equal results; None — take the
    per-node path — when a value is outside float64's exact integers.
    """
    # resource_allocation.go: requested includes the pod; CPU in millicores, memory in bytes
    req_c = np.rint(1000.0 * (cpu_used + pod.cpu_cores))
    alloc_c = np.rint(1000.0 * cpu_alloc)
    req_m = np.rint(mem_used + pod.memory_bytes)
    alloc_m = np.rint(mem_alloc)
    if max(req_c.max(), alloc_c.max(), req_m.max(), alloc_m.max()) > _EXACT_INT:
        return None
    req_c, alloc_c = req_c.astype(np.int64), alloc_c.astype(np.int64)
    req_m, alloc_m = req_m.astype(np.int64), alloc_m.astype(np.int64)
    has_c, has_m = alloc_c != 0, alloc_m != 0
    return {
        "least-allocated": _least_allocated(req_c, alloc_c, has_c, req_m, alloc_m, has_m),
        "balanced-allocation": _balanced_allocation(req_c, alloc_c, has_c, req_m, alloc_m, has_m),
    }


def _least_term(req: np.ndarray, alloc: np.ndarray, has: np.ndarray) -> np.ndarray:
    """``0 if req > alloc else (alloc − req)·100 // alloc`` (0 where alloc is 0: skipped)."""
    term = (alloc - req) * MAX_NODE_SCORE // np.where(has, alloc, 1)
    return np.where(has & (req <= alloc), term, 0)


def _least_allocated(req_c, alloc_c, has_c, req_m, alloc_m, has_m) -> np.ndarray:
    total = _least_term(req_c, alloc_c, has_c) + _least_term(req_m, alloc_m, has_m)
    weights = has_c.astype(np.int64) + has_m
    return np.where(weights > 0, total // np.maximum(weights, 1), 0)


def _balanced_allocation(req_c, alloc_c, has_c, req_m, alloc_m, has_m) -> np.ndarray:
    frac_c = np.minimum(np.divide(req_c, alloc_c, out=np.zeros(len(req_c)), where=has_c), 1.0)
    frac_m = np.minimum(np.divide(req_m, alloc_m, out=np.zeros(len(req_m)), where=has_m), 1.0)
    std = np.where(has_c & has_m, np.abs((frac_c - frac_m) / 2), 0.0)
    return np.trunc((1 - std) * MAX_NODE_SCORE).astype(np.int64)


def _plugin_scores_of(cols: NodeColumns, pod: PodRequest) -> dict[str, np.ndarray] | None:
    if not columns_pass_check_nodes(cols, pod):
        return None
    return kube_plugin_scores(
        cols.cpu_requested_cores,
        cols.cpu_allocatable_cores,
        cols.memory_requested_bytes,
        cols.memory_allocatable_bytes,
        pod,
    )


def node_features_columns(cols: NodeColumns, pod: PodRequest) -> np.ndarray | None:
    """:func:`node_features` of the same nodes, equal to the last bit; None when the per-node
    path must decide (a refusal, or a value outside the exact range)."""
    local = node_local_features_columns(cols, pod)
    return None if local is None else with_context(local)


def node_local_features_columns(cols: NodeColumns, pod: PodRequest) -> np.ndarray | None:
    """The first half of :func:`node_features_columns`: each node's own features (float64,
    clipped), row by row — so the rows of a subset are the same rows of the whole."""
    plugin = _plugin_scores_of(cols, pod)
    if plugin is None:
        return None
    util_missing = ~cols.gpu_util_present | ~np.isfinite(cols.gpu_util_ratio)
    replicas = np.minimum(cols.replicas, COUNT_CAP)
    local = np.column_stack(
        [
            cols.gpu_slots_free / cols.gpu_slots_total,
            np.minimum(cols.gpu_slots_free, COUNT_CAP),
            cols.gpu_speed,
            cols.gpu_speed * np.maximum(cols.gpu_count, 1) / (replicas + 1.0),
            np.where(util_missing, 0.0, cols.gpu_util_ratio),
            util_missing,
            cols.vram_free_ratio,
            1.0 - (cols.cpu_requested_cores + pod.cpu_cores) / cols.cpu_allocatable_cores,
            1.0 - (cols.memory_requested_bytes + pod.memory_bytes) / cols.memory_allocatable_bytes,
            replicas,
            plugin["least-allocated"] / MAX_NODE_SCORE,
            plugin["balanced-allocation"] / MAX_NODE_SCORE,
        ]
    ).astype(np.float64)
    return np.clip(local, -COUNT_CAP, COUNT_CAP)


def with_context(local: np.ndarray) -> np.ndarray:
    """The second half: each row's own features, then the candidates' mean (float32)."""
    context = np.broadcast_to(local.mean(axis=0), local.shape)
    return np.concatenate([local, context], axis=1).astype(np.float32)


def extender_priorities(scores: np.ndarray) -> list[int]:
    """Min-max scale scores to the extender's integer 0–10 (all equal → all 10)."""
    return extender_priority_array(scores).tolist()


def extender_priority_array(scores: np.ndarray) -> np.ndarray:
    """:func:`extender_priorities` as an int64 array. ``np.rint`` rounds half to even, as
    Python's ``round`` does, on the same float64 values; a non-finite scaled score raises
    ValueError, as ``round`` would."""
    s = np.asarray(scores, dtype=float)
    lo, hi = float(s.min()), float(s.max())
    if not hi > lo:
        return np.full(len(s), MAX_EXTENDER_PRIORITY, dtype=np.int64)
    scaled = (s - lo) / (hi - lo) * MAX_EXTENDER_PRIORITY
    if not np.isfinite(scaled).all():
        raise ValueError(f"cannot scale scores {s.tolist()[:8]} to priorities")
    return np.rint(scaled).astype(np.int64)


# ----------------------------------------------------------------------------------- scorers
class NodeScorer(Protocol):
    """Scores candidate nodes for one pod: higher is better (argmax binds)."""

    name: str

    def score(self, nodes: Sequence[NodeState], pod: PodRequest) -> np.ndarray: ...


@dataclass(frozen=True)
class KubeDefaultScorer:
    """The default scheduler's resource scores (GPU-unaware): sum of the enabled plugins."""

    name: str = "default-scheduler"
    plugins: tuple[str, ...] = ("least-allocated", "balanced-allocation")

    def score(self, nodes: Sequence[NodeState], pod: PodRequest) -> np.ndarray:
        check_nodes(nodes, pod)
        fns = {
            "least-allocated": least_allocated_score,
            "balanced-allocation": balanced_allocation_score,
        }
        return np.array([sum(fns[p](n, pod) for p in self.plugins) for n in nodes], dtype=float)

    def score_columns(self, cols: NodeColumns, pod: PodRequest) -> np.ndarray:
        """:meth:`score` of the same nodes, all at once (the per-node code when it must)."""
        plugin = _plugin_scores_of(cols, pod)
        if plugin is None:
            return self.score(cols.states(), pod)
        return sum((plugin[p] for p in self.plugins), np.zeros(len(cols), np.int64)).astype(float)


BUILTIN_SCORERS: dict[str, KubeDefaultScorer] = {
    "default-scheduler": KubeDefaultScorer(),
    "least-allocated": KubeDefaultScorer("least-allocated", ("least-allocated",)),
    "balanced-allocation": KubeDefaultScorer("balanced-allocation", ("balanced-allocation",)),
}
"""Upstream scorers by name (weights 1, as in the default KubeSchedulerConfiguration)."""


class MlpNodeScorer:
    """A shared-weight MLP over node rows (tanh hidden layers; no hidden layer = linear)."""

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]], name: str = "learned"):
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers]
        self.name = name
        if self.layers[0][0].shape[0] != NODE_FEATURE_DIM or self.layers[-1][0].shape[1] != 1:
            raise Permanent(f"scorer: expected input {NODE_FEATURE_DIM} and one output")

    @staticmethod
    def dims(hidden: int) -> list[tuple[int, int]]:
        """Layer shapes for ``hidden`` units (0 = a linear scorer)."""
        sizes = [NODE_FEATURE_DIM, hidden, 1] if hidden else [NODE_FEATURE_DIM, 1]
        return list(itertools.pairwise(sizes))

    @classmethod
    def from_flat(cls, params: np.ndarray, hidden: int, name: str = "learned") -> MlpNodeScorer:
        """Unflatten ``params`` (weights then bias, per layer) as laid out by :meth:`flat`."""
        layers, i = [], 0
        for n_in, n_out in cls.dims(hidden):
            w = params[i : i + n_in * n_out].reshape(n_in, n_out)
            i += n_in * n_out
            layers.append((w, params[i : i + n_out]))
            i += n_out
        if i != len(params):
            raise Permanent(f"scorer: {len(params)} parameters do not fit hidden={hidden}")
        return cls(layers, name)

    def flat(self) -> np.ndarray:
        return np.concatenate([np.concatenate([w.ravel(), b]) for w, b in self.layers])

    def score_features(self, x: np.ndarray) -> np.ndarray:
        h = np.asarray(x, dtype=np.float32)
        for k, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if k < len(self.layers) - 1:
                h = np.tanh(h)
        return h[:, 0]

    def score(self, nodes: Sequence[NodeState], pod: PodRequest) -> np.ndarray:
        return self.score_features(node_features(nodes, pod)).astype(float)

    def save_npz(self, path: str | Path) -> Path:
        arrays = {f"w{k}": w for k, (w, _) in enumerate(self.layers)}
        arrays |= {f"b{k}": b for k, (_, b) in enumerate(self.layers)}
        np.savez(path, node_schema_hash=np.array(NODE_SCHEMA_HASH), **arrays)
        return Path(path)

    @classmethod
    def load_npz(cls, path: str | Path, name: str = "learned") -> MlpNodeScorer:
        with np.load(path) as z:
            _check_hash(str(z["node_schema_hash"]), path)
            n = sum(1 for k in z.files if k.startswith("w"))
            return cls([(z[f"w{k}"], z[f"b{k}"]) for k in range(n)], name)


def _check_hash(found: str, path: str | Path) -> None:
    if found != NODE_SCHEMA_HASH:
        raise Permanent(
            f"{path}: node schema hash {found!r} != {NODE_SCHEMA_HASH!r} ({NODE_SCHEMA_VERSION});"
            " the scorer was trained on other node features"
        )


def onnx_metadata(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Metadata every placement-scorer ONNX carries (checked by :class:`OnnxNodeScorer`)."""
    return {
        "kind": ONNX_KIND,
        "node_schema_version": NODE_SCHEMA_VERSION,
        "node_schema_hash": NODE_SCHEMA_HASH,
        "node_feature_names": json.dumps(NODE_FEATURE_NAMES),
        **(extra or {}),
    }


class OnnxNodeScorer:
    """A learned scorer served by onnxruntime: ``node_features [n, F]`` → ``scores [n]``."""

    def __init__(self, path: str | Path, name: str = "learned") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3  # errors only: library code stays quiet
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get("kind") != ONNX_KIND:
            raise Permanent(f"{path}: kind {self.metadata.get('kind')!r} is not {ONNX_KIND!r}")
        _check_hash(self.metadata.get("node_schema_hash", ""), path)
        self.name = name

    def score_features(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(x, dtype=np.float32)})
        return np.asarray(out).reshape(-1)

    def score(self, nodes: Sequence[NodeState], pod: PodRequest) -> np.ndarray:
        return self.score_features(node_features(nodes, pod)).astype(float)


def load_node_scorer(name_or_path: str | Path) -> NodeScorer:
    """A built-in scorer by name, or a learned one from ``.onnx`` / ``.npz``."""
    key = str(name_or_path)
    if key in BUILTIN_SCORERS:
        return BUILTIN_SCORERS[key]
    if key.endswith(".onnx"):
        return OnnxNodeScorer(key)
    if key.endswith(".npz"):
        return MlpNodeScorer.load_npz(key)
    raise InvalidRequest(f"scorer: {key!r} is not one of {list(BUILTIN_SCORERS)} or .onnx/.npz")


# -------------------------------------------------------------------------------- the twin
def node_states_from_twin(tw: Twin, env: int = 0) -> list[NodeState]:
    """Every node of environment ``env`` as the collector would report it."""
    per_gpu = tw.pods_per_gpu(tw.holding())[env]
    return _twin_nodes(tw, env, per_gpu)


def _twin_nodes(tw: Twin, env: int, per_gpu: np.ndarray) -> list[NodeState]:
    from ecrl.twin.observe import vram_used

    per_node = tw.pods_per_node(per_gpu)
    vram_free = tw.gpu_vram - vram_used(tw, env)
    out = []
    for i, spec in enumerate(tw.cluster.nodes):
        g = np.flatnonzero(tw.gpu_node == i)
        out.append(
            NodeState(
                name=spec.name,
                gpu_count=len(g),
                gpu_slots_total=int(tw.gpu_slots[g].sum()),
                gpu_slots_free=int(tw.gpu_slots[g].sum() - per_gpu[g].sum()),
                gpu_speed=float(tw.gpu_speed[g].mean()) if len(g) else 0.0,
                gpu_util_ratio=float(tw.gpu_util[env, g].mean()) if len(g) else None,
                vram_free_ratio=float(vram_free[g].sum() / tw.gpu_vram[g].sum()) if len(g) else 0.0,
                cpu_allocatable_cores=float(tw.node_cpu[i]),
                cpu_requested_cores=float(per_node[i] * tw.cpu_req[env]),
                memory_allocatable_bytes=float(tw.node_mem[i]),
                memory_requested_bytes=float(per_node[i] * tw.mem_req[env]),
                replicas=int(per_node[i]),
            )
        )
    return out


def twin_placement(scorer: NodeScorer | Sequence[NodeScorer]) -> PlacementScorer:
    """A twin placement hook binding pods by ``scorer`` (a sequence: one scorer per env).

    Like kube-scheduler + the device plugin: the scorer sees only the nodes with a feasible GPU
    (what the filter passes) and the best node's feasible GPU with the most free share of its
    slots gets the pod; infeasible GPUs score −inf, so the twin never binds there. A non-finite
    score ranks its node last. Ties go to the first node of the cluster spec (kube-scheduler
    picks among ties at random; fixed here so that runs replay exactly).
    """
    per_env = scorer if isinstance(scorer, Sequence) else None

    def hook(tw: Twin, rows: np.ndarray, feasible: np.ndarray) -> np.ndarray:
        out = np.full(feasible.shape, -np.inf)
        if not feasible.any():  # a Pending pod retried every step: nothing to score
            return out
        per_gpu_all = tw.pods_per_gpu(tw.holding())
        for k, env in enumerate(int(r) for r in rows):
            cand = np.unique(tw.gpu_node[feasible[k]])
            if len(cand) == 0:
                continue
            nodes = _twin_nodes(tw, env, per_gpu_all[env])
            pod = PodRequest(float(tw.cpu_req[env]), float(tw.mem_req[env]))
            chosen = scorer if per_env is None else per_env[env]
            scores = np.asarray(chosen.score([nodes[i] for i in cand], pod), dtype=float)
            free_share = np.where(feasible[k], 1.0 - per_gpu_all[env] / tw.gpu_slots, -np.inf)
            for i, node_score in zip(cand, scores, strict=True):
                g = np.flatnonzero(tw.gpu_node == i)
                best_gpu = g[np.argmax(free_share[g])]
                out[k, best_gpu] = node_score if math.isfinite(node_score) else -1e300
        return out

    return hook
