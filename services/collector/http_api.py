"""The HTTP shell: ``GET /state`` (JSON), ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

Standard library only (four read-only routes need no framework). ``/state`` carries the same
state as gRPC, readable by people and ``curl | jq``: feature name → value, the missing flags,
schema version and hash, tick, ``observed_at``, ``age_s``, whether the newest tick was stale
and why, the decoded :class:`~ecrl.policies.base.Observation` and diagnostics. Non-finite
numbers (a pod without a CPU limit) are written as ``null``: JSON has no Infinity.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ecrl import schema
from ecrl.jsonsafe import finite

from .collector import Collector, State
from .config import parse_hostport
from .grpc_api import StartError

log = logging.getLogger("ecrl.collector.http")


def rfc3339(ts_s: float) -> str:
    return dt.datetime.fromtimestamp(ts_s, dt.UTC).isoformat(timespec="milliseconds")


def state_json(collector: Collector, state: State) -> dict[str, Any]:
    """The ``/state`` document of ``state``."""
    values = [float(v) for v in state.values]
    store = collector.store
    return finite(
        {
            "schema_version": schema.SCHEMA_VERSION,
            "schema_hash": schema.SCHEMA_HASH,
            "tick": state.tick,
            "observed_at": rfc3339(state.observed_at_s),
            "observed_at_s": state.observed_at_s,
            "age_s": collector.state_age_s(),
            "stale": bool(store.last_stale),
            "stale_inputs": list(store.last_stale),
            "features": dict(zip(schema.FEATURE_NAMES, values, strict=True)),
            "missing": schema.missing(state.values),
            "missing_inputs": list(state.missing_inputs),
            "values": values,
            "observation": dataclasses.asdict(state.observation),
            "diagnostics": state.diagnostics,
        }
    )


class _Handler(BaseHTTPRequestHandler):
    collector: Collector  # set on the subclass made per server
    server_version = "ecrl-collector"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        routes = {
            "/state": self._state,
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }
        route = routes.get(path)
        if route is None:
            self._json(404, {"error": f"no route {path}; try /state, /metrics, /healthz"})
            return
        route()

    def _state(self) -> None:
        state = self.collector.store.latest()
        if state is None:
            reason = ", ".join(self.collector.store.last_stale) or "no tick finished yet"
            self._json(503, {"error": f"no state yet ({reason})"})
            return
        self._json(200, state_json(self.collector, state))

    def _metrics(self) -> None:
        body = generate_latest(self.collector.metrics.registry)
        self._send(200, body, CONTENT_TYPE_LATEST)

    def _healthz(self) -> None:
        """The tick loop runs (a tick was attempted within three periods, or the loop is new)."""
        c = self.collector
        last = c.store.last_attempt_s
        overdue = last is not None and c.clock() - last > 3 * c.config.period_s + 10.0
        ok = c.alive() and not overdue
        self._json(200 if ok else 503, {"status": "ok" if ok else "tick loop not running"})

    def _readyz(self) -> None:
        """A state exists and is fresh enough to act on."""
        c = self.collector
        age = c.state_age_s()
        ok = age is not None and age <= c.config.stale_after_s + c.config.period_s
        self._json(200 if ok else 503, {"ready": ok, "age_s": age})

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http", extra={"request": format % args})


class HttpServer:
    """The HTTP API in a daemon thread."""

    def __init__(self, collector: Collector, listen: str) -> None:
        self.listen = listen
        handler = type("Handler", (_Handler,), {"collector": collector})
        host, port = parse_hostport(listen)
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise StartError(f"--http-listen {listen}: cannot bind ({exc.strerror})") from exc
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_port
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="collector-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(5.0)
        self.close()

    def close(self) -> None:
        """Release the socket (also when the server never started)."""
        self._httpd.server_close()
