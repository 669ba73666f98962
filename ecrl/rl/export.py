"""Trained :class:`~ecrl.rl.agent.Agent` → ONNX scaling policy, stamped and parity-checked.

The file carries everything a server needs to refuse it when it does not fit: the state schema
(version, hash, feature list), the action space and the training config's hash, as ONNX
``metadata_props``. Observation normalization is part of the graph (the Agent's ``forward``
applies it), so the server feeds raw :func:`ecrl.schema.encode` vectors.

After writing, the file is loaded with the serving loader (:class:`ecrl.policy_model.PolicyModel`)
and compared with torch on a batch of states and random masks: an export that changes what the
policy does is an error, not a warning.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from ecrl import actions
from ecrl.errors import Permanent
from ecrl.onnx_export import export_graph, stamp_metadata
from ecrl.policy_model import KIND, MASK_DIM, MASK_INPUT, OUTPUTS, STATE_INPUT, PolicyModel
from ecrl.rl.agent import Agent
from ecrl.schema import SCHEMA_HASH, SCHEMA_VERSION, STATE_DIM, describe

MIN_OPSET = 17
PARITY_TOL = 1e-5
"""Largest |onnxruntime − torch| accepted on allowed logits and value (FP32 MLP: ~1e-7 typical)."""
PARITY_BATCH = 64


class ExportError(Permanent):
    """The exported graph is invalid or does not compute what the torch agent computes."""


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely it matches torch (saved in the training result)."""

    path: str
    opset: int
    bytes: int
    max_abs_diff: float
    actions_equal: bool
    schema_hash: str
    train_config_hash: str


def config_hash(train_config: Mapping[str, object]) -> str:
    """SHA-256 (first 16 hex) of the config as sorted JSON (same as ``TrainConfig.config_hash``)."""
    return hashlib.sha256(_config_json(train_config).encode()).hexdigest()[:16]


def _config_json(train_config: Mapping[str, object]) -> str:
    return json.dumps(dict(train_config), sort_keys=True, default=str)


def metadata(train_config: Mapping[str, object]) -> dict[str, str]:
    """The ``ecrl.*`` metadata props :class:`~ecrl.policy_model.PolicyModel` checks at load."""
    return {
        "ecrl.kind": KIND,
        "ecrl.schema_version": SCHEMA_VERSION,
        "ecrl.schema_hash": SCHEMA_HASH,
        "ecrl.schema": json.dumps(describe()),
        "ecrl.action_spec": actions.spec_json(),
        "ecrl.nvec": json.dumps(list(actions.NVEC)),
        "ecrl.train_config_hash": config_hash(train_config),
        "ecrl.train_config": _config_json(train_config),
    }


def _write_graph(agent: Agent, path: Path, opset: int) -> None:
    """Legacy TorchScript exporter (the dynamo one needs onnxscript, not a dependency)."""
    example = (torch.zeros(2, STATE_DIM), torch.ones(2, MASK_DIM, dtype=torch.bool))
    dynamic = {name: {0: "batch"} for name in (STATE_INPUT, MASK_INPUT, *OUTPUTS)}
    export_graph(agent, example, path, [STATE_INPUT, MASK_INPUT], OUTPUTS, dynamic, opset)


def _stamp(path: Path, train_config: Mapping[str, object]) -> int:
    """Add the metadata, run the full checker, save; returns the graph's default-domain opset."""
    try:
        proto = stamp_metadata(path, metadata(train_config))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: exported graph fails onnx.checker: {exc}") from exc
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def parity_inputs(
    agent: Agent, sample_states: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """States around the agent's observed statistics (±3 σ) plus samples; masks keep no-ops."""
    rng = np.random.default_rng(seed)
    mean = agent.obs_rms.mean.detach().cpu().numpy()
    std = np.sqrt(agent.obs_rms.var.detach().cpu().numpy())
    states = rng.normal(mean, 3.0 * std, size=(PARITY_BATCH, STATE_DIM)).astype(np.float32)
    if sample_states is not None:
        extra = np.asarray(sample_states, dtype=np.float32).reshape(-1, STATE_DIM)
        states = np.concatenate([states, extra])
    masks = rng.random((len(states), MASK_DIM)) < 0.5
    masks[:, [o + n for o, n in zip(actions.OFFSETS, actions.NOOP, strict=True)]] = True
    return states, masks


def _parity(
    agent: Agent, model: PolicyModel, states: np.ndarray, masks: np.ndarray
) -> tuple[float, bool]:
    """Max |ORT − torch| over allowed logits and value; whether greedy actions are identical."""
    with torch.no_grad():
        ref_action, ref_logits, ref_value = agent(torch.from_numpy(states), torch.from_numpy(masks))
    got = model.decide_raw(states, masks)
    logit_diff = np.abs(got.logits - ref_logits.numpy())[masks]
    worst = max(float(logit_diff.max()), float(np.abs(got.value - ref_value.numpy()).max()))
    single = model.act(states[:1], masks[:1])  # batch of one: the dynamic axis works
    same = bool(np.array_equal(got.action, ref_action.numpy()))
    return worst, same and bool(np.array_equal(single, ref_action.numpy()[:1]))


def export_onnx(
    agent: Agent,
    path: str | Path,
    train_config: Mapping[str, object],
    opset: int = MIN_OPSET,
    sample_states: np.ndarray | None = None,
) -> ExportReport:
    """Write ``agent`` as a stamped ONNX policy at ``path``; raise ExportError if parity fails.

    ``sample_states`` (e.g. real reset states of the training env) join the random parity batch.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset: {opset} is below the minimum {MIN_OPSET}")
    if (agent.obs_dim, agent.nvec) != (STATE_DIM, actions.NVEC):
        raise ExportError(
            f"agent is ({agent.obs_dim}, {agent.nvec}), this build needs "
            f"({STATE_DIM}, {actions.NVEC}): it was built for another schema or action space"
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    serving = copy.deepcopy(agent).cpu().eval()  # the caller's agent keeps its device and mode
    _write_graph(serving, out, opset)
    written_opset = _stamp(out, train_config)
    model = PolicyModel.load(out)
    worst, same = _parity(serving, model, *parity_inputs(serving, sample_states))
    if not worst <= PARITY_TOL:
        raise ExportError(
            f"{out}: onnxruntime differs from torch by {worst:.3g} (> {PARITY_TOL:g}); "
            "the graph does not compute what was trained"
        )
    return ExportReport(
        path=str(out),
        opset=written_opset,
        bytes=out.stat().st_size,
        max_abs_diff=worst,
        actions_equal=same,
        schema_hash=SCHEMA_HASH,
        train_config_hash=model.metadata["ecrl.train_config_hash"],
    )
