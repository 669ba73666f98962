"""The exported scaling policy behind onnxruntime: load, check, validate inputs, act.

One loader for every consumer of ``rl-policy.onnx`` — the twin's :class:`LearnedPolicy`, the
export's own parity check and the policy server — so a file refused in one place is refused
everywhere. No torch here: serving needs only onnxruntime and numpy.

Loading refuses a file whose metadata does not match this build (state schema hash, action
space, kind) with a :class:`~ecrl.errors.Permanent` error: a policy trained on another feature
list would otherwise read the wrong numbers and act confidently on them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import (
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    NoSuchFile,
)

from ecrl.actions import HEADS, NVEC, OFFSETS
from ecrl.errors import InvalidRequest, Permanent
from ecrl.schema import FEATURE_NAMES, SCHEMA_HASH, SCHEMA_VERSION, STATE_DIM

KIND = "scaling-policy"
"""``ecrl.kind`` of a scaling policy (placement scorers carry another kind)."""
STATE_INPUT = "state"
MASK_INPUT = "action_mask"
OUTPUTS = ("action", "logits", "value")
MASK_DIM = sum(NVEC)
MODELS_DIR = Path(__file__).parent / "models"
_ORT_LOAD_ERRORS = (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile)


class PolicyModelError(Permanent):
    """The file is not a scaling policy this build can serve (retrying cannot fix it)."""


class SchemaMismatch(PolicyModelError):
    """The policy was trained on another state schema than this build encodes."""


class RawDecision(NamedTuple):
    """Everything the graph computes for a batch (the server returns logits and value too)."""

    action: np.ndarray
    """int64 [N, heads]: the greedy step index per head."""
    logits: np.ndarray
    """float32 [N, sum(NVEC)]: masked logits (forbidden entries at −1e8)."""
    value: np.ndarray
    """float32 [N, 1]: the critic's estimate (for logs; not used to act)."""


def builtin_policy_path(name: str = "rl-policy") -> str:
    """Path of a policy shipped in the package (``ecrl/models/<name>.onnx``; may not exist yet)."""
    if not name or Path(name).name != name:
        raise ValueError(f"builtin policy name {name!r}: must be a bare file stem, not a path")
    return str(MODELS_DIR / f"{name}.onnx")


def _open_session(blob: bytes, path: str) -> ort.InferenceSession:
    """One-thread CPU session: serving a tiny MLP over loopback is latency-bound, not compute."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: library code stays quiet
    try:
        return ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    except _ORT_LOAD_ERRORS as exc:
        raise PolicyModelError(f"{path}: onnxruntime cannot load it: {exc}") from exc


def _check_metadata(meta: dict[str, str], path: str, expected_schema_hash: str) -> None:
    """Refuse a file made for another kind, state schema or action space (names both sides)."""
    kind = meta.get("ecrl.kind")
    if kind != KIND:
        raise PolicyModelError(
            f"{path}: ecrl.kind is {kind!r}, not {KIND!r}; this file is not a scaling policy "
            "exported by ecrl.rl.export"
        )
    model_hash = meta.get("ecrl.schema_hash")
    model_version = meta.get("ecrl.schema_version", "<unknown version>")
    if model_hash != expected_schema_hash:
        found = "no schema hash" if model_hash is None else f"{model_version} (hash {model_hash})"
        raise SchemaMismatch(
            f"{path}: policy was trained on state schema {found}, but this ECRL build encodes "
            f"{SCHEMA_VERSION} and expects hash {expected_schema_hash}; retrain the policy "
            "(`ecrl train`) or use the ECRL release that matches the policy's schema"
        )
    try:
        nvec = json.loads(meta.get("ecrl.nvec", "null"))
    except json.JSONDecodeError:
        nvec = None
    if nvec != list(NVEC):
        raise PolicyModelError(
            f"{path}: action heads {nvec} differ from this build's {list(NVEC)} "
            "(ecrl.actions changed); retrain the policy or use the matching release"
        )


def _check_io(session: ort.InferenceSession, path: str) -> None:
    """The graph's inputs and outputs are the ones the export writes (names and widths)."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    want = {STATE_INPUT: STATE_DIM, MASK_INPUT: MASK_DIM}
    for name, width in want.items():
        shape = inputs.get(name)
        if shape is None or len(shape) != 2 or shape[1] != width:
            raise PolicyModelError(f"{path}: input {name!r} is {shape}, expected [batch, {width}]")
    if set(inputs) != set(want) or outputs != list(OUTPUTS):
        raise PolicyModelError(
            f"{path}: graph has inputs {sorted(inputs)} and outputs {outputs}, "
            f"expected {sorted(want)} and {list(OUTPUTS)}"
        )


