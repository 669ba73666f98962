"""The serving loader and the learned policy: refuse what does not fit, act only within masks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from ecrl import actions
from ecrl.envelope import EnvelopeConfig, action_masks, clamp
from ecrl.errors import InvalidRequest, Permanent
from ecrl.policies.base import Observation, PodMetrics, Policy
from ecrl.policies.learned import LearnedPolicy
from ecrl.policy_model import (
    PolicyModel,
    PolicyModelError,
    SchemaMismatch,
    builtin_policy_path,
    load_policy_model,
)
from ecrl.schema import SCHEMA_HASH, SCHEMA_VERSION, STATE_DIM, encode

from .policies.observations import make_observation

torch = pytest.importorskip("torch")  # building a model to load needs the exporter

from ecrl.rl.agent import Agent  # noqa: E402
from ecrl.rl.export import export_onnx  # noqa: E402

MASK_DIM = sum(actions.NVEC)
REPLICAS_UP_2 = actions.OFFSETS[0] + actions.HEADS[0].steps.index(2)
GIB = 1024**3


def agent_preferring_replicas_up_2(seed: int = 0) -> Agent:
    """An Agent whose actor wants +2 replicas above everything else (logit +1000)."""
    torch.manual_seed(seed)
    agent = Agent(STATE_DIM, actions.NVEC)
    for _ in range(2):
        agent.obs_rms.update(torch.randn(128, STATE_DIM) * 20.0 + 3.0)
    with torch.no_grad():
        agent.actor[-1].bias[REPLICAS_UP_2] = 1000.0
    return agent


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "rl-policy.onnx"
    export_onnx(agent_preferring_replicas_up_2(), path, {"seed": 0})
    return path


@pytest.fixture(scope="module")
def model(policy_file: Path) -> PolicyModel:
    return PolicyModel.load(policy_file)


def with_metadata(src: Path, dst: Path, changes: dict[str, str | None]) -> Path:
    """A copy of ``src`` with metadata props replaced (value) or removed (None)."""
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    for key, value in changes.items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(dst))
    return dst


def pod(name: str, cpu: float = 0.6) -> PodMetrics:
    return PodMetrics(
        name=name,
        ready=True,
        start_time_s=0.0,
        ready_time_s=20.0,
        cpu_usage_cores=cpu,
        queue_time_avg_s=0.01,
        concurrency=2.0,
        request_rate_rps=20.0,
        memory_usage_bytes=1.2 * GIB,
    )


def busy_observation(**overrides: object) -> Observation:
    """Two ready pods under load; room to scale up unless overridden."""
    fields: dict[str, object] = {
        "request_rate_rps": 40.0,
        "p95_latency_s": 0.15,
        "success_ratio": 1.0,
        "gpu_util_ratio": 0.7,
        "vram_used_bytes": 3 * GIB,
        "vram_free_bytes": 10 * GIB,
        "node_cpu_free_cores": 4.0,
        "node_memory_free_bytes": 8 * GIB,
        "last_change_age_s": 120.0,
        "free_gpu_slots": 4,
    }
    fields.update(overrides)
    return make_observation(100.0, [pod("a"), pod("b")], **fields)


def valid_batch(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    states = np.stack([encode(busy_observation())] * n)
    return states, np.ones((n, MASK_DIM), dtype=bool)


# ------------------------------------------------------------------------------ loading
def test_load_exposes_info_with_file_hash_schema_and_action_space(
    model: PolicyModel, policy_file: Path
) -> None:
    info = model.info
    assert info["path"] == str(policy_file)
    assert info["sha256"] == hashlib.sha256(policy_file.read_bytes()).hexdigest()
    assert (info["schema_version"], info["schema_hash"]) == (SCHEMA_VERSION, SCHEMA_HASH)
    assert info["nvec"] == list(actions.NVEC)
    assert info["action_spec"] == json.loads(actions.spec_json())
    assert len(info["train_config_hash"]) == 16
    json.dumps(info)
    assert load_policy_model(policy_file).sha256 == model.sha256


def test_model_with_other_schema_hash_is_refused_naming_both_hashes(
    policy_file: Path, tmp_path: Path
) -> None:
    stale = with_metadata(
        policy_file,
        tmp_path / "stale.onnx",
        {"ecrl.schema_hash": "0123456789abcdef", "ecrl.schema_version": "ecrl.state/v0"},
    )
    with pytest.raises(SchemaMismatch) as info:
        PolicyModel.load(stale)
    message = str(info.value)
    assert isinstance(info.value, Permanent)
    for part in ("0123456789abcdef", SCHEMA_HASH, "ecrl.state/v0", SCHEMA_VERSION, "retrain"):
        assert part in message


def test_model_is_refused_when_build_expects_another_schema_hash(policy_file: Path) -> None:
    with pytest.raises(SchemaMismatch, match="ffffffffffffffff"):
        PolicyModel.load(policy_file, expected_schema_hash="ffffffffffffffff")


def test_model_without_schema_hash_is_refused(policy_file: Path, tmp_path: Path) -> None:
    bare = with_metadata(policy_file, tmp_path / "bare.onnx", {"ecrl.schema_hash": None})
    with pytest.raises(SchemaMismatch, match="no schema hash"):
        PolicyModel.load(bare)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ecrl.kind": "placement-scorer"}, "not a scaling policy"),
        ({"ecrl.kind": None}, "not a scaling policy"),
        ({"ecrl.nvec": "[5, 3, 3]"}, "action heads"),
        ({"ecrl.nvec": "not json"}, "action heads"),
    ],
)
def test_model_of_other_kind_or_action_space_is_refused(
    policy_file: Path, tmp_path: Path, changes: dict[str, str | None], reason: str
) -> None:
    odd = with_metadata(policy_file, tmp_path / "odd.onnx", changes)
    with pytest.raises(PolicyModelError, match=reason):
        PolicyModel.load(odd)


def test_missing_or_corrupt_file_is_refused_as_permanent(tmp_path: Path) -> None:
    with pytest.raises(PolicyModelError, match="cannot read"):
        PolicyModel.load(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    with pytest.raises(PolicyModelError, match="onnxruntime cannot load"):
        PolicyModel.load(junk)


def test_builtin_policy_path_points_into_the_package() -> None:
    path = Path(builtin_policy_path())
    assert path.name == "rl-policy.onnx" and path.parent.name == "models"
    assert path.parent.parent.name == "ecrl"
    with pytest.raises(ValueError, match="bare file stem"):
        builtin_policy_path("../elsewhere")


# ------------------------------------------------------------------------------ inputs
def test_act_returns_one_int64_step_index_per_head(model: PolicyModel) -> None:
    states, masks = valid_batch(4)
    choice = model.act(states, masks)
    assert choice.shape == (4, len(actions.NVEC)) and choice.dtype == np.int64
    assert (choice < np.array(actions.NVEC)).all() and (choice >= 0).all()
    raw = model.decide_raw(states, masks.astype(np.int64))
    assert raw.logits.shape == (4, MASK_DIM) and raw.value.shape == (4, 1)


def _nan(s: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s[1, 2] = np.nan
    return s, m


def _inf(s: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s[0, 0] = -np.inf
    return s, m


def _empty_head(s: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m[2, actions.OFFSETS[3] : actions.OFFSETS[3] + actions.NVEC[3]] = False
    return s, m


Corrupt = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_nan, "row 1 feature .* is nan"),
        (_inf, "row 0 feature .* is -inf"),
        (lambda s, m: (s[:, :-1], m), "states: shape"),
        (lambda s, m: (s[0], m), "states: shape"),
        (lambda s, m: (s[:0], m[:0]), "states: shape"),
        (lambda s, m: (np.full((3, STATE_DIM), "x"), m), "not a numeric array"),
        (lambda s, m: (s, m[:, :-1]), "masks: shape"),
        (lambda s, m: (s, m[:2]), "masks: shape"),
        (lambda s, m: (s, m.astype(float) * 2), "values other than 0/1"),
        (_empty_head, "row 2 allows no step of head 'cpu_request'"),
    ],
)
def test_invalid_inputs_raise_invalid_request_with_reason(
    model: PolicyModel, corrupt: Corrupt, reason: str
) -> None:
    states, masks = corrupt(*valid_batch(3))
    with pytest.raises(InvalidRequest, match=reason):
        model.act(states, masks)


# ------------------------------------------------------------------------------ policy
def test_learned_policy_implements_the_policy_protocol(model: PolicyModel) -> None:
    policy = LearnedPolicy(model, period_s=10.0)
    assert isinstance(policy, Policy)
    assert (policy.name, policy.period_s) == ("rl", 10.0)
    policy.reset()


def test_learned_policy_decision_is_left_unchanged_by_clamp(model: PolicyModel) -> None:
    obs = busy_observation()
    action = LearnedPolicy(model).decide(obs)
    assert action.desired_replicas == obs.desired_replicas + 2  # what the actor prefers
    assert clamp(obs, action) == (action, [])
    assert action.reason.startswith("rl: replicas +2")


@pytest.mark.parametrize(
    "blocked",
    [
        {"max_replicas": 2},
        {"free_gpu_slots": 1},
        {"free_gpu_slots": 0, "last_change_age_s": None},
    ],
)
def test_masked_replica_step_is_never_chosen_even_when_the_actor_prefers_it(
    model: PolicyModel, blocked: dict[str, object]
) -> None:
    obs = busy_observation(**blocked)
    assert not action_masks(obs)[REPLICAS_UP_2]
    for acting in (model, agent_preferring_replicas_up_2()):
        action = LearnedPolicy(acting).decide(obs)
        step = (action.desired_replicas or obs.desired_replicas) - obs.desired_replicas
        assert step < 2
        assert clamp(obs, action) == (action, [])
        assert "envelope cut" not in action.reason


class UnmaskedModel:
    """A faulty model that ignores the mask and always asks for +2 replicas."""

    def act(self, states: np.ndarray, masks: np.ndarray) -> np.ndarray:
        choice = np.array([actions.NOOP] * len(states), dtype=np.int64)
        choice[:, 0] = actions.HEADS[0].steps.index(2)
        return choice


def test_envelope_clamps_a_faulty_model_and_names_the_cut_in_the_reason() -> None:
    obs = busy_observation(free_gpu_slots=1)
    action = LearnedPolicy(UnmaskedModel(), EnvelopeConfig()).decide(obs)
    assert action.desired_replicas == obs.desired_replicas + 1
    assert "envelope cut" in action.reason and "not enough free GPU slots" in action.reason


def test_learned_policy_load_reads_an_onnx_file(policy_file: Path) -> None:
    policy = LearnedPolicy.load(policy_file, name="rl-test")
    assert policy.name == "rl-test"
    assert not policy.decide(busy_observation()).is_noop()
