"""The transport-free core of the policy server: validate, decide, score, describe.

kserve's ``DataPlane`` split: plain data in, plain data out, :class:`InvalidRequest` for
anything a caller got wrong (the gRPC shell maps it to INVALID_ARGUMENT in one place). Every
request reads the model snapshot once (:mod:`.model_store`), so a reload in the middle of a
request changes nothing for it. Every fallback is explicit, counted and reported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import fields

import numpy as np

from ecrl.actions import HEADS, NVEC, OFFSETS
from ecrl.errors import InvalidRequest
from ecrl.placement import (
    NODE_SCHEMA_VERSION,
    KubeDefaultScorer,
    NodeColumns,
    NodeScorer,
    NodeState,
    PodRequest,
    check_nodes,
    extender_priorities,
    node_features_columns,
)
from ecrl.policy_model import MASK_DIM, MASK_INPUT, STATE_INPUT, PolicyModel
from ecrl.policy_model import OUTPUTS as POLICY_OUTPUTS
from ecrl.schema import FEATURE_NAMES, SCHEMA_HASH, SCHEMA_VERSION, STATE_BOUND, STATE_DIM

from .heuristic import heuristic_action
from .metrics import ServerMetrics
from .model_store import ModelStore
from .results import Decision, Fallback, NodeScores, PolicyInfo, StateInput

log = logging.getLogger("ecrl.policy_server")

HEURISTIC_VERSION = "heuristic"
KUBE_DEFAULT_VERSION = "kube-default"
MAX_NODES = 5000
"""kube-scheduler's documented scale limit (5,000 nodes per cluster): more is not a request."""
MAX_CORES = 1e6
MAX_BYTES = 2.0**60
"""Bounds far beyond any node (a million cores, an exbibyte) that keep the arithmetic finite."""
HEURISTIC_DECISION_S = 0.0001
"""The heuristic's cost is a few dictionary reads: 0.1 ms is a generous upper bound."""
_DEFAULT_SCORER = KubeDefaultScorer()


def _scores(
    names: tuple[str, ...], scores: np.ndarray, version: str, fallback: Fallback
) -> NodeScores:
    return NodeScores(
        names,
        tuple(float(s) for s in scores),
        tuple(extender_priorities(scores)),
        version,
        fallback,
    )


_OFFSETS = np.asarray(OFFSETS, dtype=np.intp)
_OUTPUTS = list(POLICY_OUTPUTS)


def validate_state(state: StateInput) -> np.ndarray:
    """The values as float32 ``[STATE_DIM]``, or InvalidRequest naming the field."""
    if state.schema_hash != SCHEMA_HASH:
        raise InvalidRequest(
            f"state.schema_hash: expected {SCHEMA_HASH} ({SCHEMA_VERSION}), got "
            f"{state.schema_hash[:64]!r}; encode the state with the matching ecrl.schema"
        )
    if state.schema_version and state.schema_version != SCHEMA_VERSION:
        raise InvalidRequest(
            f"state.schema_version: expected {SCHEMA_VERSION!r}, got {state.schema_version[:64]!r}"
        )
    if len(state.values) != STATE_DIM:
        raise InvalidRequest(
            f"state.values: length {len(state.values)}, expected {STATE_DIM} ({SCHEMA_VERSION})"
        )
    x = np.fromiter(state.values, dtype=np.float32, count=STATE_DIM)
    within = np.abs(x) <= STATE_BOUND  # False for NaN, ±inf and huge values
    if not within.all():
        bad = np.flatnonzero(~within)
        i = int(bad[0])
        raise InvalidRequest(
            f"state.values[{i}] ({FEATURE_NAMES[i]}): {float(x[i])!r} is not finite or outside "
            f"±{STATE_BOUND:g} ({bad.size} such values); a missing input is 0 with its *_missing "
            "flag set (ecrl.schema.encode)"
        )
    return x


def validate_mask(mask: Sequence[bool]) -> np.ndarray:
    """The mask as bool ``[MASK_DIM]`` (empty = all allowed); every head needs a step."""
    if len(mask) == 0:
        return np.ones(MASK_DIM, dtype=bool)
    if len(mask) != MASK_DIM:
        sizes = "+".join(str(n) for n in NVEC)
        raise InvalidRequest(
            f"action_mask: length {len(mask)}, expected {MASK_DIM} ({sizes}, the heads "
            f"{[h.name for h in HEADS]}) or 0 for all allowed"
        )
    m = np.fromiter(mask, dtype=bool, count=MASK_DIM)
    some_step = np.logical_or.reduceat(m, _OFFSETS)  # per head: any step allowed
    if not some_step.all():
        h = int(np.flatnonzero(~some_step)[0])
        head, offset, width = HEADS[h], OFFSETS[h], NVEC[h]
        raise InvalidRequest(
            f"action_mask: head {head.name!r} (entries {offset}..{offset + width - 1}) "
            "allows no step; the envelope always allows at least the no-op"
        )
    return m


