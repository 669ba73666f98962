"""The actuator's tick over in-test fakes of the collector, policy server, cluster and Lease."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from ecrl import schema
from ecrl.actions import HEADS, NOOP
from ecrl.jsonsafe import finite as _finite
from ecrl.policies.base import Action, Observation, PodMetrics
from services.policy_server.client import PolicyUnavailable
from services.policy_server.results import Decision, Fallback
from services.scheduler_extender.actuator import __main__ as cli
from services.scheduler_extender.actuator.audit import AuditLog
from services.scheduler_extender.actuator.loop import Actuator, OpResult, TickSettings
from services.scheduler_extender.actuator.state import (
    Snapshot,
    StateUnavailable,
    observation_from_json,
)

from .policies.observations import make_observation

GIB = 1024**3
REPLICAS = next(i for i, h in enumerate(HEADS) if h.name == "replicas")


def busy_observation(**overrides) -> Observation:
    """Two ready pods at 2.5× the HPA's CPU target, room for more on the node."""
    pods = tuple(PodMetrics(f"p{i}", True, 0.0, 1.0, 2.0) for i in range(2))
    fields = {
        "min_replicas": 1,
        "max_replicas": 8,
        "free_gpu_slots": 6,
        "node_cpu_free_cores": 16.0,
        "node_memory_free_bytes": 64.0 * GIB,
        "last_change_age_s": 600.0,
    }
    fields.update(overrides)
    return make_observation(1000.0, pods, **fields)


def snapshot(obs: Observation, age_s: float = 1.0, schema_hash: str = schema.SCHEMA_HASH):
    return Snapshot(
        tick=7,
        schema_version=schema.SCHEMA_VERSION,
        schema_hash=schema_hash,
        values=tuple(float(v) for v in schema.encode(obs)),
        missing_inputs=("p95_latency_s",),
        age_s=age_s,
        stale=False,
        stale_inputs=(),
        observation=obs,
    )


class FakeState:
    """Answers the queued snapshots (or raises the queued errors), repeating the last."""

    def __init__(self, *answers: Snapshot | Exception) -> None:
        self.answers = list(answers)

    def get(self) -> Snapshot:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakePolicy:
    def __init__(self, replica_step_index: int = NOOP[REPLICAS], error: Exception | None = None):
        action = list(NOOP)
        action[REPLICAS] = replica_step_index
        self.decision = Decision(tuple(action), 0.5, "test-policy", Fallback.NONE)
        self.error = error
        self.calls: list[tuple[Sequence[float], Sequence[bool]]] = []

    def decide(self, state_values, mask=(), *, tick: int = 0) -> Decision:
        self.calls.append((state_values, mask))
        if self.error is not None:
            raise self.error
        return self.decision


class FakeApplier:
    def __init__(self, live_replicas: int | None = None) -> None:
        self.live_replicas = live_replicas
        self.applied: list[Action] = []
        self.maintained = 0

    def current_replicas(self) -> int | None:
        return self.live_replicas

    def apply(self, obs: Observation, action: Action) -> list[OpResult]:
        self.applied.append(action)
        return [OpResult("replicas", "ok", f"spec.replicas={action.desired_replicas}")]

    def maintain(self) -> list[OpResult]:
        self.maintained += 1
        return []


class FakeLeader:
    def __init__(self, leader: bool = True) -> None:
        self.is_leader = leader


def actuator(state, policy, applier, leader=None, audit=None, **settings) -> Actuator:
    return Actuator(
        TickSettings(**{"min_replicas": 1, "max_replicas": 8, **settings}),
        state,
        policy,
        applier,
        leader or FakeLeader(),
        audit,
        clock=lambda: 1_800_000_000.0,
    )


def test_stale_state_holds_for_hold_ticks_then_falls_back_to_the_hpa_rule() -> None:
    applier = FakeApplier()
    policy = FakePolicy()
    act = actuator(FakeState(snapshot(busy_observation(), age_s=60.0)), policy, applier)
    first, second, third = act.tick(), act.tick(), act.tick()
    assert [first.outcome, second.outcome] == ["hold", "hold"]
    assert "hold 1/2" in first.reason and "stale" in first.reason
    assert third.outcome == "fallback" and third.fallback_reason == "stale_state"
    assert policy.calls == []  # a stale state is never sent to the policy
    # the 60-s-old CPU (2.5× target) is not a measurement now: the HPA rule has no metrics
    # and does not scale, as the HPA does when the metrics API has nothing fresh
    assert "did not receive metrics" in third.reason
    assert applier.applied == []


