"""The loaded scaling policy and node scorer, reloaded on file change and swapped atomically.

Each model lives in a :class:`WatchedModel`: an immutable :class:`Loaded` snapshot behind one
reference. A request reads the reference once and uses that snapshot to the end, so a reload
never shows a half-loaded model and never fails a request in flight (Trimaran's snapshot swap).

A background :class:`Watcher` polls the files (stat, then SHA-256 of the content when the stat
changed; inotify is not needed for a file that changes a few times a day). A new file is loaded
completely and validated (:meth:`PolicyModel.load` plus a smoke decision) before the swap. A bad
new file — schema mismatch, corrupt, wrong kind — keeps the previous model serving, and is
logged, counted (``ecrl_policy_reloads_total``) and reported in ``fallback_detail``; with no
previous model the component is in fallback (heuristic / kube-default scores).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from ecrl.actions import HEADS, NVEC
from ecrl.errors import EcrlError, Permanent, Temporary
from ecrl.placement import (
    NODE_SCHEMA_HASH,
    NodeScorer,
    NodeState,
    OnnxNodeScorer,
    PodRequest,
)
from ecrl.policy_model import MASK_DIM, PolicyModel, SchemaMismatch
from ecrl.schema import SCHEMA_HASH, STATE_DIM

from .metrics import ServerMetrics
from .results import Fallback

log = logging.getLogger("ecrl.policy_server.store")

T = TypeVar("T")
VERSION_CHARS = 12
"""Length of the SHA-256 prefix that names a model version (as ``git`` short hashes do)."""
SMOKE_RUNS = 5
"""Smoke decisions on load: the first warms onnxruntime, the rest time a typical call."""


class FileChanged(Temporary):
    """The file changed while it was being loaded; the next poll tries again."""


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """One immutable state of a watched model: what serves now and why."""

    model: T | None
    """The loaded model; None = fallback."""
    path: str
    sha256: str = ""
    fallback: Fallback = Fallback.NO_MODEL
    detail: str = ""
    """Why in fallback, or what went wrong with the last reload while a model still serves."""
    decision_s: float = 0.0
    """Typical time of one call, measured at load (the deadline check uses it)."""

    @property
    def version(self) -> str:
        return self.sha256[:VERSION_CHARS] if self.model is not None else ""


@dataclass(frozen=True)
class Candidate(Generic[T]):
    """What a loader returns: a validated model, the hash of what it loaded, a timing."""

    model: T
    sha256: str
    decision_s: float


def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _timed(call: Callable[[], Any]) -> float:
    """Seconds of the last of :data:`SMOKE_RUNS` calls (the first ones warm up)."""
    elapsed = 0.0
    for _ in range(SMOKE_RUNS):
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
    return elapsed


def load_policy(path: str) -> Candidate[PolicyModel]:
    """Load and check a scaling policy, then make sure it decides on a neutral state."""
    model = PolicyModel.load(path, SCHEMA_HASH)
    state = np.zeros((1, STATE_DIM), dtype=np.float32)
    mask = np.ones((1, MASK_DIM), dtype=bool)

    def smoke() -> None:
        raw = model.decide_raw(state, mask)
        action = np.asarray(raw.action)
        if action.shape != (1, len(HEADS)) or not all(
            0 <= int(a) < n for a, n in zip(action[0], NVEC, strict=True)
        ):
            raise Permanent(f"{path}: smoke decision returned action {action.tolist()}")
        if not np.isfinite(np.asarray(raw.value)).all():
            raise Permanent(f"{path}: smoke decision returned a non-finite value")

    try:
        elapsed = _timed(smoke)
    except EcrlError:
        raise
    except Exception as exc:  # onnxruntime raises its own runtime errors
        raise Permanent(f"{path}: smoke decision failed: {exc}") from exc
    return Candidate(model, model.sha256, elapsed)


SMOKE_NODE = NodeState("smoke", 1, 4, 2, 1.0, 0.5, 0.5, 8.0, 2.0, 32 * 2**30, 4 * 2**30, 1)


def load_scorer(path: str) -> Candidate[NodeScorer]:
    """Load a learned ONNX node scorer (node schema hash checked) and score a smoke node."""
    before = _file_digest(path)
    try:
        scorer = OnnxNodeScorer(path)
    except EcrlError:
        raise
    except Exception as exc:  # onnxruntime's load errors
        raise Permanent(f"{path}: onnxruntime cannot load it: {exc}") from exc
    pod = PodRequest(1.0, 2**30)

    def smoke() -> None:
        scores = scorer.score([SMOKE_NODE, replace(SMOKE_NODE, name="smoke-2")], pod)
        if scores.shape != (2,) or not np.isfinite(scores).all():
            raise Permanent(f"{path}: smoke scoring returned {scores.tolist()}")

    try:
        elapsed = _timed(smoke)
    except EcrlError:
        raise
    except Exception as exc:
        raise Permanent(f"{path}: smoke scoring failed: {exc}") from exc
    if _file_digest(path) != before:
        raise FileChanged(f"{path}: changed while loading")
    return Candidate(scorer, before, elapsed)


def _reason_of(exc: Exception) -> Fallback:
    # OnnxNodeScorer has no exception type of its own for it: its message names the hash.
    schema_error = isinstance(exc, SchemaMismatch) or "node schema hash" in str(exc)
    return Fallback.SCHEMA_MISMATCH if schema_error else Fallback.NO_MODEL


def _outcome_of(reason: Fallback) -> str:
    return "schema_mismatch" if reason is Fallback.SCHEMA_MISMATCH else "invalid"


class ModelMetrics(Protocol):
    """What a :class:`WatchedModel` reports to: :class:`ServerMetrics` in the policy server,
    the extender's own metrics where it mirrors the scorer."""

    reloads: Any
    """A Counter labelled (component, outcome)."""

    def set_state(self, component: str, version: str, schema_hash: str, reason: str) -> None: ...


