"""Protobuf messages ↔ plain data, for the server and its client (one place, both ways)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ecrl.placement import NodeColumns, NodeState, PodRequest
from ecrl.schema import SCHEMA_HASH, SCHEMA_VERSION
from ecrl.v1 import policy_pb2, state_pb2

from .results import Decision, Fallback, NodeScores, PolicyInfo, StateInput

_TO_PROTO = {
    Fallback.NONE: policy_pb2.FALLBACK_REASON_UNSPECIFIED,
    Fallback.NO_MODEL: policy_pb2.FALLBACK_REASON_NO_MODEL,
    Fallback.SCHEMA_MISMATCH: policy_pb2.FALLBACK_REASON_SCHEMA_MISMATCH,
    Fallback.MODEL_ERROR: policy_pb2.FALLBACK_REASON_MODEL_ERROR,
}
_FROM_PROTO = {v: k for k, v in _TO_PROTO.items()}


def fallback_to_proto(reason: Fallback) -> int:
    return _TO_PROTO[reason]


def fallback_from_proto(value: int) -> Fallback:
    """Unknown enum numbers (a newer server) read as a model error: a fallback of some kind."""
    return _FROM_PROTO.get(value, Fallback.MODEL_ERROR)


# ----------------------------------------------------------------------------------- Decide
def decide_request(
    state_values: Sequence[float],
    mask: Sequence[bool] = (),
    schema_hash: str = SCHEMA_HASH,
    schema_version: str = SCHEMA_VERSION,
    tick: int = 0,
) -> policy_pb2.DecideRequest:
    """The request for an encoded state (``ecrl.schema.encode``); empty mask = all allowed."""
    state = state_pb2.StateVector(
        schema_version=schema_version,
        schema_hash=schema_hash,
        values=[float(v) for v in state_values],
        tick=tick,
    )
    return policy_pb2.DecideRequest(state=state, action_mask=[bool(m) for m in mask])


def state_input(request: policy_pb2.DecideRequest) -> StateInput:
    s = request.state
    return StateInput(s.schema_version, s.schema_hash, s.values)


def decide_response(decision: Decision, heads: Sequence[str]) -> policy_pb2.DecideResponse:
    return policy_pb2.DecideResponse(
        action=decision.action,
        heads=heads,
        value=decision.value,
        policy_version=decision.policy_version,
        fallback_reason=fallback_to_proto(decision.fallback),
    )


def decision_of(response: policy_pb2.DecideResponse) -> Decision:
    return Decision(
        tuple(response.action),
        response.value,
        response.policy_version,
        fallback_from_proto(response.fallback_reason),
    )


# ------------------------------------------------------------------------------- ScoreNodes
def node_state(msg: policy_pb2.NodeState) -> NodeState:
    return NodeState(
        name=msg.name,
        gpu_count=msg.gpu_count,
        gpu_slots_total=msg.gpu_slots_total,
        gpu_slots_free=msg.gpu_slots_free,
        gpu_speed=msg.gpu_speed,
        gpu_util_ratio=msg.gpu_util_ratio if msg.HasField("gpu_util_ratio") else None,
        vram_free_ratio=msg.vram_free_ratio,
        cpu_allocatable_cores=msg.cpu_allocatable_cores,
        cpu_requested_cores=msg.cpu_requested_cores,
        memory_allocatable_bytes=msg.memory_allocatable_bytes,
        memory_requested_bytes=msg.memory_requested_bytes,
        replicas=msg.replicas,
    )


def node_message(node: NodeState) -> policy_pb2.NodeState:
    msg = policy_pb2.NodeState(
        name=node.name,
        gpu_count=node.gpu_count,
        gpu_slots_total=node.gpu_slots_total,
        gpu_slots_free=node.gpu_slots_free,
        gpu_speed=node.gpu_speed,
        vram_free_ratio=node.vram_free_ratio,
        cpu_allocatable_cores=node.cpu_allocatable_cores,
        cpu_requested_cores=node.cpu_requested_cores,
        memory_allocatable_bytes=node.memory_allocatable_bytes,
        memory_requested_bytes=node.memory_requested_bytes,
        replicas=node.replicas,
    )
    if node.gpu_util_ratio is not None:
        msg.gpu_util_ratio = node.gpu_util_ratio
    return msg


def score_request(
    nodes: Sequence[NodeState], pod: PodRequest, node_schema_version: str
) -> policy_pb2.ScoreNodesRequest:
    return policy_pb2.ScoreNodesRequest(
        node_schema_version=node_schema_version,
        pod_cpu_cores=pod.cpu_cores,
        pod_memory_bytes=pod.memory_bytes,
        nodes=[node_message(n) for n in nodes],
    )


def score_inputs(
    request: policy_pb2.ScoreNodesRequest,
) -> tuple[str, list[NodeState], PodRequest]:
    return (
        request.node_schema_version,
        [node_state(n) for n in request.nodes],
        PodRequest(request.pod_cpu_cores, request.pod_memory_bytes),
    )


def score_columns(
    request: policy_pb2.ScoreNodesRequest,
) -> tuple[str, NodeColumns, PodRequest]:
    """:func:`score_inputs` as columns: the server's fast path (no NodeState per node)."""
    msgs = request.nodes
    present = np.fromiter((m.HasField("gpu_util_ratio") for m in msgs), bool, len(msgs))
    return (
        request.node_schema_version,
        NodeColumns.read(msgs, present),
        PodRequest(request.pod_cpu_cores, request.pod_memory_bytes),
    )


def score_response(scores: NodeScores) -> policy_pb2.ScoreNodesResponse:
    return policy_pb2.ScoreNodesResponse(
        scores=[
            policy_pb2.NodeScore(name=n, score=s, priority=p)
            for n, s, p in zip(scores.names, scores.scores, scores.priorities, strict=True)
        ],
        scorer_version=scores.scorer_version,
        fallback_reason=fallback_to_proto(scores.fallback),
    )


def node_scores_of(response: policy_pb2.ScoreNodesResponse) -> NodeScores:
    return NodeScores(
        tuple(s.name for s in response.scores),
        tuple(s.score for s in response.scores),
        tuple(s.priority for s in response.scores),
        response.scorer_version,
        fallback_from_proto(response.fallback_reason),
    )


# ---------------------------------------------------------------------------- GetPolicyInfo
def info_response(info: PolicyInfo) -> policy_pb2.GetPolicyInfoResponse:
    return policy_pb2.GetPolicyInfoResponse(
        schema_version=info.schema_version,
        schema_hash=info.schema_hash,
        policy_version=info.policy_version,
        policy_path=info.policy_path,
        fallback_reason=fallback_to_proto(info.fallback),
        fallback_detail=info.fallback_detail,
        node_schema_version=info.node_schema_version,
        scorer_version=info.scorer_version,
        heads=info.heads,
        head_sizes=info.head_sizes,
    )


def info_of(response: policy_pb2.GetPolicyInfoResponse) -> PolicyInfo:
    return PolicyInfo(
        schema_version=response.schema_version,
        schema_hash=response.schema_hash,
        policy_version=response.policy_version,
        policy_path=response.policy_path,
        fallback=fallback_from_proto(response.fallback_reason),
        fallback_detail=response.fallback_detail,
        node_schema_version=response.node_schema_version,
        scorer_version=response.scorer_version,
        heads=tuple(response.heads),
        head_sizes=tuple(response.head_sizes),
    )