def test_stale_state_fallback_still_enforces_the_replica_bounds() -> None:
    applier = FakeApplier()
    below_min = busy_observation(min_replicas=3)
    act = actuator(
        FakeState(snapshot(below_min, age_s=60.0)), FakePolicy(), applier, min_replicas=3
    )
    records = [act.tick() for _ in range(3)]
    assert records[-1].fallback_reason == "stale_state"
    assert [a.desired_replicas for a in applier.applied] == [3]


def test_missing_state_holds_without_an_observation_to_act_on() -> None:
    applier = FakeApplier()
    act = actuator(
        FakeState(StateUnavailable("collector: connection refused")), FakePolicy(), applier
    )
    records = [act.tick() for _ in range(4)]
    assert {r.outcome for r in records} == {"hold"}
    assert applier.applied == []


def test_a_fresh_state_after_stale_ones_resets_the_hold() -> None:
    busy = busy_observation()
    state = FakeState(snapshot(busy, age_s=60.0), snapshot(busy, age_s=1.0), snapshot(busy, 60.0))
    act = actuator(state, FakePolicy(), FakeApplier())
    assert [act.tick().outcome for _ in range(3)] == ["hold", "policy", "hold"]


def test_unreachable_policy_server_falls_back_within_the_same_tick() -> None:
    applier = FakeApplier()
    policy = FakePolicy(error=PolicyUnavailable("policy server: UNAVAILABLE: connection refused"))
    rec = actuator(FakeState(snapshot(busy_observation())), policy, applier).tick()
    assert rec.outcome == "fallback" and rec.fallback_reason == "policy_unavailable"
    assert "UNAVAILABLE" in rec.reason
    assert [a.desired_replicas for a in applier.applied] == [4]


def test_policy_server_heuristic_answer_counts_as_fallback() -> None:
    policy = FakePolicy()
    policy.decision = dataclasses.replace(policy.decision, fallback=Fallback.SCHEMA_MISMATCH)
    act = actuator(FakeState(snapshot(busy_observation())), policy, FakeApplier())
    rec = act.tick()
    assert rec.fallback_reason == "policy_schema_mismatch"
    assert act.metrics.fallbacks.labels("policy_schema_mismatch")._value.get() == 1


def test_collector_schema_mismatch_falls_back_without_asking_the_policy() -> None:
    policy = FakePolicy()
    state = FakeState(snapshot(busy_observation(), schema_hash="0" * 64))
    rec = actuator(state, policy, FakeApplier()).tick()
    assert rec.fallback_reason == "schema_mismatch" and policy.calls == []


def test_envelope_clamps_a_replica_step_beyond_the_free_gpu_slots() -> None:
    applier = FakeApplier()
    obs = busy_observation(free_gpu_slots=1)
    rec = actuator(FakeState(snapshot(obs)), FakePolicy(replica_step_index=4), applier).tick()
    assert rec.outcome == "policy"
    assert rec.raw_action is not None and rec.raw_action.desired_replicas == 4
    assert rec.clamped_action is not None and rec.clamped_action.desired_replicas == 3
    assert rec.clamp_reasons == ("replicas 4: not enough free GPU slots",)
    assert [a.desired_replicas for a in applier.applied] == [3]


def test_the_mask_sent_to_the_policy_comes_from_the_envelope() -> None:
    policy = FakePolicy()
    actuator(FakeState(snapshot(busy_observation(free_gpu_slots=0))), policy, FakeApplier()).tick()
    _values, mask = policy.calls[0]
    # 2 → 0 is below min_replicas, 2 → 1 is fine, no free GPU slot for any scale-up
    assert [bool(m) for m in mask[:5]] == [False, True, True, False, False]


def test_live_replicas_from_the_scale_subresource_override_the_lagging_state() -> None:
    applier = FakeApplier(live_replicas=4)
    obs = busy_observation(free_gpu_slots=3)
    rec = actuator(FakeState(snapshot(obs)), FakePolicy(replica_step_index=4), applier).tick()
    assert rec.observation is not None
    assert rec.observation.desired_replicas == 4 and rec.observation.free_gpu_slots == 1
    assert [a.desired_replicas for a in applier.applied] == [5]


def test_shadow_mode_decides_and_audits_but_applies_nothing(tmp_path: Path) -> None:
    applier = FakeApplier()
    audit = AuditLog(tmp_path / "audit.jsonl")
    policy = FakePolicy(replica_step_index=3)
    act = actuator(
        FakeState(snapshot(busy_observation())), policy, applier, audit=audit, shadow=True
    )
    rec = act.tick()
    audit.close()
    assert applier.applied == [] and rec.ops == () and applier.maintained == 0
    assert rec.clamped_action is not None and rec.clamped_action.desired_replicas == 3
    line = json.loads((tmp_path / "audit.jsonl").read_text())
    assert line["shadow"] is True and "shadow: not applied" in line["reason"]