def _as_states(states: Any) -> np.ndarray:
    try:
        x = np.asarray(states, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"states: not a numeric array ({exc})") from exc
    if x.ndim != 2 or x.shape[1] != STATE_DIM or x.shape[0] == 0:
        raise InvalidRequest(f"states: shape {x.shape}, expected [N ≥ 1, {STATE_DIM}]")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        row, col = (int(v) for v in bad[0])
        raise InvalidRequest(
            f"states: row {row} feature {FEATURE_NAMES[col]!r} is {x[row, col]} "
            f"({len(bad)} non-finite values); send 0 with the *_missing flag instead"
        )
    return x


def _as_masks(masks: Any, n: int) -> np.ndarray:
    m = np.asarray(masks)
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.number) or not np.isin(m, (0, 1)).all():
            raise InvalidRequest(f"masks: dtype {m.dtype} with values other than 0/1")
        m = m.astype(bool)
    if m.shape != (n, MASK_DIM):
        raise InvalidRequest(f"masks: shape {m.shape}, expected [{n}, {MASK_DIM}] (one per state)")
    for head, offset, width in zip(HEADS, OFFSETS, NVEC, strict=True):
        empty = np.flatnonzero(~m[:, offset : offset + width].any(axis=1))
        if empty.size:
            raise InvalidRequest(
                f"masks: row {int(empty[0])} allows no step of head {head.name!r} "
                "(the no-op must always be allowed)"
            )
    return m


@dataclass(frozen=True, eq=False)
class PolicyModel:
    """A loaded, checked scaling policy; :meth:`act` is what a policy calls every tick."""

    path: str
    sha256: str
    metadata: dict[str, str]
    session: ort.InferenceSession

    @classmethod
    def load(cls, path: str | Path, expected_schema_hash: str = SCHEMA_HASH) -> PolicyModel:
        """Open ``path`` and refuse it unless kind, schema hash, action heads and I/O match."""
        name = str(path)
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise PolicyModelError(f"{name}: cannot read the policy file: {exc}") from exc
        session = _open_session(blob, name)
        meta = dict(session.get_modelmeta().custom_metadata_map)
        _check_metadata(meta, name, expected_schema_hash)
        _check_io(session, name)
        return cls(name, hashlib.sha256(blob).hexdigest(), meta, session)

    def decide_raw(self, states: Any, masks: Any) -> RawDecision:
        """Validated inputs through the graph: greedy action, masked logits and value."""
        x = _as_states(states)
        m = _as_masks(masks, x.shape[0])
        action, logits, value = self.session.run(list(OUTPUTS), {STATE_INPUT: x, MASK_INPUT: m})
        return RawDecision(np.asarray(action), np.asarray(logits), np.asarray(value))

    def act(self, states: Any, masks: Any) -> np.ndarray:
        """Greedy step index per head, int64 [N, heads] (raises InvalidRequest on bad input)."""
        return self.decide_raw(states, masks).action

    @property
    def info(self) -> dict[str, Any]:
        """What the model is, as plain data (GetPolicyInfo, logs, experiment metadata)."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "schema_version": self.metadata.get("ecrl.schema_version"),
            "schema_hash": self.metadata.get("ecrl.schema_hash"),
            "train_config_hash": self.metadata.get("ecrl.train_config_hash"),
            "nvec": json.loads(self.metadata["ecrl.nvec"]),
            "action_spec": json.loads(self.metadata.get("ecrl.action_spec", "null")),
        }


def load_policy_model(path: str | Path, expected_schema_hash: str = SCHEMA_HASH) -> PolicyModel:
    """Same as :meth:`PolicyModel.load` (a function for factories and registries)."""
    return PolicyModel.load(path, expected_schema_hash)