def _check_bounded(where: str, name: str, value: float, upper: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= upper):
        raise InvalidRequest(f"{where}.{name}: must be in [0, {upper:g}], got {value!r}")


_UPPER = {
    "gpu_speed": 1e3,
    "gpu_util_ratio": 1e3,
    "vram_free_ratio": 1e3,
    "cpu_allocatable_cores": MAX_CORES,
    "cpu_requested_cores": MAX_CORES,
    "memory_allocatable_bytes": MAX_BYTES,
    "memory_requested_bytes": MAX_BYTES,
}
"""Upper bounds of the float fields (ratios may exceed 1 only through measurement noise)."""


def validate_nodes(node_schema_version: str, nodes: Sequence[NodeState], pod: PodRequest) -> None:
    """Refuse node lists no cluster produces (InvalidRequest names the node and field)."""
    if node_schema_version != NODE_SCHEMA_VERSION:
        raise InvalidRequest(
            f"node_schema_version: expected {NODE_SCHEMA_VERSION!r}, "
            f"got {node_schema_version[:64]!r}"
        )
    if len(nodes) > MAX_NODES:
        raise InvalidRequest(f"nodes: {len(nodes)} candidates, at most {MAX_NODES}")
    _check_bounded("pod", "cpu_cores", pod.cpu_cores, MAX_CORES)
    _check_bounded("pod", "memory_bytes", pod.memory_bytes, MAX_BYTES)
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if not node.name:
            raise InvalidRequest(f"nodes[{i}].name: must not be empty")
        if node.name in seen:
            raise InvalidRequest(f"nodes[{i}].name: {node.name[:64]!r} appears twice")
        seen.add(node.name)
        where = f"nodes[{node.name[:64]}]"
        if node.gpu_count < 0:
            raise InvalidRequest(f"{where}.gpu_count: must be >= 0, got {node.gpu_count}")
        for f in fields(NodeState):
            value = getattr(node, f.name)
            if f.name in _UPPER and value is not None:
                _check_bounded(where, f.name, value, _UPPER[f.name])
    check_nodes(nodes, pod)  # the library's own rules (positive allocatable, counts >= 0)


def columns_valid(node_schema_version: str, cols: NodeColumns, pod: PodRequest) -> bool:
    """The rules :func:`validate_nodes` adds to ``check_nodes``, as vector tests. False does
    not mean invalid, only "let :func:`validate_nodes` decide" (it raises naming the first bad
    node and field). ``check_nodes``'s own rules are tested once, by the columnar scorers
    (``node_features_columns``, ``KubeDefaultScorer.score_columns``), which hand what fails
    them to the per-node code, where ``check_nodes`` raises the same message."""
    return request_valid(node_schema_version, cols.names, pod) and bool(rows_valid(cols).all())


def request_valid(node_schema_version: str, names: Sequence[str], pod: PodRequest) -> bool:
    """:func:`columns_valid`'s rules on the request as a whole (schema, size, pod, names)."""
    if node_schema_version != NODE_SCHEMA_VERSION or len(names) > MAX_NODES:
        return False
    if not (0 <= pod.cpu_cores <= MAX_CORES and 0 <= pod.memory_bytes <= MAX_BYTES):
        return False
    return all(names) and len(set(names)) == len(names)


def rows_valid(cols: NodeColumns) -> np.ndarray:
    """:func:`columns_valid`'s rules node by node: True where a row passes them all."""
    ok = cols.gpu_count >= 0
    for name, upper in _UPPER.items():
        values = getattr(cols, name)
        row_ok = np.isfinite(values) & (values >= 0) & (values <= upper)
        if name == "gpu_util_ratio":
            row_ok |= ~cols.gpu_util_present
        ok &= row_ok
    return ok


