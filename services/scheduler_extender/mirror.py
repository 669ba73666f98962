"""The policy server's node scorer, mirrored in the extender: ScoreNodes' answer without the hop.

Why: ``/prioritize`` sits in kube-scheduler's path (5 s ``httpTimeout``, no retries, every
pod), and a gRPC hop per pod costs ~1.7 ms p50 on the testbed machine for 100 nodes — more
than the rest of the request (BENCHMARKS.md, "Services"). The scorer is a tiny ONNX graph the
extender can run itself. So, with ``--policy-server``, the extender also loads a scorer file
(``--mirror``: by default the packaged one, which is also the policy server's default) and
follows it on disk like the policy server does (:class:`~services.policy_server.model_store.
WatchedModel`). Every ``--mirror-sync`` seconds it asks the policy server which scorer it
serves (``GetPolicyInfo.scorer_version``, the file's SHA-256 prefix):

- the same version as the local file → score in-process, learned;
- ``kube-default`` (the server has no valid scorer) → score in-process, default scheduler;
- anything else, or never confirmed → ask ``ScoreNodes`` for every request, as before.

In-process scoring runs ScoreNodes' own code on the same columns (``columns_valid``, then
:func:`~services.policy_server.decisions.learned_column_scores` or the default scorer's
columns, then ``extender_priorities``), so the answer is the policy server's, node for node;
tests compare them. Anything that code would hand to its per-node path (a refusal, a value
outside the exact range) or any model error goes to the policy server instead, so a request
gets exactly the answer — or the refusal, then fail-open — that ScoreNodes gives.

What changes: a model swap on the policy server reaches the extender within one sync interval
(it keeps scoring with the previous version until the sync sees the new one), and while the
policy server is unreachable the extender keeps the last version it confirmed (logged and
counted) instead of failing open.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from ecrl.placement import (
    NODE_SCHEMA_HASH,
    NODE_SCHEMA_VERSION,
    KubeDefaultScorer,
    NodeColumns,
    NodeScorer,
    NodeState,
    PodRequest,
    extender_priorities,
    node_local_features_columns,
    with_context,
)
from services.policy_server.decisions import (
    KUBE_DEFAULT_VERSION,
    columns_valid,
    learned_column_scores,
    learned_feature_scores,
    request_valid,
    rows_valid,
)
from services.policy_server.model_store import WatchedModel, load_scorer
from services.scheduler_extender.gpu import ClusterSnapshot, pod_request
from services.scheduler_extender.scoring import NEUTRAL_PRIORITY, PolicyServerScorer
from services.scheduler_extender.wire import Pod

log = logging.getLogger("ecrl.extender.mirror")

_DEFAULT_SCORER = KubeDefaultScorer()


class Where(StrEnum):
    """Who answers ``/prioritize`` now."""

    LEARNED = "in-process-learned"
    """The local copy of the learned scorer (the policy server serves the same version)."""
    KUBE_DEFAULT = "in-process-kube-default"
    """The default scheduler's scores (the policy server has no valid scorer either)."""
    POLICY_SERVER = "policy-server"
    """``ScoreNodes`` over gRPC (versions differ, or not confirmed yet)."""


class MirrorMetrics:
    """The mirror's metrics, in the extender's registry; also what WatchedModel reports to
    (``reloads``, :meth:`set_state`), under the extender's metric names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter(
            "ecrl_extender_scorer_reloads_total",
            "Loads of the mirrored node scorer file, by outcome.",
            ["component", "outcome"],
            registry=registry,
        )
        self.local_info = Gauge(
            "ecrl_extender_scorer_local_info",
            "1 for the version of the mirrored scorer file loaded here (empty: none loaded).",
            ["version"],
            registry=registry,
        )
        self.where = Gauge(
            "ecrl_extender_scoring",
            "1 for who answers /prioritize now: in-process (the policy server serves the same "
            "scorer version) or the policy server's ScoreNodes.",
            ["where"],
            registry=registry,
        )
        self.syncs = Counter(
            "ecrl_extender_scorer_syncs_total",
            "Checks of the policy server's scorer version (GetPolicyInfo), by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.routed = Counter(
            "ecrl_extender_scoring_routed_total",
            "/prioritize requests by who was asked to score them.",
            ["where"],
            registry=registry,
        )
        self._routed = {w: self.routed.labels(w.value) for w in Where}
        self.set_where(Where.POLICY_SERVER)

    def set_state(self, component: str, version: str, schema_hash: str, reason: str) -> None:
        """WatchedModel's report of what the local file gives now."""
        self.local_info.clear()
        self.local_info.labels(version).set(1)

    def set_where(self, where: Where) -> None:
        for w in Where:
            self.where.labels(w.value).set(1 if w is where else 0)

    def count(self, where: Where) -> None:
        self._routed[where].inc()


