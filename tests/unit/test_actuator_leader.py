"""Lease election over a fake CoordinationV1Api holding one Lease (optimistic concurrency)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from kubernetes.client.exceptions import ApiException

from services.scheduler_extender.actuator.leader import LeaseElector


class FakeLeases:
    """One Lease in memory; replace checks resourceVersion like the apiserver (409)."""

    def __init__(self) -> None:
        self.spec: dict | None = None
        self.version = 0

    def _lease(self) -> SimpleNamespace:
        assert self.spec is not None
        s = self.spec

        def when(key: str) -> dt.datetime | None:
            v = s.get(key)
            return None if v is None else dt.datetime.fromisoformat(v.replace("Z", "+00:00"))

        spec = SimpleNamespace(
            holder_identity=s.get("holderIdentity"),
            lease_duration_seconds=s.get("leaseDurationSeconds"),
            acquire_time=when("acquireTime"),
            renew_time=when("renewTime"),
            lease_transitions=s.get("leaseTransitions"),
        )
        return SimpleNamespace(
            spec=spec, metadata=SimpleNamespace(resource_version=str(self.version))
        )

    def read_namespaced_lease(self, name, namespace, **_):
        if self.spec is None:
            raise ApiException(status=404, reason="Not Found")
        return self._lease()

    def create_namespaced_lease(self, namespace, body, **_):
        if self.spec is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self.spec, self.version = body["spec"], self.version + 1

    def replace_namespaced_lease(self, name, namespace, body, **_):
        if body["metadata"].get("resourceVersion") != str(self.version):
            raise ApiException(status=409, reason="Conflict")
        self.spec, self.version = body["spec"], self.version + 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def elector(leases: FakeLeases, identity: str, clock: Clock) -> LeaseElector:
    return LeaseElector(None, "default", "ecrl-actuator", identity, monotonic=clock, leases=leases)


def test_first_candidate_creates_the_lease_and_leads() -> None:
    leases, clock = FakeLeases(), Clock()
    a = elector(leases, "a", clock)
    assert a.try_acquire_or_renew() and a.is_leader
    assert leases.spec is not None and leases.spec["holderIdentity"] == "a"
    assert leases.spec["leaseDurationSeconds"] == 15


def test_second_candidate_waits_while_the_lease_is_fresh() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew() and not b.is_leader
    assert a.try_acquire_or_renew()  # renewal keeps it
    assert leases.spec is not None and leases.spec["leaseTransitions"] == 0


def test_expired_lease_is_taken_over_and_the_old_leader_lapses() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "a", clock), elector(leases, "b", clock)
    a.try_acquire_or_renew()
    assert leases.spec is not None
    leases.spec["renewTime"] = "2000-01-01T00:00:00.000000Z"  # a stopped renewing long ago
    assert b.try_acquire_or_renew() and b.is_leader
    assert leases.spec["holderIdentity"] == "b" and leases.spec["leaseTransitions"] == 1
    clock.now += 16.0  # a could not renew for a whole lease duration
    assert not a.is_leader


def test_a_conflicting_write_does_not_make_a_leader() -> None:
    leases, clock = FakeLeases(), Clock()
    leases.create_namespaced_lease("default", {"spec": {"holderIdentity": None}})
    b = elector(leases, "b", clock)
    real_read = leases.read_namespaced_lease

    def stale_read(name, namespace, **kw):
        lease = real_read(name, namespace, **kw)
        leases.version += 1  # someone else wrote in between
        return lease

    leases.read_namespaced_lease = stale_read  # type: ignore[method-assign]
    assert not b.try_acquire_or_renew() and not b.is_leader


def test_stop_releases_the_lease() -> None:
    leases, clock = FakeLeases(), Clock()
    a = elector(leases, "a", clock)
    a.try_acquire_or_renew()
    a.stop(release=True)
    assert leases.spec is not None and leases.spec["holderIdentity"] is None
    assert not a.is_leader
