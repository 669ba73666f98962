"""The kube-scheduler extender wire format, parsed into typed objects with clear reasons.

Types and JSON keys follow ``k8s.io/kube-scheduler/extender/v1`` (types.go): the keys are the
Go field names (``Pod``, ``Nodes``, ``NodeNames``; ``FailedNodes``,
``FailedAndUnresolvableNodes``, ``Error``; ``Host``, ``Score``; ``PodName``, ``PodNamespace``,
``PodUID``, ``Node``). Every parse error is an :class:`~ecrl.errors.InvalidRequest` whose
message names the offending field, so the HTTP layer answers 400 with it.

The same :func:`parse_pod` reads the v1.Pod the scheduler sends and the pods the cache lists
from the apiserver, so both agree on what a pod requests.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from json.encoder import encode_basestring_ascii

from ecrl.errors import InvalidRequest

GPU_RESOURCE = "nvidia.com/gpu"
"""The NVIDIA device plugin's extended resource (time-sliced replicas count as slots)."""
MAX_QUANTITY = 1e18
"""Larger requests come from no real pod (the apiserver caps Quantity at 2^63-1 milli-units)."""
MAX_NODE_NAMES = 5000
"""Kubernetes' documented scalability limit is 5000 nodes per cluster."""
APP_LABELS = ("app.kubernetes.io/name", "app")
"""Labels that say which application a pod belongs to (replicas are counted per app)."""

# resource.Quantity grammar (k8s.io/apimachinery/pkg/api/resource/quantity.go):
# <signedNumber><suffix>, suffix = binarySI | decimalSI | e/E exponent.
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]{1,3})?$"
)
_SUFFIX = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


# --------------------------------------------------------------------------------- requests
@dataclass(frozen=True, slots=True)
class Pod:
    """What the extender needs of a v1.Pod: identity, placement and summed requests."""

    namespace: str
    name: str
    uid: str
    node_name: str
    """``spec.nodeName`` ('' while Pending)."""
    phase: str
    gpu_slots: int
    """Requested ``nvidia.com/gpu`` (time-sliced slots); 0 = not a GPU pod."""
    cpu_cores: float
    memory_bytes: float
    app: tuple[str, str] | None
    """(label key, value) naming the pod's application, from :data:`APP_LABELS`."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def terminal(self) -> bool:
        """Succeeded/Failed pods hold no resources (kube-scheduler skips them too)."""
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    """``ExtenderArgs``: the pod and its candidate nodes (by name)."""

    pod: Pod
    node_names: tuple[str, ...]
    nodes_given: dict | None = None
    """The ``Nodes`` NodeList when the scheduler is not nodeCacheCapable (echoed back filtered)."""


@dataclass(frozen=True, slots=True)
class FilterResult:
    """``ExtenderFilterResult``: the nodes that passed and why the others did not."""

    node_names: tuple[str, ...]
    failed: Mapping[str, str] = field(default_factory=dict)
    unresolvable: Mapping[str, str] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True, slots=True)
class HostPriority:
    """``HostPriority``: one node's score, 0 to MaxExtenderPriority (10)."""

    host: str
    score: int


@dataclass(frozen=True, slots=True)
class BindingArgs:
    """``ExtenderBindingArgs``: bind pod ``namespace/name`` (uid) to ``node``."""

    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str


# ------------------------------------------------------------------------------- parsing
def load_json(body: bytes) -> object:
    """Decode a request body; NaN/Infinity literals, bad UTF-8 and deep nesting are refused."""

    def reject(token: str) -> object:
        raise ValueError(f"{token} is not JSON")

    try:
        return json.loads(body, parse_constant=reject)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are both
        raise InvalidRequest(f"body: not valid JSON ({str(exc)[:120]})") from None


def _obj(value: object, where: str, required: bool = False) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        what = "missing" if value is None else f"must be an object, got {_kind(value)}"
        raise InvalidRequest(f"{where}: {what}")
    return value


def _list(value: object, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"{where}: must be a list or null, got {_kind(value)}")
    return value


