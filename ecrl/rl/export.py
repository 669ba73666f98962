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
from google.protobuf.message import DecodeError
from onnx import numpy_helper

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


class _Graph:
    """An exported policy graph read back: its constants, and who produces or reads what."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.nodes = list(proto.graph.node)
        self.weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)

    def constant(self, name: str) -> np.ndarray:
        """An initializer, through any Identity nodes in front of it."""
        while name not in self.weights and self._made_by(name, "Identity"):
            name = self.producer[name].input[0]
        return self.weights[name]

    def _made_by(self, name: str, op: str) -> bool:
        return name in self.producer and self.producer[name].op_type == op

    def _read_by(self, name: str, op: str) -> list[onnx.NodeProto]:
        return [n for n in self.readers.get(name, []) if n.op_type == op]

    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """The mean and standard deviation of ``(state - mean) / std``."""
        sub = next(n for n in self.nodes if n.op_type == "Sub" and n.input[0] == STATE_INPUT)
        div = self._read_by(sub.output[0], "Div")[0]
        return self.constant(sub.input[1]), self.constant(div.input[1])

    def mlps(self) -> dict[str, np.ndarray]:
        """``actor.*`` and ``critic.*`` parameters, found by structure: each MLP is a chain of
        Gemm → Tanh → Gemm … starting at a clipped normalization (torch shares initializers
        of equal value, so their names do not say which layer they belong to)."""
        params: dict[str, np.ndarray] = {}
        firsts = [
            n for n in self.nodes if n.op_type == "Gemm" and self._made_by(n.input[0], "Clip")
        ]
        for gemm in firsts:
            chain = [gemm]
            while tanh := self._read_by(chain[-1].output[0], "Tanh"):
                chain.append(self._read_by(tanh[0].output[0], "Gemm")[0])
            net = "critic" if self.constant(chain[-1].input[1]).shape[0] == 1 else "actor"
            for layer, node in zip((0, 2, 4), chain, strict=True):
                params[f"{net}.{layer}.weight"] = self.constant(node.input[1])
                params[f"{net}.{layer}.bias"] = self.constant(node.input[2])
        return params


def agent_of_onnx(path: str | Path) -> tuple[Agent, dict[str, object]]:
    """The agent an exported policy holds (its weights and normalization) and its training
    config, for :func:`reexport_onnx`. ExportError when the file is not an ECRL policy."""
    try:
        proto = onnx.load(str(path))
    except (OSError, DecodeError) as exc:
        raise ExportError(f"{path}: cannot read it as ONNX ({exc})") from exc
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("ecrl.kind") != KIND or "ecrl.train_config" not in meta:
        raise ExportError(f"{path}: not an ECRL scaling policy (no {KIND!r} metadata)")
    graph = _Graph(proto)
    try:
        mean, std = graph.normalization()
        params = graph.mlps()
        agent = Agent(STATE_DIM, actions.NVEC, hidden=int(params["actor.0.weight"].shape[0]))
        wanted = [k for k in agent.state_dict() if k.startswith(("actor.", "critic."))]
        agent.load_state_dict({k: torch.from_numpy(params[k].copy()) for k in wanted}, strict=False)
    except (StopIteration, IndexError, KeyError, ValueError, RuntimeError) as exc:
        raise ExportError(f"{path}: not a graph this exporter wrote ({exc!r})") from exc
    with torch.no_grad():  # forward computes sqrt(var + 1e-8) in float64, then casts to float32
        agent.obs_rms.mean.copy_(torch.from_numpy(mean.astype(np.float64)))
        agent.obs_rms.var.copy_(torch.from_numpy(std.astype(np.float64) ** 2 - 1e-8))
    return agent.eval(), json.loads(meta["ecrl.train_config"])


def reexport_onnx(src: str | Path, dst: str | Path) -> ExportReport:
    """Write the policy at ``src`` again with this build's graph: the same weights,
    normalization and metadata, so the same answers (checked: ExportError unless every greedy
    action, logit and value equals the old file's on the parity batch)."""
    agent, train_config = agent_of_onnx(src)
    states, masks = parity_inputs(agent)
    old = PolicyModel.load(src).decide_raw(states, masks)  # before ``dst`` may replace ``src``
    report = export_onnx(agent, dst, train_config)
    new = PolicyModel.load(dst).decide_raw(states, masks)
    for name in ("action", "logits", "value"):
        if not np.array_equal(getattr(old, name), getattr(new, name)):
            raise ExportError(f"{dst}: {name} differs from {src}; the re-export changed answers")
    return report
