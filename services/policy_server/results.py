"""Plain-data requests and answers of the policy server (no gRPC, no onnxruntime).

Shared by the server core (:mod:`.decisions`) and the client (:mod:`.client`), so callers
such as the actuator get the same types whether they ask over gRPC or in-process.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class Fallback(enum.Enum):
    """Why answers come from the fallback (values are the metrics' ``reason`` labels)."""

    NONE = ""
    NO_MODEL = "no_model"
    SCHEMA_MISMATCH = "schema_mismatch"
    MODEL_ERROR = "model_error"


@dataclass(frozen=True, slots=True)
class StateInput:
    """An encoded state as received (StateVector's fields that matter to a decision)."""

    schema_version: str
    schema_hash: str
    values: Sequence[float]


@dataclass(frozen=True, slots=True)
class Decision:
    """One step index per head (:data:`ecrl.actions.HEADS` order) and who decided."""

    action: tuple[int, ...]
    value: float
    policy_version: str
    fallback: Fallback


@dataclass(frozen=True, slots=True)
class NodeScores:
    """Raw scores and 0–10 priorities per node (request order) and who scored."""

    names: tuple[str, ...]
    scores: tuple[float, ...]
    priorities: tuple[int, ...]
    scorer_version: str
    fallback: Fallback


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """What GetPolicyInfo reports."""

    schema_version: str
    schema_hash: str
    policy_version: str
    policy_path: str
    fallback: Fallback
    fallback_detail: str
    node_schema_version: str
    scorer_version: str
    heads: tuple[str, ...]
    head_sizes: tuple[int, ...]
