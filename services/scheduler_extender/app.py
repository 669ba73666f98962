"""The HTTP shell (Flask): extender routes, /metrics, /healthz, /readyz.

Thin over :class:`~services.scheduler_extender.extender.Extender`. Errors are mapped here
once: a malformed request is HTTP 400 with ``{"Error": reason}`` (the scheduler, with
``ignorable: true``, then goes on without us); any other HTTP error keeps its code with a
JSON body; a refusal to place is HTTP 200 with ``FailedNodes``. Every call writes one JSON
log line (verb, pod, candidates, result, outcome, duration) and updates the metrics.

``POST /filter`` and ``/prioritize`` — what kube-scheduler calls for every pod — are answered
by a plain WSGI handler in front of Flask (:func:`create_app` wraps ``app.wsgi_app``): the
same verb code and the same answers, without Flask's per-request machinery (request context,
routing, response object), which costs about as much as the verb itself (issue 5: p99 ≤ 3 ms
for 100 nodes). A request it does not take (other methods or paths, no Content-Length, a body
over :data:`MAX_BODY_BYTES`) goes to the Flask routes, which run the same code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client import Histogram as PromHistogram
from werkzeug.exceptions import HTTPException

from ecrl.errors import InvalidRequest
from services.scheduler_extender.extender import FAIL_OPEN, INVALID, Extender, Handled
from services.scheduler_extender.wire import (
    binding_result_json,
    filter_result_json,
    load_json,
    parse_binding_args,
    parse_extender_args,
    scores_json_text,
)

log = logging.getLogger("ecrl.extender.requests")
MAX_BODY_BYTES = 8 << 20
"""A v1.Pod is a few KiB; a full NodeList (not nodeCacheCapable) of 100 nodes about 1 MiB."""
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Up to the scheduler's httpTimeout (5 s in deploy/testbed/scheduler-config.yaml)."""


