"""The extender's HTTP layer through Flask's test client: status codes, bodies, metrics, logs."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import CollectorRegistry

from services.scheduler_extender.app import MAX_BODY_BYTES, create_app
from services.scheduler_extender.cache import StaticView, build_snapshot
from services.scheduler_extender.extender import Extender
from services.scheduler_extender.scoring import LocalScorer
from tests.unit.test_extender_wire import FakeCache, k8s_node, k8s_pod

BOX = k8s_node("box")
FULL = build_snapshot([BOX, k8s_node("b")], [k8s_pod(f"r{i}", node="box") for i in range(4)], 0.0)


class RecordingBinder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        self.calls.append((namespace, name, uid, node))


def make_client(view=None, binder=None, ready=lambda: True):
    registry = CollectorRegistry()
    ext = Extender(view if view is not None else StaticView(FULL), LocalScorer(), binder)
    app = create_app(ext, registry, ready)
    return app.test_client(), registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def args_body(pod: dict | None = None, names: list[str] | None = None) -> dict:
    return {"Pod": pod or k8s_pod("p"), "Nodes": None, "NodeNames": names or ["box", "b"]}


# -------------------------------------------------------------------------------- verbs
def test_filter_answers_with_go_field_names_and_reasons() -> None:
    client, _ = make_client()
    resp = client.post("/filter", json=args_body())
    assert resp.status_code == 200
    assert resp.get_json() == {
        "Nodes": None,
        "NodeNames": ["b"],
        "FailedNodes": {"box": "nvidia.com/gpu: 1 requested, 0 of 4 time-sliced slots free"},
        "FailedAndUnresolvableNodes": {},
        "Error": "",
    }


def test_prioritize_answers_a_host_priority_list() -> None:
    client, _ = make_client()
    resp = client.post("/prioritize", json=args_body())
    assert resp.status_code == 200
    body = resp.get_json()
    assert [p["Host"] for p in body] == ["box", "b"]
    assert all(isinstance(p["Score"], int) and 0 <= p["Score"] <= 10 for p in body)


def test_bind_calls_the_binder_and_answers_an_empty_error() -> None:
    binder = RecordingBinder()
    client, registry = make_client(binder=binder)
    body = {"PodName": "p", "PodNamespace": "ns", "PodUID": "u", "Node": "box"}
    resp = client.post("/bind", json=body)
    assert resp.status_code == 200 and resp.get_json() == {"Error": ""}
    assert binder.calls == [("ns", "p", "u", "box")]
    assert sample(registry, "ecrl_extender_requests_total", verb="bind", outcome="ok") == 1


# --------------------------------------------------------------------- malformed requests
@pytest.mark.parametrize(
    ("path", "data", "reason"),
    [
        ("/filter", b"not json", "body: not valid JSON"),
        ("/filter", b"", "body: not valid JSON"),
        ("/prioritize", b"[1, 2]", "body: must be an object, got list"),
        ("/filter", json.dumps({"NodeNames": ["box"]}).encode(), "Pod: missing"),
        ("/prioritize", json.dumps({"Pod": 7}).encode(), "Pod: must be an object, got int"),
        (
            "/filter",
            json.dumps({"Pod": k8s_pod("p"), "NodeNames": "box"}).encode(),
            "NodeNames: must be a list or null, got str",
        ),
        ("/bind", json.dumps({"PodName": "p"}).encode(), "PodNamespace: must be a non-empty"),
        ("/bind", b"{", "body: not valid JSON"),
    ],
)
def test_malformed_requests_get_400_with_a_reason(path: str, data: bytes, reason: str) -> None:
    client, registry = make_client()
    resp = client.post(path, data=data, content_type="application/json")
    assert resp.status_code == 400
    assert resp.get_json()["Error"].startswith(reason)
    verb = path.strip("/")
    assert sample(registry, "ecrl_extender_requests_total", verb=verb, outcome="invalid") == 1


def test_oversized_body_is_refused_with_a_json_error() -> None:
    client, _ = make_client()
    resp = client.post("/filter", data=b" " * (MAX_BODY_BYTES + 1))
    assert resp.status_code == 413 and "Error" in resp.get_json()


def test_wrong_method_and_unknown_path_answer_json_errors() -> None:
    client, _ = make_client()
    resp = client.get("/filter")
    assert resp.status_code == 405 and resp.get_json()["Error"].startswith("405")
    resp = client.post("/nope", json={})
    assert resp.status_code == 404 and resp.get_json()["Error"].startswith("404")


# ------------------------------------------------------------------------------ fail open
def test_filter_fails_open_when_the_cache_raises_and_counts_it() -> None:
    client, registry = make_client(view=FakeCache(error=RuntimeError("apiserver gone")))
    resp = client.post("/filter", json=args_body())
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["NodeNames"] == ["box", "b"] and body["FailedNodes"] == {}
    assert body["Error"] == ""
    assert sample(registry, "ecrl_extender_fail_open_total", verb="filter") == 1
    assert sample(registry, "ecrl_extender_requests_total", verb="filter", outcome="fail_open") == 1


def test_prioritize_fails_open_with_zero_scores() -> None:
    client, registry = make_client(view=FakeCache(error=RuntimeError("apiserver gone")))
    resp = client.post("/prioritize", json=args_body())
    assert resp.status_code == 200
    assert resp.get_json() == [{"Host": "box", "Score": 0}, {"Host": "b", "Score": 0}]
    assert sample(registry, "ecrl_extender_fail_open_total", verb="prioritize") == 1


# ---------------------------------------------------------------------- metrics and logs
def test_metrics_count_requests_and_observe_latency() -> None:
    client, registry = make_client()
    for _ in range(3):
        client.post("/filter", json=args_body())
    client.post("/prioritize", json=args_body())
    client.post("/filter", json=args_body(pod=k8s_pod("cpu", gpus=0)))
    assert sample(registry, "ecrl_extender_requests_total", verb="filter", outcome="ok") == 3
    assert (
        sample(registry, "ecrl_extender_requests_total", verb="filter", outcome="passthrough") == 1
    )
    assert sample(registry, "ecrl_extender_request_seconds_count", verb="filter") == 4
    assert sample(registry, "ecrl_extender_request_seconds_count", verb="prioritize") == 1
    text = client.get("/metrics").get_data(as_text=True)
    assert 'ecrl_extender_requests_total{outcome="ok",verb="filter"} 3.0' in text
    assert "ecrl_extender_request_seconds_bucket" in text


def test_each_call_writes_one_structured_log_line(caplog: pytest.LogCaptureFixture) -> None:
    client, _ = make_client()
    with caplog.at_level(logging.INFO, logger="ecrl.extender.requests"):
        client.post("/filter", json=args_body())
    (record,) = [r for r in caplog.records if r.name == "ecrl.extender.requests"]
    assert record.verb == "filter" and record.pod == "default/p"
    assert record.nodes == ["box", "b"] and record.outcome == "ok"
    assert record.result["passed"] == ["b"] and "box" in record.result["failed"]
    assert record.duration_ms >= 0


def test_health_and_readiness() -> None:
    warm = [False]
    client, _ = make_client(ready=lambda: warm[0])
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    warm[0] = True
    assert client.get("/readyz").get_json() == {"status": "ready"}


# ---------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--listen", "nowhere"], "--listen"),
        (["--workers", "many"], "--workers"),
        (["--workers", "0"], "--workers"),
        (["--scorer-timeout", "5"], "--scorer-timeout"),
        (["--policy-server", "no-port"], "--policy-server"),
        (["--kubeconfig", "/does/not/exist"], "--kubeconfig"),
        (["--log-level", "loud"], "--log-level"),
        (["--cache", "poll"], "--cache"),
        (["--max-cache-age", "1"], "--max-cache-age"),
        (["--mirror", ""], "--mirror"),
        (["--mirror-sync", "0"], "--mirror-sync"),
        (["--mirror-sync", "nan"], "--mirror-sync"),
        (["--frobnicate"], "--frobnicate"),
    ],
)
def test_bad_flags_exit_2_with_one_line_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.scheduler_extender.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from services.scheduler_extender.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_keep_alive_outlives_the_schedulers_idle_connections() -> None:
    """gunicorn must not close a connection kube-scheduler may still reuse (Go's default
    transport keeps idle connections 90 s), or a POST sent as it closes is lost."""
    from services.scheduler_extender.__main__ import gunicorn_options
    from services.scheduler_extender.config import ExtenderConfig

    assert gunicorn_options(ExtenderConfig())["keepalive"] > 90
