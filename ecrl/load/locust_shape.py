"""The locustfile's settings and load schedule as plain data, kept free of any Locust import.

``import locust`` monkey-patches the standard library with gevent, which must not happen
inside pytest or the other ECRL processes. So everything ``loadtest/locustfile.py`` decides —
which shape runs, how it is scaled, the think time, the gRPC target — lives here as pure
functions of the environment, and the locustfile is a thin shell that hands
:meth:`LoadSchedule.tick` to Locust's ``LoadTestShape.tick``.

Environment (all optional; read once when Locust imports the locustfile):

``ECRL_SHAPE``        built-in shape name or a trace CSV (:func:`ecrl.load.shapes.get_shape`);
                      unset → no shape class, Locust's ``-u/-r/-t`` apply as usual.
``ECRL_TIME_SCALE``   factor on the shape's time axis (0.1 = ten times shorter), for CI.
``ECRL_USERS_SCALE``  factor on users (or rps), for small machines; a positive value never
                      rounds to 0 users.
``ECRL_SPAWN_RATE``   users started/stopped per second at a change (default 10 / time scale,
                      at most 100).
``ECRL_THINK_S``      ``"lo,hi"`` seconds of think time (Locust ``between(lo, hi)``).
``ECRL_RPS_PER_USER`` open-loop (``rps``) traces: each user runs ``constant_throughput`` at this
                      rate and the schedule sets users = rps / rate.
``ECRL_GRPC_URL``     ``host:port`` of Triton's gRPC endpoint (HTTP uses Locust's ``--host``).
``ECRL_REQUEST_TIMEOUT_S`` client-side timeout per request; a late answer counts as failed.
``ECRL_REQUEST_LOG``  path of a per-request CSV (Locust's ``CsvRequestLogger``); unset → none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from ecrl.errors import ConfigError
from ecrl.load.shapes import LoadShape, get_shape
from ecrl.twin.spec import ClusterSpec, DeploymentSpec

ENV_SOURCE = "environment"

DEFAULT_SPAWN_RATE = 10.0
"""Users/s at a change; :meth:`LoadShape.tick`'s default, so the twin and Locust agree."""

MAX_DEFAULT_SPAWN_RATE = 100.0
"""Locust warns that spawn rates above 100/s "sometimes cause issues" (``runners.py``)."""

DEFAULT_THINK_TIME_S: tuple[float, float] = next(
    f.default for f in fields(ClusterSpec) if f.name == "think_time_s"
)
"""The twin's think time (``ClusterSpec.think_time_s``), so both see the same user model."""

DEFAULT_REQUEST_TIMEOUT_S: float = next(
    f.default for f in fields(DeploymentSpec) if f.name == "request_timeout_s"
)
"""The twin's client timeout (``DeploymentSpec.request_timeout_s``)."""

DEFAULT_GRPC_URL = "127.0.0.1:8001"
"""Triton's default gRPC port (``--grpc-port 8001``)."""


@dataclass(frozen=True)
class LoadSchedule:
    """A shape as Locust's ``tick()`` sees it: time-compressed, users-scaled, open/closed loop."""

    shape: LoadShape
    """Already compressed in time (``LoadShape.scaled``)."""
    users_scale: float = 1.0
    spawn_rate: float = DEFAULT_SPAWN_RATE
    rps_per_user: float = 1.0
    """Open-loop only: the ``constant_throughput`` rate of each user."""

    @property
    def open_loop(self) -> bool:
        """True for ``rps`` traces, which need constant-throughput users."""
        return self.shape.kind == "rps"

    @property
    def duration_s(self) -> float:
        return self.shape.duration_s

    def users_at(self, run_time_s: float) -> int:
        """Users to run at ``run_time_s`` (scaled; at least 1 while the shape is positive)."""
        value = float(self.shape.value_at(run_time_s)) * self.users_scale
        if self.open_loop:
            value /= self.rps_per_user
        if value <= 0:
            return 0
        return max(1, round(value))

    def tick(self, run_time_s: float) -> tuple[int, float] | None:
        """Locust ``LoadTestShape.tick()``: (users, spawn_rate), or None once the shape ends."""
        if self.open_loop:
            if run_time_s >= self.shape.duration_s:
                return None
        elif self.shape.tick(run_time_s, self.spawn_rate) is None:
            return None
        return self.users_at(run_time_s), self.spawn_rate


