"""The collector's latest state as the actuator reads it: ``GET /state`` → :class:`Snapshot`.

``/state`` carries both views of one tick: the encoded values (what the policy sees) and the
:class:`~ecrl.policies.base.Observation` they encode (what the envelope and the fallback
read). :func:`observation_from_json` rebuilds the Observation from its ``dataclasses.asdict``
form; ``null`` limits stand for the non-finite values JSON cannot carry.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from typing import Any

from ecrl.errors import Temporary
from ecrl.policies.base import Observation, PodMetrics

REQUEST_TIMEOUT_S = 2.0
"""A hung collector must not hang a tick (the period is seconds)."""
_INFINITE_WHEN_NULL = ("cpu_limit_cores", "memory_limit_bytes")
"""Observation fields the collector writes as ``null`` when infinite (no limit set)."""


class StateUnavailable(Temporary):
    """No state could be read (collector down, no state yet, malformed answer)."""


@dataclass(frozen=True)
class Snapshot:
    """One collector state: encoded values, the Observation, and how fresh it is."""

    tick: int
    schema_version: str
    schema_hash: str
    values: tuple[float, ...]
    missing_inputs: tuple[str, ...]
    age_s: float | None
    """Seconds since the newest sample of this state (collector's clock)."""
    stale: bool
    """The collector's newest tick produced no state (this one is older)."""
    stale_inputs: tuple[str, ...]
    observation: Observation


def observation_from_json(doc: dict[str, Any]) -> Observation:
    """The Observation of ``/state``'s ``observation`` object (strict: unknown keys refused)."""
    known = {f.name for f in fields(Observation)}
    unknown = set(doc) - known
    if unknown:
        raise ValueError(f"observation has unknown fields {sorted(unknown)}")
    kwargs = dict(doc)
    for name in _INFINITE_WHEN_NULL:
        if kwargs.get(name) is None:
            kwargs[name] = math.inf
    kwargs["pods"] = tuple(PodMetrics(**p) for p in doc.get("pods", ()))
    return Observation(**kwargs)


def snapshot_from_json(doc: dict[str, Any]) -> Snapshot:
    """A :class:`Snapshot` of a ``/state`` document; ValueError/KeyError if malformed."""
    return Snapshot(
        tick=int(doc["tick"]),
        schema_version=str(doc["schema_version"]),
        schema_hash=str(doc["schema_hash"]),
        values=tuple(float(v) for v in doc["values"]),
        missing_inputs=tuple(doc.get("missing_inputs", ())),
        age_s=None if doc.get("age_s") is None else float(doc["age_s"]),
        stale=bool(doc.get("stale", False)),
        stale_inputs=tuple(doc.get("stale_inputs", ())),
        observation=observation_from_json(doc["observation"]),
    )


class HttpStateSource:
    """Reads ``{url}/state`` of the collector; every failure is :class:`StateUnavailable`."""

    def __init__(self, url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = url.rstrip("/") + "/state"
        self.timeout_s = timeout_s

    def get(self) -> Snapshot:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read()[:200].decode(errors="replace")
            raise StateUnavailable(f"collector: HTTP {exc.code}: {detail}") from exc
        except (OSError, ValueError) as exc:  # URLError, timeouts, bad JSON
            raise StateUnavailable(f"collector: {exc}") from exc
        try:
            return snapshot_from_json(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateUnavailable(f"collector: malformed /state: {exc!r}") from exc