def test_non_leader_decides_nothing() -> None:
    applier, policy = FakeApplier(), FakePolicy(replica_step_index=4)
    act = actuator(FakeState(snapshot(busy_observation())), policy, applier, FakeLeader(False))
    rec = act.tick()
    assert rec.outcome == "not_leader" and policy.calls == [] and applier.applied == []
    assert act.metrics.leader._value.get() == 0


def test_audit_line_holds_state_raw_and_clamped_action_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    obs = busy_observation(free_gpu_slots=1)
    act = actuator(
        FakeState(snapshot(obs)), FakePolicy(replica_step_index=4), FakeApplier(), audit=audit
    )
    act.tick()
    act.tick()
    audit.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["tick"] for x in lines] == [1, 2]
    line = lines[0]
    assert line["leader"] is True and line["outcome"] == "policy"
    assert line["state"]["schema_hash"] == schema.SCHEMA_HASH
    assert len(line["state"]["values"]) == schema.STATE_DIM
    assert line["state"]["missing_inputs"] == ["p95_latency_s"]
    assert line["observation"]["desired_replicas"] == 2
    assert line["raw_action"]["heads"]["replicas"] == 2
    assert line["raw_action"]["action"]["desired_replicas"] == 4
    assert line["clamped_action"]["desired_replicas"] == 3
    assert line["clamp_reasons"] == ["replicas 4: not enough free GPU slots"]
    assert line["reason"] == "policy test-policy" and line["fallback_reason"] == ""
    assert line["ops"] == [{"op": "replicas", "outcome": "ok", "detail": "spec.replicas=3"}]


def test_observation_round_trips_through_the_collector_state_json() -> None:
    obs = busy_observation(cpu_limit_cores=math.inf, request_rate_rps=12.5)
    doc = json.loads(json.dumps(_finite(dataclasses.asdict(obs))))
    assert doc["cpu_limit_cores"] is None
    assert observation_from_json(doc) == obs


def test_observation_with_an_unknown_field_is_refused() -> None:
    doc = _finite(dataclasses.asdict(busy_observation()))
    doc["surprise"] = 1
    with pytest.raises(ValueError, match="surprise"):
        observation_from_json(doc)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--period", "0"], "--period"),
        (["--policy-server", "nohost"], "--policy-server"),
        (["--min-replicas", "5", "--max-replicas", "2"], "--min-replicas"),
        (["--lease-renew", "10"], "--lease-renew"),
        (["--collector-url", "127.0.0.1:9102"], "--collector-url"),
        (["--triton-pod-port", "70000"], "--triton-pod-port"),
    ],
)
def test_bad_flag_is_a_one_line_error_naming_it(argv, flag, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert len(err.strip().splitlines()) == 1 and flag in err


def test_a_resize_is_not_stacked_before_the_state_shows_the_previous_one() -> None:
    cpu = next(i for i, h in enumerate(HEADS) if h.name == "cpu_request")
    policy = FakePolicy()
    grow = list(NOOP)
    grow[cpu] = 2  # +0.5 core
    policy.decision = dataclasses.replace(policy.decision, action=tuple(grow))
    old, new = busy_observation(), busy_observation(cpu_request_cores=1.5)
    applier = FakeApplier()
    act = actuator(FakeState(snapshot(old), snapshot(old), snapshot(new)), policy, applier)
    first, second, third = act.tick(), act.tick(), act.tick()
    assert first.clamped_action is not None and first.clamped_action.cpu_request_cores == 1.5
    assert second.clamped_action is not None and second.clamped_action.is_noop()
    assert second.clamp_reasons == ("cpu_request_cores: waiting for the change to 1.5 to show",)
    assert third.clamped_action is not None and third.clamped_action.cpu_request_cores == 2.0
    assert [a.cpu_request_cores for a in applier.applied] == [1.5, 2.0]


def test_the_leader_converges_every_tick_even_when_it_holds() -> None:
    applier = FakeApplier()
    act = actuator(FakeState(snapshot(busy_observation(), age_s=60.0)), FakePolicy(), applier)
    assert [act.tick().outcome for _ in range(2)] == ["hold", "hold"]
    assert applier.maintained == 2
    follower = FakeApplier()
    actuator(FakeState(snapshot(busy_observation())), FakePolicy(), follower, FakeLeader(False))
    assert follower.maintained == 0