@dataclass(frozen=True)
class Sync:
    """One check of the policy server's scorer against the local file."""

    where: Where
    local_version: str
    server_version: str
    """'' when the policy server could not be asked."""
    error: str = ""


class MirroredScorer:
    """A :class:`~services.scheduler_extender.scoring.Scorer`: in-process while the policy
    server confirms it serves the same scorer, ``ScoreNodes`` otherwise.

    ``model_path`` None: never in-process for the learned scorer (only when the server itself
    answers with the default scheduler's scores). :meth:`sync` is called by the background
    thread :meth:`start` runs, and once by the caller before serving.
    """

    def __init__(
        self,
        remote: PolicyServerScorer,
        model_path: str | None,
        sync_interval_s: float,
        registry: CollectorRegistry,
    ) -> None:
        self.remote = remote
        self.name = f"mirror:{remote.name}"
        self.sync_interval_s = sync_interval_s
        self.metrics = MirrorMetrics(registry)
        self.local: WatchedModel[NodeScorer] = WatchedModel(
            "scorer", model_path, load_scorer, self.metrics, NODE_SCHEMA_HASH
        )
        self._route: tuple[Where, NodeScorer | None] = (Where.POLICY_SERVER, None)
        """Who answers, and the model when it is the local learned one: one reference, so
        a request reads a pair that belongs together."""
        self._last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scorer-mirror", daemon=True)

    # ---------------------------------------------------------------------------- sync
    def sync(self) -> Sync:
        """Follow the local file, ask the server's scorer version, choose who answers."""
        self.local.poll()
        loaded = self.local.current
        try:
            info = self.remote.client().info()  # type: ignore[attr-defined]
        except Exception as exc:  # unreachable, deadline: keep what was confirmed last
            error = f"{type(exc).__name__}: {exc}"
            self.metrics.syncs.labels("unreachable").inc()
            if error != self._last_error:
                log.warning(
                    "policy server's scorer version unknown; keeping the last confirmed",
                    extra={"error": error[:300], "where": self.where.value},
                )
            self._last_error = error
            return Sync(self.where, loaded.version, "", error)
        self._last_error = ""
        server = info.scorer_version
        if info.node_schema_version != NODE_SCHEMA_VERSION:
            where, model = Where.POLICY_SERVER, None
        elif server == KUBE_DEFAULT_VERSION:
            where, model = Where.KUBE_DEFAULT, None
        elif loaded.model is not None and server == loaded.version:
            where, model = Where.LEARNED, loaded.model
        else:
            where, model = Where.POLICY_SERVER, None
        outcome = "differs" if where is Where.POLICY_SERVER else "in_sync"
        self.metrics.syncs.labels(outcome).inc()
        if where is not self.where:
            log.info(
                "node scoring moves",
                extra={
                    "from": self.where.value,
                    "to": where.value,
                    "server_version": server,
                    "local_version": loaded.version,
                },
            )
        self._route = (where, model)
        self.metrics.set_where(where)
        return Sync(where, loaded.version, server)

    @property
    def where(self) -> Where:
        return self._route[0]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.sync_interval_s + self.remote.timeout_s + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.sync_interval_s):
            try:
                self.sync()
            except Exception:  # the thread must outlive any surprise; logged with traceback
                log.exception("scorer mirror sync failed")

    # -------------------------------------------------------------------------- score
    def score(self, nodes: list[NodeState], pod: PodRequest) -> list[int]:
        route = self._route
        local = _local_of(route, NodeColumns.of(nodes), pod)[1] if nodes else None
        if local is None:
            self.metrics.count(Where.POLICY_SERVER)
            return self.remote.score(nodes, pod)
        self.metrics.count(route[0])
        return local

    def score_table(
        self, snapshot: ClusterSnapshot, node_names: Sequence[str], rows: list[int], pod: Pod
    ) -> list[int] | None:
        """Candidates' priorities from the snapshot's memoized columns (the remote's fast path
        when the policy server answers)."""
        route = self._route
        if route[0] is not Where.POLICY_SERVER:
            local = _local_table(route, snapshot, node_names, rows, pod)
            if local is not None:
                self.metrics.count(route[0])
                return local
        answer = self.remote.score_table(snapshot, node_names, rows, pod)
        if answer is not None:  # None: priority_scores calls score(), which counts it
            self.metrics.count(Where.POLICY_SERVER)
        return answer


