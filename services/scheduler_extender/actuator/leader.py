"""Leader election on a ``coordination.k8s.io/v1`` Lease (client-go's leaderelection, small).

Acquire the Lease when it is absent, expired or ours; renew it every ``renew_s``; every write
is a ``replace`` carrying the read ``resourceVersion``, so two candidates racing for an
expired Lease cannot both win (the loser gets 409 Conflict). Leadership lapses by itself when
renewals fail for a whole lease duration, before another candidate can take over. On a clean
stop the Lease is released (holder cleared), as client-go's ``ReleaseOnCancel`` does.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from .apply import REQUEST_TIMEOUT_S, _api_errors, _why

log = logging.getLogger("ecrl.actuator.leader")


def _micro_time(t: dt.datetime) -> str:
    """RFC 3339 with microseconds (the Lease's MicroTime fields)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """One candidate; :attr:`is_leader` is what the loop checks before deciding."""

    def __init__(
        self,
        api,
        namespace: str,
        name: str,
        identity: str,
        duration_s: float = 15.0,
        renew_s: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
        leases=None,
    ) -> None:
        from kubernetes import client

        self.leases = leases if leases is not None else client.CoordinationV1Api(api)
        """CoordinationV1Api (injectable: tests pass a fake with the same three methods)."""
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_s = duration_s
        self.renew_s = renew_s
        self.monotonic = monotonic
        self.on_change = on_change
        self._renewed_at: float | None = None
        self._was_leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        renewed = self._renewed_at
        return renewed is not None and self.monotonic() - renewed < self.duration_s

    def _body(self, resource_version: str | None, acquired: str, transitions: int) -> dict:
        now = _micro_time(dt.datetime.now(dt.UTC))
        meta: dict = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": round(self.duration_s),
                "acquireTime": acquired,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    def try_acquire_or_renew(self) -> bool:
        """One round: True if we hold the Lease after it."""
        from kubernetes.client.exceptions import ApiException

        started = self.monotonic()
        try:
            try:
                lease = self.leases.read_namespaced_lease(
                    self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                now = _micro_time(dt.datetime.now(dt.UTC))
                self.leases.create_namespaced_lease(
                    self.namespace, self._body(None, now, 0), _request_timeout=REQUEST_TIMEOUT_S
                )
                return self._won(started)
            spec = lease.spec
            holder = spec.holder_identity or ""
            if holder and holder != self.identity and not self._expired(spec):
                return self._lost(f"held by {holder}")
            transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
            acquired = (
                _micro_time(spec.acquire_time)
                if holder == self.identity and spec.acquire_time is not None
                else _micro_time(dt.datetime.now(dt.UTC))
            )
            body = self._body(lease.metadata.resource_version, acquired, transitions)
            self.leases.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=REQUEST_TIMEOUT_S
            )
            return self._won(started)
        except _api_errors() as exc:
            # 409: another candidate wrote first; anything else: try again next round.
            # Leadership itself lapses only after a whole lease duration without renewal.
            log.warning("lease round failed", extra={"lease": self.name, "error": _why(exc)})
            self._notify()
            return self.is_leader

    def _expired(self, spec) -> bool:
        renew = spec.renew_time or spec.acquire_time
        if renew is None:
            return True
        duration = spec.lease_duration_seconds or self.duration_s
        return dt.datetime.now(dt.UTC) > renew + dt.timedelta(seconds=duration)

    def _won(self, started: float) -> bool:
        self._renewed_at = started  # the lease counts from before the write, to be safe
        self._notify()
        return True

    def _lost(self, why: str) -> bool:
        self._renewed_at = None
        self._notify(why)
        return False

    def _notify(self, why: str = "") -> None:
        leader = self.is_leader
        if leader != self._was_leader:
            self._was_leader = leader
            log.warning(
                "leadership changed",
                extra={"lease": self.name, "identity": self.identity, "leader": leader, "why": why},
            )
            if self.on_change is not None:
                self.on_change(leader)

    # ------------------------------------------------------------------------------ the loop
    def run(self) -> None:
        while not self._stop.is_set():
            self.try_acquire_or_renew()
            self._stop.wait(self.renew_s)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="lease", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop renewing; give the Lease up at once if we hold it (no 15 s wait for others)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        if release and self.is_leader:
            self._release()
        self._renewed_at = None
        self._notify("stopped")

    def _release(self) -> None:
        try:
            lease = self.leases.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
            if lease.spec.holder_identity != self.identity:
                return
            acquired = lease.spec.acquire_time or dt.datetime.now(dt.UTC)
            transitions = lease.spec.lease_transitions or 0
            body = self._body(lease.metadata.resource_version, _micro_time(acquired), transitions)
            body["spec"]["holderIdentity"] = None
            body["spec"]["leaseDurationSeconds"] = 1
            self.leases.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=REQUEST_TIMEOUT_S
            )
        except _api_errors() as exc:
            log.warning("lease release failed", extra={"lease": self.name, "error": _why(exc)})
