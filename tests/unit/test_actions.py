"""The MultiDiscrete action space: decoding steps into absolute targets, the batching ladder, churn."""

from __future__ import annotations

import itertools
import json

import pytest

from ecrl.actions import (
    BATCHING_LADDER,
    HEADS,
    MIB,
    NOOP,
    NVEC,
    OFFSETS,
    changes,
    decode,
    ladder_index,
    spec_json,
)
from ecrl.policies.base import Action, Observation

from .policies.observations import make_observation

GIB = 1024**3
HEAD_INDEX = {h.name: i for i, h in enumerate(HEADS)}


def obs_at(rung: int = 3, **overrides: object) -> Observation:
    batch, delay = BATCHING_LADDER[rung]
    fields: dict[str, object] = {
        "desired_replicas": 3,
        "min_replicas": 1,
        "max_replicas": 8,
        "cpu_request_cores": 2.0,
        "memory_request_bytes": 4 * GIB,
        "max_batch_size": batch,
        "batch_delay_s": delay,
        "instance_count": 2,
    }
    fields.update(overrides)
    return make_observation(10.0, (), **fields)


def choice_with(head: str, step: float) -> tuple[int, ...]:
    """The all-noop choice except ``head`` takes ``step``."""
    c = list(NOOP)
    i = HEAD_INDEX[head]
    c[i] = HEADS[i].steps.index(step)
    return tuple(c)


def test_layout_constants_agree_with_the_heads() -> None:
    assert tuple(len(h.steps) for h in HEADS) == NVEC
    assert OFFSETS[0] == 0
    assert OFFSETS[-1] + NVEC[-1] == sum(NVEC)
    for h, n in zip(HEADS, NOOP, strict=True):
        assert h.steps[n] == 0


def test_decoding_the_all_noop_choice_is_a_noop_action() -> None:
    assert decode(obs_at(), NOOP).is_noop()


def test_decode_keeps_the_reason() -> None:
    assert decode(obs_at(), NOOP, reason="hold").reason == "hold"


NON_ZERO_STEPS = [(h.name, s) for h in HEADS if h.name != "batching" for s in h.steps if s != 0]


@pytest.mark.parametrize(("head", "step"), NON_ZERO_STEPS)
def test_each_head_moves_exactly_its_setting_by_its_step(head: str, step: float) -> None:
    obs = obs_at()
    act = decode(obs, choice_with(head, step))
    expected = {
        "replicas": Action(desired_replicas=obs.desired_replicas + int(step)),
        "instances": Action(instance_count=obs.instance_count + int(step)),
        "cpu_request": Action(cpu_request_cores=obs.cpu_request_cores + step),
        "memory_request": Action(memory_request_bytes=obs.memory_request_bytes + int(step) * MIB),
    }[head]
    assert act == expected


def test_memory_step_is_512_mib() -> None:
    obs = obs_at()
    act = decode(obs, choice_with("memory_request", 512))
    assert act.memory_request_bytes == 4 * GIB + 512 * MIB


@pytest.mark.parametrize("rung", range(len(BATCHING_LADDER)))
@pytest.mark.parametrize("step", [-1, 1])
def test_batching_step_moves_one_rung_of_the_ladder(rung: int, step: int) -> None:
    act = decode(obs_at(rung), choice_with("batching", step))
    target = min(max(rung + step, 0), len(BATCHING_LADDER) - 1)
    assert (act.max_batch_size, act.batch_delay_s) == BATCHING_LADDER[target]
    others = Action(max_batch_size=act.max_batch_size, batch_delay_s=act.batch_delay_s)
    assert act == others  # nothing else moves


def test_batching_ladder_goes_from_latency_first_to_throughput_first() -> None:
    assert len(set(BATCHING_LADDER)) == len(BATCHING_LADDER)
    for (b0, d0), (b1, d1) in itertools.pairwise(BATCHING_LADDER):
        assert (b1, d1) > (b0, d0)
        assert b1 >= b0 and d1 >= d0
    assert (8, 0.0) in BATCHING_LADDER  # the seeds' setting is a rung


@pytest.mark.parametrize("rung", range(len(BATCHING_LADDER)))
def test_ladder_index_is_exact_on_ladder_points(rung: int) -> None:
    assert ladder_index(*BATCHING_LADDER[rung]) == rung


@pytest.mark.parametrize(
    ("batch", "delay", "rung"),
    [(5, 0.0, 2), (3, 0.0001, 1), (64, 0.02, len(BATCHING_LADDER) - 1), (0, 0.0, 0)],
)
def test_ladder_index_off_the_ladder_picks_the_nearest_rung(
    batch: int, delay: float, rung: int
) -> None:
    assert ladder_index(batch, delay) == rung


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ({}, 0.0),
        ({"replicas": 1}, 1.0),
        ({"replicas": -2}, 2.0),
        ({"batching": 1}, 1.0),
        ({"cpu_request": -0.5}, 1.0),
        ({"memory_request": 512}, 1.0),
        ({"replicas": 2, "instances": -1}, 3.0),
        ({"replicas": -2, "batching": -1, "instances": 1, "cpu_request": 0.5}, 5.0),
        (
            {
                "replicas": 2,
                "batching": 1,
                "instances": 1,
                "cpu_request": 0.5,
                "memory_request": -512,
            },
            6.0,
        ),
    ],
)
def test_changes_counts_replicas_moved_plus_one_per_other_setting_touched(
    steps: dict[str, float], expected: float
) -> None:
    c = list(NOOP)
    for name, step in steps.items():
        i = HEAD_INDEX[name]
        c[i] = HEADS[i].steps.index(step)
    assert changes(c) == expected


def test_spec_json_describes_every_head_and_the_ladder() -> None:
    spec = json.loads(spec_json())
    assert [h["name"] for h in spec["heads"]] == [h.name for h in HEADS]
    assert [tuple(h["steps"]) for h in spec["heads"]] == [h.steps for h in HEADS]
    assert [tuple(r) for r in spec["batching_ladder"]] == list(BATCHING_LADDER)
