"""The HTTP shell (Flask): extender routes, /metrics, /healthz, /readyz.

Thin over :class:`~services.scheduler_extender.extender.Extender`. Errors are mapped here
once: a malformed request is HTTP 400 with ``{"Error": reason}`` (the scheduler, with
``ignorable: true``, then goes on without us); any other HTTP error keeps its code with a
JSON body; a refusal to place is HTTP 200 with ``FailedNodes``. Every call writes one JSON
log line (verb, pod, candidates, result, outcome, duration) and updates the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

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
    priorities_json,
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

    def record(verb: str, t0: float, outcome: str, status: int, **fields) -> None:
        duration_s = time.perf_counter() - t0
        metrics.requests.labels(verb, outcome).inc()
        metrics.latency.labels(verb).observe(duration_s)
        if outcome == FAIL_OPEN:
            metrics.fail_open.labels(verb).inc()
        level = logging.WARNING if outcome in (FAIL_OPEN, INVALID) else logging.INFO
        if outcome == "error":
            level = logging.ERROR
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

    def invalid(verb: str, t0: float, reason: str, status: int = 400) -> tuple[Response, int]:
        record(verb, t0, INVALID, status, reason=reason)
        return jsonify({"Error": reason}), status

    def scheduling_verb(verb: str) -> tuple[Response, int]:
        t0 = time.perf_counter()
        try:
            args = parse_extender_args(load_json(request.get_data()))
        except InvalidRequest as exc:
            return invalid(verb, t0, str(exc))
        except HTTPException as exc:  # 413: body over MAX_BODY_BYTES
            return invalid(verb, t0, f"{exc.name}: {exc.description}", exc.code or 400)
        handled: Handled
        if verb == "filter":
            handled = extender.filter(args)
            body = filter_result_json(handled.result, args)
            summary: object = _filter_summary(body)
        else:
            handled = extender.prioritize(args)
            body = priorities_json(handled.result)
            summary = {p.host: p.score for p in handled.result}
        extra = {"reason": handled.reason} if handled.reason else {}
        record(
            verb,
            t0,
            handled.outcome,
            200,
            pod=args.pod.key,
            gpu_requested=args.pod.gpu_slots,
            nodes=list(args.node_names),
            result=summary,
            **extra,
        )
        return jsonify(body), 200

    @app.post("/filter")
    def filter_route():
        return scheduling_verb("filter")

    @app.post("/prioritize")
    def prioritize_route():
        return scheduling_verb("prioritize")

    @app.post("/bind")
    def bind_route():
        t0 = time.perf_counter()
        try:
            args = parse_binding_args(load_json(request.get_data()))
        except InvalidRequest as exc:
            return invalid("bind", t0, str(exc))
        except HTTPException as exc:
            return invalid("bind", t0, f"{exc.name}: {exc.description}", exc.code or 400)
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

    return app