@dataclass
class WatchedModel(Generic[T]):
    """One model file: the current snapshot, and :meth:`poll` to follow the file."""

    component: str
    """``policy`` or ``scorer`` (log and metric label)."""
    path: str | None
    loader: Callable[[str], Candidate[T]]
    metrics: ModelMetrics
    schema_hash: str
    current: Loaded[T] = field(init=False)
    _stat: tuple[int, int, int] | None = field(default=None, init=False)
    _refused_sha256: str = field(default="", init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        detail = f"no {self.component} file configured" if self.path is None else "not loaded yet"
        self._publish(Loaded(None, self.path or "", detail=detail))

    def poll(self) -> str:
        """Follow the file once: load, refuse or keep; returns the outcome (for tests, logs)."""
        if self.path is None:
            return "unconfigured"
        with self._lock:
            return self._poll(self.path)

    def _poll(self, path: str) -> str:
        try:
            st = Path(path).stat()
            stat = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stat == self._stat:
                return "unchanged"
            sha256 = _file_digest(path)
        except OSError as exc:
            self._stat = None
            return self._missing(path, exc)
        if sha256 in (self.current.sha256, self._refused_sha256):
            self._stat = stat
            if sha256 == self.current.sha256 and self.current.detail:
                self._publish(replace(self.current, detail=""))  # back to what serves
            return "unchanged"
        try:
            candidate = self.loader(path)
            if candidate.sha256 != sha256:
                raise FileChanged(f"{path}: changed while loading")
        except FileChanged as exc:
            log.info("model file still changing", extra={"component": self.component, "err": exc})
            self.metrics.reloads.labels(self.component, "retry").inc()
            return "retry"  # self._stat not updated: the next poll tries again
        except (EcrlError, OSError) as exc:
            self._stat, self._refused_sha256 = stat, sha256
            return self._refuse(path, exc)
        self._stat, self._refused_sha256 = stat, ""
        loaded = Loaded(candidate.model, path, sha256, Fallback.NONE, "", candidate.decision_s)
        self._publish(loaded)
        self.metrics.reloads.labels(self.component, "loaded").inc()
        log.info(
            "model loaded",
            extra={"component": self.component, "path": path, "version": self.current.version},
        )
        return "loaded"

    def _missing(self, path: str, exc: OSError) -> str:
        old = self.current
        if old.model is not None:
            detail = f"{path} cannot be read ({exc.strerror}); still serving {old.version}"
            if old.detail != detail:
                log.warning("model file gone", extra={"component": self.component, "path": path})
                self._publish(replace(old, detail=detail))
            return "kept"
        detail = f"no {self.component} file at {path} ({exc.strerror})"
        if old.detail != detail:
            log.warning("no model file", extra={"component": self.component, "path": path})
            self._publish(Loaded(None, path, fallback=Fallback.NO_MODEL, detail=detail))
        return "missing"

    def _refuse(self, path: str, exc: Exception) -> str:
        reason = _reason_of(exc)
        self.metrics.reloads.labels(self.component, _outcome_of(reason)).inc()
        old = self.current
        if old.model is not None:
            detail = f"reload refused: {exc}; still serving {old.version}"
            self._publish(replace(old, detail=detail))
            log.error(
                "model reload refused",
                extra={"component": self.component, "err": str(exc), "serving": old.version},
            )
            return "kept"
        self._publish(Loaded(None, path, fallback=reason, detail=str(exc)))
        log.error("model refused", extra={"component": self.component, "err": str(exc)})
        return "refused"

    def _publish(self, loaded: Loaded[T]) -> None:
        """The atomic swap: one reference assignment (readers hold the old one if they had it)."""
        self.current = loaded
        self.metrics.set_state(
            self.component,
            loaded.version,
            self.schema_hash if loaded.model is not None else "",
            loaded.fallback.value,
        )


class ModelStore:
    """The scaling policy and the node scorer, each followed on disk."""

    def __init__(self, policy_path: str | None, scorer_path: str | None, metrics: ServerMetrics):
        self.policy: WatchedModel[PolicyModel] = WatchedModel(
            "policy", policy_path, load_policy, metrics, SCHEMA_HASH
        )
        self.scorer: WatchedModel[NodeScorer] = WatchedModel(
            "scorer", scorer_path, load_scorer, metrics, NODE_SCHEMA_HASH
        )

    def poll(self) -> None:
        """Follow both files once (at start, then from the watcher)."""
        self.policy.poll()
        self.scorer.poll()


class Watcher:
    """Calls :meth:`ModelStore.poll` every ``interval_s`` on a daemon thread; stoppable."""

    def __init__(self, store: ModelStore, interval_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.store.poll()
            except Exception:  # the watcher must outlive any surprise; logged with traceback
                log.exception("model watcher poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * self.interval_s + 1)