def _str(value: object, where: str, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidRequest(f"{where}: must be a non-empty string, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def parse_quantity(value: object, where: str) -> float:
    """A resource.Quantity (string or JSON number) as a float ≥ 0, e.g. '500m' → 0.5."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest(f"{where}: must be a quantity string, got {_kind(value)}")
    if isinstance(value, str):
        parsed = _quantity_memo(value) if len(value) <= 64 else _quantity_text(value)
        if isinstance(parsed, str):  # why it is refused
            raise InvalidRequest(f"{where}: {value[:40]!r} {parsed}")
        result = parsed
    else:
        result = float(value)
    if not (math.isfinite(result) and 0 <= result <= MAX_QUANTITY):
        raise InvalidRequest(f"{where}: must be between 0 and {MAX_QUANTITY:g}, got {value!r}")
    return result


def _quantity_text(value: str) -> float | str:
    """The number a quantity string denotes, or why it is refused (a str)."""
    m = _QUANTITY.match(value)
    if m is None:
        return "is not a Kubernetes quantity"
    number, suffix = m.group(1), m.group(2) or ""
    try:
        scale = Decimal(f"1{suffix}") if suffix[:1] in ("e", "E") else Decimal(_SUFFIX[suffix])
        return float(Decimal(number) * scale)
    except (InvalidOperation, OverflowError):
        return "is out of range"


_quantity_memo = lru_cache(maxsize=4096)(_quantity_text)
"""Pods and nodes repeat the same few short strings, and Decimal parsing is slow."""


def _container_requests(c: object, where: str) -> dict[str, float]:
    """A container's requests; a resource with only a limit requests its limit (API defaulting)."""
    resources = _obj(_obj(c, where, required=True).get("resources"), f"{where}.resources")
    requests = _obj(resources.get("requests"), f"{where}.resources.requests")
    limits = _obj(resources.get("limits"), f"{where}.resources.limits")
    out = {}
    for name in ("cpu", "memory", GPU_RESOURCE):
        if name in requests:
            out[name] = parse_quantity(requests[name], f"{where}.resources.requests.{name}")
        elif name in limits:
            out[name] = parse_quantity(limits[name], f"{where}.resources.limits.{name}")
    return out


def pod_requests(spec: dict, where: str) -> dict[str, float]:
    """Effective requests of a pod spec (``k8s.io/component-helpers/resource.PodRequests``).

    Sum over containers plus restartable (sidecar) init containers; at least the largest
    regular init container; plus ``spec.overhead``.
    """
    total = {"cpu": 0.0, "memory": 0.0, GPU_RESOURCE: 0.0}
    for i, c in enumerate(_list(spec.get("containers"), f"{where}.containers")):
        for name, v in _container_requests(c, f"{where}.containers[{i}]").items():
            total[name] += v
    init_max = dict.fromkeys(total, 0.0)
    for i, c in enumerate(_list(spec.get("initContainers"), f"{where}.initContainers")):
        req = _container_requests(c, f"{where}.initContainers[{i}]")
        sidecar = c.get("restartPolicy") == "Always"
        for name, v in req.items():
            if sidecar:
                total[name] += v
            else:
                init_max[name] = max(init_max[name], v)
    overhead = _obj(spec.get("overhead"), f"{where}.overhead")
    for name, summed in total.items():
        total[name] = max(summed, init_max[name])
        if name in overhead:
            total[name] += parse_quantity(overhead[name], f"{where}.overhead.{name}")
    return total


def parse_pod(value: object, where: str = "Pod") -> Pod:
    """A v1.Pod (JSON object) → :class:`Pod`; raises InvalidRequest naming the bad field."""
    pod = _obj(value, where, required=True)
    meta = _obj(pod.get("metadata"), f"{where}.metadata")
    spec = _obj(pod.get("spec"), f"{where}.spec")
    status = _obj(pod.get("status"), f"{where}.status")
    labels = _obj(meta.get("labels"), f"{where}.metadata.labels")
    requests = pod_requests(spec, f"{where}.spec")
    gpu = requests[GPU_RESOURCE]
    if gpu != int(gpu):
        raise InvalidRequest(f"{where}: {GPU_RESOURCE} must be a whole number, got {gpu:g}")
    app = next(
        ((k, labels[k]) for k in APP_LABELS if isinstance(labels.get(k), str) and labels[k]),
        None,
    )
    return Pod(
        namespace=_str(meta.get("namespace"), f"{where}.metadata.namespace") or "default",
        name=_str(meta.get("name"), f"{where}.metadata.name", required=True),
        uid=_str(meta.get("uid"), f"{where}.metadata.uid"),
        node_name=_str(spec.get("nodeName"), f"{where}.spec.nodeName"),
        phase=_str(status.get("phase"), f"{where}.status.phase"),
        gpu_slots=int(gpu),
        cpu_cores=requests["cpu"],
        memory_bytes=requests["memory"],
        app=app,
    )


def _names(value: object, where: str) -> tuple[str, ...]:
    names = _list(value, where)
    if len(names) > MAX_NODE_NAMES:
        raise InvalidRequest(f"{where}: {len(names)} nodes, at most {MAX_NODE_NAMES}")
    if not all(type(n) is str and n for n in names):  # the common case in one pass
        for i, n in enumerate(names):
            _str(n, f"{where}[{i}]", required=True)
    return tuple(names)


def parse_extender_args(body: object) -> ExtenderArgs:
    """``ExtenderArgs`` JSON → :class:`ExtenderArgs` (``NodeNames``, else ``Nodes.items``)."""
    args = _obj(body, "body", required=True)
    if args.get("Pod") is None:
        raise InvalidRequest("Pod: missing")
    pod = parse_pod(args["Pod"], "Pod")
    if args.get("NodeNames") is not None or args.get("Nodes") is None:
        return ExtenderArgs(pod, _names(args.get("NodeNames"), "NodeNames"))
    nodes = _obj(args["Nodes"], "Nodes")
    items = _list(nodes.get("items"), "Nodes.items")
    names = _names(
        [
            _obj(_obj(n, f"Nodes.items[{i}]", required=True).get("metadata"), "metadata").get(
                "name"
            )
            for i, n in enumerate(items)
        ],
        "Nodes.items[].metadata.name",
    )
    return ExtenderArgs(pod, names, nodes_given=nodes)


def parse_binding_args(body: object) -> BindingArgs:
    """``ExtenderBindingArgs`` JSON → :class:`BindingArgs`."""
    args = _obj(body, "body", required=True)
    return BindingArgs(
        pod_name=_str(args.get("PodName"), "PodName", required=True),
        pod_namespace=_str(args.get("PodNamespace"), "PodNamespace", required=True),
        pod_uid=_str(args.get("PodUID"), "PodUID"),
        node=_str(args.get("Node"), "Node", required=True),
    )


# ---------------------------------------------------------------------------- responses
def filter_result_json(result: FilterResult, args: ExtenderArgs | None = None) -> dict:
    """``ExtenderFilterResult`` JSON; answers in ``Nodes`` when the request came with ``Nodes``."""
    out: dict = {
        "Nodes": None,
        "NodeNames": list(result.node_names),
        "FailedNodes": dict(result.failed),
        "FailedAndUnresolvableNodes": dict(result.unresolvable),
        "Error": result.error,
    }
    if args is not None and args.nodes_given is not None:
        keep = set(result.node_names)
        items = [n for n in args.nodes_given.get("items", []) if n["metadata"]["name"] in keep]
        out["Nodes"] = {**args.nodes_given, "items": items}
        out["NodeNames"] = None
    return out


def priorities_json(priorities: Sequence[HostPriority]) -> list[dict]:
    """``HostPriorityList`` JSON."""
    return [{"Host": p.host, "Score": p.score} for p in priorities]


def scores_json_text(node_names: Sequence[str], scores: Sequence[int]) -> str:
    """``HostPriorityList`` JSON text from candidate names and their scores, in order.

    What ``json.dumps(priorities_json(...))`` gives (compact), written directly: a third of
    the time for 100 nodes, as ``/prioritize`` answers every scheduling cycle.
    """
    items = [
        f'{{"Host":{encode_basestring_ascii(n)},"Score":{int(s)}}}'
        for n, s in zip(node_names, scores, strict=True)
    ]
    return f"[{','.join(items)}]"


def binding_result_json(error: str = "") -> dict:
    """``ExtenderBindingResult`` JSON (an empty Error means bound)."""
    return {"Error": error}