def learned_column_scores(
    model: NodeScorer, cols: NodeColumns, pod: PodRequest
) -> np.ndarray | None:
    """A learned scorer's raw scores of valid columns (``columns_valid`` passed), or None when
    the columns need the per-node code (``node_features_columns`` declines them).

    ScoreNodes' own arithmetic, shared with the extender's in-process mirror of this scorer
    (services.scheduler_extender.mirror): both sides answer alike because they run this.
    """
    x = node_features_columns(cols, pod)
    return None if x is None else learned_feature_scores(model, x)


def learned_feature_scores(model: NodeScorer, x: np.ndarray) -> np.ndarray:
    """The scorer's raw scores of a feature matrix; ValueError for a wrong shape or a
    non-finite score (whatever the model raises passes through)."""
    scores = np.asarray(model.score_features(x), dtype=float)  # type: ignore[attr-defined]
    if scores.shape != (len(x),) or not np.isfinite(scores).all():
        raise ValueError(f"scores {scores.tolist()[:8]} of shape {scores.shape}")
    return scores


def _run_policy(
    model: PolicyModel, x: np.ndarray, m: np.ndarray
) -> tuple[list[tuple[int, ...]], list[float]]:
    """Greedy actions and values of validated states and masks (``[N, ·]``, one graph run).

    A :class:`PolicyModel`'s session is run directly: :func:`validate_state` and
    :func:`validate_mask` already enforce everything ``PolicyModel.decide_raw`` re-checks
    (shapes, finite values — here within ``STATE_BOUND`` —, a step allowed per head), and
    checking twice was a third of the server's own time per call. Any other model object
    (a test double) goes through its ``decide_raw``.
    """
    if isinstance(model, PolicyModel):
        action, _logits, value = model.session.run(_OUTPUTS, {STATE_INPUT: x, MASK_INPUT: m})
    else:
        raw = model.decide_raw(x, m)
        action, value = np.asarray(raw.action), np.asarray(raw.value)
    actions = [tuple(row) for row in np.asarray(action).reshape(len(x), -1).tolist()]
    return actions, np.asarray(value, dtype=float).reshape(-1).tolist()


