"""A small client of the policy server for the actuator and the scheduler extender.

Every call carries a deadline; failures come back as typed errors so a caller decides its
fallback in one ``except``: :class:`PolicyUnavailable` (unreachable, NOT_SERVING, too slow —
retry later, act on the heuristic meanwhile), :class:`InvalidRequest` (the caller sent a bad
state) and :class:`PolicyServerError` (anything else the server answered).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ecrl.errors import InvalidRequest, Permanent, Temporary
from ecrl.placement import NODE_SCHEMA_VERSION, NodeState, PodRequest
from ecrl.schema import SCHEMA_HASH, SCHEMA_VERSION
from ecrl.v1 import policy_pb2, policy_pb2_grpc

from . import convert
from .results import Decision, NodeScores, PolicyInfo

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
RETRY_LATER = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
"""Codes that may heal by themselves (gRPC's own retry guidance)."""


class PolicyUnavailable(Temporary):
    """The server is unreachable, not serving or too slow; fall back and retry later."""


class PolicyServerError(Permanent):
    """The server answered with an error retrying will not fix (a bug, or mTLS refused)."""


@dataclass(frozen=True)
class TlsOptions:
    """Client TLS: trust ``ca_path``; present ``cert_path`` + ``key_path`` for mutual TLS."""

    ca_path: str
    cert_path: str | None = None
    key_path: str | None = None
    server_name: str | None = None
    """Name to check the server certificate against, when it differs from the target host."""

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_path),
            private_key=read(self.key_path),
            certificate_chain=read(self.cert_path),
        )


RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
"""gRPC's default backoff grows to 120 s: after a policy-server restart the controller would
keep falling back for minutes. Capped at 1 s, a restarted server is used within a tick."""


def _error(exc: grpc.RpcError) -> Exception:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    message = f"policy server: {code.name}: {detail}"
    if code in RETRY_LATER:
        return PolicyUnavailable(message)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequest(message)
    return PolicyServerError(message)


class PolicyClient:
    """``decide``, ``score_nodes``, ``info`` and ``serving`` against one policy server."""

    def __init__(self, target: str, timeout_s: float = 0.5, tls: TlsOptions | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        options = list(RECONNECT)
        if tls is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self.channel = grpc.secure_channel(target, tls.credentials(), options=options)
        self.stub = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def decide(
        self,
        state_values: Sequence[float],
        mask: Sequence[bool] = (),
        schema_hash: str = SCHEMA_HASH,
        schema_version: str = SCHEMA_VERSION,
        tick: int = 0,
    ) -> Decision:
        """One decision for an encoded state (``ecrl.schema.encode``); empty mask = all allowed."""
        request = convert.decide_request(state_values, mask, schema_hash, schema_version, tick)
        try:
            response = self.stub.Decide(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return convert.decision_of(response)

    def score_nodes(
        self,
        nodes: Sequence[NodeState],
        pod: PodRequest,
        node_schema_version: str = NODE_SCHEMA_VERSION,
    ) -> NodeScores:
        """Scores and 0–10 priorities for the candidate nodes of one pending pod."""
        request = convert.score_request(nodes, pod, node_schema_version)
        try:
            response = self.stub.ScoreNodes(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return convert.node_scores_of(response)

    def info(self) -> PolicyInfo:
        """Versions, schema hashes and fallback state of the server."""
        try:
            response = self.stub.GetPolicyInfo(
                policy_pb2.GetPolicyInfoRequest(), timeout=self.timeout_s
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return convert.info_of(response)

    def serving(self) -> bool:
        """grpc.health.v1 says the policy service is SERVING (False when unreachable)."""
        try:
            response = self.health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=self.timeout_s
            )
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