class ExtenderMetrics:
    """``ecrl_extender_*`` series in one registry (one per app, so tests start from zero)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "ecrl_extender_requests",
            "Extender calls by verb and outcome (ok, passthrough, fail_open, invalid, error).",
            ["verb", "outcome"],
            registry=registry,
        )
        self.latency = PromHistogram(
            "ecrl_extender_request_seconds",
            "Time to answer one extender call, by verb.",
            ["verb"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.fail_open = Counter(
            "ecrl_extender_fail_open",
            "Calls answered fail-open after an internal error (all nodes kept / neutral scores).",
            ["verb"],
            registry=registry,
        )


_dumps = json.JSONEncoder(separators=(",", ":")).encode
"""Compact JSON (what Flask's jsonify sends, without sorting the keys)."""
_JSON_HEADERS = "application/json"
_STATUS = {200: "200 OK", 400: "400 BAD REQUEST", 500: "500 INTERNAL SERVER ERROR"}
_FAST_PATHS = {"/filter": "filter", "/prioritize": "prioritize"}


def _filter_summary(result: dict) -> dict:
    return {
        "passed": result["NodeNames"]
        if result["NodeNames"] is not None
        else [n["metadata"]["name"] for n in result["Nodes"]["items"]],
        "failed": result["FailedNodes"],
        "unresolvable": result["FailedAndUnresolvableNodes"],
    }


def create_app(
    extender: Extender,
    registry: CollectorRegistry | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> Flask:
    """The Flask app serving ``extender``; ``ready`` backs /readyz (cache warm)."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ExtenderMetrics(registry)
    app = Flask("services.scheduler_extender")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    counters: dict[tuple[str, str], Callable[[], None]] = {}
    observers: dict[str, Callable[[float], None]] = {}

    def record(verb: str, t0: float, outcome: str, status: int, **fields) -> None:
        duration_s = time.perf_counter() - t0
        inc = counters.get((verb, outcome))
        if inc is None:  # label children resolved once (labels() takes a lock and builds keys)
            inc = counters[(verb, outcome)] = metrics.requests.labels(verb, outcome).inc
        inc()
        observe = observers.get(verb)
        if observe is None:
            observe = observers[verb] = metrics.latency.labels(verb).observe
        observe(duration_s)
        if outcome == FAIL_OPEN:
            metrics.fail_open.labels(verb).inc()
        level = logging.WARNING if outcome in (FAIL_OPEN, INVALID) else logging.INFO
        if outcome == "error":
            level = logging.ERROR
        if log.isEnabledFor(level):
            log.log(
                level,
                f"extender {verb}",
                extra={
                    "verb": verb,
                    "outcome": outcome,
                    "status": status,
                    "duration_ms": round(duration_s * 1000, 3),
                    **fields,
                },
            )

    def invalid(verb: str, t0: float, reason: str, status: int = 400) -> tuple[int, str]:
        record(verb, t0, INVALID, status, reason=reason)
        return status, _dumps({"Error": reason})

    def scheduling_verb(verb: str, data: bytes, t0: float) -> tuple[int, str]:
        """One filter or prioritize call on a request body: (HTTP status, JSON answer)."""
        try:
            args = parse_extender_args(load_json(data))
        except InvalidRequest as exc:
            return invalid(verb, t0, str(exc))
        names = args.node_names
        if verb == "filter":
            handled: Handled = extender.filter(args)
            result = filter_result_json(handled.result, args)
            body = _dumps(result)
            summary: object = _filter_summary(result)
        else:
            handled = extender.prioritize_scores(args)
            scores = handled.result
            body = scores_json_text(names, scores)
            summary = dict(zip(names, scores, strict=True))
        extra = {"reason": handled.reason} if handled.reason else {}
        record(
            verb,
            t0,
            handled.outcome,
            200,
            pod=args.pod.key,
            gpu_requested=args.pod.gpu_slots,
            nodes=list(names),
            result=summary,
            **extra,
        )
        return 200, body

    def flask_verb(verb: str) -> tuple[Response, int]:
        t0 = time.perf_counter()
        try:
            data = request.get_data()
        except HTTPException as exc:  # 413: body over MAX_BODY_BYTES
            status, body = invalid(verb, t0, f"{exc.name}: {exc.description}", exc.code or 400)
        else:
            status, body = scheduling_verb(verb, data, t0)
        return Response(body, status=status, mimetype=_JSON_HEADERS), status

    @app.post("/filter")
    def filter_route():
        return flask_verb("filter")

    @app.post("/prioritize")
    def prioritize_route():
        return flask_verb("prioritize")

    @app.post("/bind")
    def bind_route():
        t0 = time.perf_counter()
        try:
            args = parse_binding_args(load_json(request.get_data()))
        except InvalidRequest as exc:
            status, body = invalid("bind", t0, str(exc))
            return Response(body, status=status, mimetype=_JSON_HEADERS), status
        except HTTPException as exc:
            status, body = invalid("bind", t0, f"{exc.name}: {exc.description}", exc.code or 400)
            return Response(body, status=status, mimetype=_JSON_HEADERS), status
        handled = extender.bind(args)
        record(
            "bind",
            t0,
            handled.outcome,
            200,
            pod=f"{args.pod_namespace}/{args.pod_name}",
            nodes=[args.node],
            result=handled.result or "bound",
        )
        return jsonify(binding_result_json(handled.result)), 200

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        if ready():
            return jsonify({"status": "ready"})
        return jsonify({"status": "not ready", "why": "cluster cache not warm or stale"}), 503

    @app.get("/metrics")
    def metrics_route():
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify({"Error": f"{exc.code} {exc.name}: {exc.description}"}), exc.code

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):  # a bug: still a JSON body, and logged with its trace
        log.error("unhandled error", exc_info=exc, extra={"path": request.path})
        return jsonify({"Error": f"internal error: {type(exc).__name__}"}), 500

    flask_app = app.wsgi_app

    def wsgi_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        """POST /filter and /prioritize straight to :func:`scheduling_verb`; the rest to Flask."""
        verb = _FAST_PATHS.get(environ.get("PATH_INFO", ""))
        length = environ.get("CONTENT_LENGTH")
        if verb is None or environ.get("REQUEST_METHOD") != "POST" or not length:
            return flask_app(environ, start_response)
        try:
            size = int(length)
        except ValueError:
            return flask_app(environ, start_response)
        if not 0 <= size <= MAX_BODY_BYTES:
            return flask_app(environ, start_response)  # Flask answers 413 (and logs it)
        t0 = time.perf_counter()
        try:
            status, body = scheduling_verb(verb, environ["wsgi.input"].read(size), t0)
        except Exception as exc:  # a bug: like Flask's internal_error handler
            log.error("unhandled error", exc_info=exc, extra={"path": environ["PATH_INFO"]})
            status, body = 500, _dumps({"Error": f"internal error: {type(exc).__name__}"})
        payload = body.encode()
        start_response(
            _STATUS[status],
            [("Content-Type", _JSON_HEADERS), ("Content-Length", str(len(payload)))],
        )
        return [payload]

    app.wsgi_app = wsgi_app  # type: ignore[method-assign]
    return app