def _local_table(
    route: tuple[Where, NodeScorer | None],
    snapshot: ClusterSnapshot,
    node_names: Sequence[str],
    rows: list[int],
    pod: Pod,
) -> list[int] | None:
    """The candidates' priorities computed here (``route`` says how), or None: the policy
    server answers this one."""
    table = snapshot.table
    request = pod_request(pod)
    own = table.own_rows(pod)
    if own and not own.isdisjoint(rows):  # states of their own: read them directly
        states = table.node_states(snapshot, node_names, rows, pod)
        known = [s for s in states if s is not None]
        if not known:
            return [NEUTRAL_PRIORITY] * len(node_names)
        names, local = _local_of(route, NodeColumns.of(known), request)
    else:  # the candidates' states are the table's: select their rows
        tf = TableFeatures.of(snapshot, pod, request)
        at = tf.position[np.asarray(rows, dtype=np.intp)]
        sel = at[at >= 0]
        if not len(sel):  # no candidate has a state
            return [NEUTRAL_PRIORITY] * len(node_names)
        names, local = _local_of_table(route, tf, sel, request)
    if local is None:
        return None
    by_name = dict(zip(names, local, strict=True))
    return [by_name.get(n, NEUTRAL_PRIORITY) for n in node_names]


def _local_of(
    route: tuple[Where, NodeScorer | None], cols: NodeColumns, pod: PodRequest
) -> tuple[tuple[str, ...], list[int] | None]:
    """ScoreNodes' priorities of ``cols``, or None: the policy server answers this one."""
    where, model = route
    if where is Where.POLICY_SERVER or not columns_valid(NODE_SCHEMA_VERSION, cols, pod):
        return cols.names, None
    try:
        if where is Where.KUBE_DEFAULT:
            scores: np.ndarray | None = _DEFAULT_SCORER.score_columns(cols, pod)
        else:
            scores = learned_column_scores(model, cols, pod)  # type: ignore[arg-type]
        return cols.names, None if scores is None else extender_priorities(scores)
    except Exception as exc:  # the server's answer to this is its own (refusal, fallback)
        log.debug("in-process scoring declined", extra={"error": str(exc)[:200]})
        return cols.names, None


def _local_of_table(
    route: tuple[Where, NodeScorer | None], tf: TableFeatures, sel: np.ndarray, pod: PodRequest
) -> tuple[tuple[str, ...], list[int] | None]:
    """:func:`_local_of` of the rows ``sel`` of the memoized table: the same checks and
    arithmetic, the per-node halves done once per snapshot (``rows_valid``, the features of
    each node alone); only the mean over the candidates and the graph run are per request."""
    where, model = route
    if where is not Where.LEARNED or tf.local is None:
        return _local_of(route, tf.columns.take(sel), pod)
    all_names = tf.columns.names
    names = tuple([all_names[i] for i in sel.tolist()])
    if not (request_valid(NODE_SCHEMA_VERSION, names, pod) and tf.rows_ok[sel].all()):
        return names, None
    try:
        scores = learned_feature_scores(model, with_context(tf.local[sel]))  # type: ignore[arg-type]
    except Exception as exc:
        log.debug("in-process scoring declined", extra={"error": str(exc)[:200]})
        return names, None
    return names, extender_priorities(scores)


FEATURE_MEMO = "mirror-node-features"
"""Key of the per-snapshot memo of :class:`TableFeatures` (NodeTable.scratch)."""
MAX_FEATURE_MEMOS = 16


@dataclass(frozen=True)
class TableFeatures:
    """Every scorable node of a snapshot for one pod shape: what a request only selects from.

    Built once per snapshot, pod app (the states count the app's replicas) and pod requests
    (the features count them), like the memoized states (``NodeTable.node_states``), with
    the pod anonymous: a candidate that already counts the pod is not read from here."""

    columns: NodeColumns
    position: np.ndarray
    """Table row → index in ``columns``; -1 where the row has no state (not scorable)."""
    rows_ok: np.ndarray
    """``rows_valid(columns)``: the per-node half of ``columns_valid``."""
    local: np.ndarray | None
    """``node_local_features_columns(columns, pod)``; None when it declines (any row)."""

    @classmethod
    def of(cls, snapshot: ClusterSnapshot, pod: Pod, request: PodRequest) -> TableFeatures:
        """The memoized features for ``pod`` (``request`` = ``pod_request(pod)``)."""
        table = snapshot.table
        memo = table.scratch.setdefault(FEATURE_MEMO, {})
        key = (pod.app, request.cpu_cores, request.memory_bytes)
        hit = memo.get(key)
        if hit is not None:
            return hit
        anonymous = dataclasses.replace(pod, uid="")
        everyone = table.node_states(snapshot, table.names, range(len(table.names)), anonymous)
        scorable = [i for i, s in enumerate(everyone) if s is not None]
        position = np.full(len(everyone), -1, dtype=np.intp)
        position[scorable] = np.arange(len(scorable))
        columns = NodeColumns.of([everyone[i] for i in scorable])
        local = node_local_features_columns(columns, request) if len(columns) else None
        hit = cls(columns, position, rows_valid(columns), local)
        if len(memo) >= MAX_FEATURE_MEMOS:
            memo.clear()
        memo[key] = hit
        return hit