def _float_env(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(ENV_SOURCE, name, f"must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= minimum:
        raise ConfigError(ENV_SOURCE, name, f"must be a finite number > {minimum}, got {raw!r}")
    return value


def schedule_from_env(env: Mapping[str, str]) -> LoadSchedule | None:
    """The schedule ``ECRL_SHAPE`` asks for, or None when it is unset (plain ``-u/-r/-t``)."""
    name = env.get("ECRL_SHAPE", "").strip()
    if not name:
        return None
    time_scale = _float_env(env, "ECRL_TIME_SCALE", 1.0, 0.0)
    shape = get_shape(name)
    default_spawn_rate = min(DEFAULT_SPAWN_RATE / time_scale, MAX_DEFAULT_SPAWN_RATE)
    return LoadSchedule(
        shape=shape.scaled(time_scale) if time_scale != 1.0 else shape,
        users_scale=_float_env(env, "ECRL_USERS_SCALE", 1.0, 0.0),
        # A compressed shape ramps proportionally faster, so its steps stay as steep.
        spawn_rate=_float_env(env, "ECRL_SPAWN_RATE", default_spawn_rate, 0.0),
        rps_per_user=_float_env(env, "ECRL_RPS_PER_USER", 1.0, 0.0),
    )


def think_time_from_env(env: Mapping[str, str]) -> tuple[float, float]:
    """``ECRL_THINK_S="lo,hi"`` → (lo, hi) seconds; the twin's default when unset."""
    raw = env.get("ECRL_THINK_S", "").strip()
    if not raw:
        return DEFAULT_THINK_TIME_S
    parts = raw.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        problem = f"must be 'lo,hi' seconds, got {raw!r}"
        raise ConfigError(ENV_SOURCE, "ECRL_THINK_S", problem) from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not 0 <= lo <= hi:
        raise ConfigError(ENV_SOURCE, "ECRL_THINK_S", f"need 0 <= lo <= hi, got {raw!r}")
    return lo, hi


def grpc_url_from_env(env: Mapping[str, str]) -> str:
    """``ECRL_GRPC_URL`` as ``host:port`` (a ``grpc://`` or ``http://`` prefix is dropped)."""
    url = env.get("ECRL_GRPC_URL", "").strip() or DEFAULT_GRPC_URL
    return url.split("://", 1)[-1].rstrip("/")


def request_timeout_from_env(env: Mapping[str, str]) -> float:
    """``ECRL_REQUEST_TIMEOUT_S``: seconds before a request counts as failed."""
    return _float_env(env, "ECRL_REQUEST_TIMEOUT_S", DEFAULT_REQUEST_TIMEOUT_S, 0.0)


def request_log_from_env(env: Mapping[str, str]) -> str | None:
    """``ECRL_REQUEST_LOG``: where to write one CSV row per request, or None."""
    return env.get("ECRL_REQUEST_LOG", "").strip() or None


def http_url_from_host(host: str | None) -> tuple[str, bool]:
    """Locust's ``--host`` (``http://h:p``) → (``h:p``, ssl) as tritonclient.http wants it."""
    if not host:
        raise ConfigError("locust", "--host", "set --host http://HOST:PORT (Triton's HTTP port)")
    scheme, sep, rest = host.strip().partition("://")
    if not sep:
        return scheme.rstrip("/"), False
    if scheme not in ("http", "https"):
        raise ConfigError("locust", "--host", f"scheme must be http or https, got {host!r}")
    return rest.rstrip("/"), scheme == "https"