def _rows(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays as the rows of one ``[N, ·]`` array (a lone request: a view, no copy)."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


class PolicyCore:
    """Decide, score and describe over a :class:`ModelStore` (no gRPC here)."""

    def __init__(self, store: ModelStore, metrics: ServerMetrics, deadline_margin_s: float):
        self.store = store
        self.metrics = metrics
        self.deadline_margin_s = deadline_margin_s

    # ----------------------------------------------------------------------- deadlines
    def expected_decide_s(self) -> float:
        """Time a Decide needs in the server: the model's measured call time plus margin."""
        snap = self.store.policy.current
        cost = snap.decision_s if snap.model is not None else HEURISTIC_DECISION_S
        return cost + self.deadline_margin_s

    def expected_score_s(self) -> float:
        """Time a ScoreNodes needs for a typical node list."""
        snap = self.store.scorer.current
        return (snap.decision_s if snap.model is not None else 0.0) + self.deadline_margin_s

    # ------------------------------------------------------------------------- decide
    @staticmethod
    def validate(state: StateInput, mask: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        """One request's state and mask as arrays, or InvalidRequest naming the field."""
        return validate_state(state), validate_mask(mask)

    def decide_valid(self, requests: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Decision]:
        """The learned policy's greedy actions for validated (state, mask) pairs, in one run
        of the policy graph, or the HPA heuristic's when no policy is loaded.

        The graph is row-independent (an MLP per state), so a batch gives each request the
        answer it would get alone. If the run fails, every request is answered by the
        heuristic; an answer outside its own mask falls back for that request only.
        """
        snap = self.store.policy.current  # one read: a reload cannot change it under us
        if snap.model is None:
            return [self._heuristic(x, m, snap.fallback) for x, m in requests]
        try:
            actions, values = _run_policy(
                snap.model,
                _rows([x for x, _ in requests]),
                _rows([m for _, m in requests]),
            )
        except InvalidRequest:
            raise
        except Exception as exc:  # a broken graph must not fail the caller: heuristic answers
            log.error(
                "policy failed on a request; heuristic answered",
                extra={"version": snap.version, "err": str(exc), "batch": len(requests)},
            )
            return [self._heuristic(x, m, Fallback.MODEL_ERROR) for x, m in requests]
        return [
            self._checked(snap.version, action, value, x, m)
            for action, value, (x, m) in zip(actions, values, requests, strict=True)
        ]

    def _checked(
        self, version: str, action: tuple[int, ...], value: float, x: np.ndarray, m: np.ndarray
    ) -> Decision:
        allowed = len(action) == len(NVEC) and all(
            0 <= a < n and m[o + a] for a, n, o in zip(action, NVEC, OFFSETS, strict=True)
        )
        if allowed and math.isfinite(value):
            return Decision(action, value, version, Fallback.NONE)
        log.error(
            "policy failed on a request; heuristic answered",
            extra={"version": version, "err": f"action {action} outside the mask or value {value}"},
        )
        return self._heuristic(x, m, Fallback.MODEL_ERROR)

    def _heuristic(self, x: np.ndarray, m: np.ndarray, reason: Fallback) -> Decision:
        self.metrics.fallback_decisions.labels("Decide", reason.value).inc()
        return Decision(heuristic_action(x, m), 0.0, HEURISTIC_VERSION, reason)

    # -------------------------------------------------------------------------- score
    def score_nodes(
        self, node_schema_version: str, nodes: Sequence[NodeState], pod: PodRequest
    ) -> NodeScores:
        """Learned node scores scaled to 0–10, or the default scheduler's when no scorer."""
        validate_nodes(node_schema_version, nodes, pod)
        snap = self.store.scorer.current
        names = tuple(n.name for n in nodes)
        if snap.model is not None:
            try:
                scores = np.asarray(snap.model.score(nodes, pod), dtype=float)
                if scores.shape != (len(nodes),) or not np.isfinite(scores).all():
                    raise ValueError(f"scores {scores.tolist()[:8]} of shape {scores.shape}")
                return _scores(names, scores, snap.version, Fallback.NONE)
            except InvalidRequest:
                raise
            except Exception as exc:
                log.error("scorer failed; kube-default answered", extra={"err": str(exc)})
                return self._default_scores(names, nodes, pod, Fallback.MODEL_ERROR)
        return self._default_scores(names, nodes, pod, snap.fallback)

    def score_columns(
        self, node_schema_version: str, cols: NodeColumns, pod: PodRequest
    ) -> NodeScores:
        """:meth:`score_nodes` on columns: the same answer, without a NodeState per node.

        Anything the vector checks do not pass, and any scorer that does not take features
        (a test double), goes through :meth:`score_nodes` itself.
        """
        snap = self.store.scorer.current
        model = snap.model
        if not columns_valid(node_schema_version, cols, pod) or (
            model is not None and not hasattr(model, "score_features")
        ):
            return self.score_nodes(node_schema_version, cols.states(), pod)
        if model is None:
            default = _DEFAULT_SCORER.score_columns(cols, pod)  # raises before it is counted
            self.metrics.fallback_decisions.labels("ScoreNodes", snap.fallback.value).inc()
            return _scores(cols.names, default, KUBE_DEFAULT_VERSION, snap.fallback)
        try:
            scores = learned_column_scores(model, cols, pod)
        except Exception as exc:
            log.error("scorer failed; kube-default answered", extra={"err": str(exc)})
            return self._default_scores(cols.names, cols.states(), pod, Fallback.MODEL_ERROR)
        if scores is None:
            return self.score_nodes(node_schema_version, cols.states(), pod)
        return _scores(cols.names, scores, snap.version, Fallback.NONE)

    def _default_scores(
        self,
        names: tuple[str, ...],
        nodes: Sequence[NodeState],
        pod: PodRequest,
        reason: Fallback,
    ) -> NodeScores:
        self.metrics.fallback_decisions.labels("ScoreNodes", reason.value).inc()
        return _scores(names, _DEFAULT_SCORER.score(nodes, pod), KUBE_DEFAULT_VERSION, reason)

    # ----------------------------------------------------------------------- describe
    def info(self) -> PolicyInfo:
        """Versions, paths, fallback state and the action space."""
        policy, scorer = self.store.policy.current, self.store.scorer.current
        detail = policy.detail
        if scorer.detail and self.store.scorer.path is not None:  # configured but unhealthy
            detail = f"{detail}; scorer: {scorer.detail}" if detail else f"scorer: {scorer.detail}"
        return PolicyInfo(
            schema_version=SCHEMA_VERSION,
            schema_hash=SCHEMA_HASH,
            policy_version=policy.version,
            policy_path=policy.path,
            fallback=policy.fallback,
            fallback_detail=detail,
            node_schema_version=NODE_SCHEMA_VERSION,
            scorer_version=scorer.version or KUBE_DEFAULT_VERSION,
            heads=tuple(h.name for h in HEADS),
            head_sizes=tuple(NVEC),
        )
