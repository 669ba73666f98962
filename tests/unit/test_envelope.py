"""The safety envelope: the masks never allow what clamp would cut, and clamp cuts the rest."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecrl.actions import BATCHING_LADDER, HEADS, MIB, NOOP, NVEC, OFFSETS, decode
from ecrl.envelope import EnvelopeConfig, action_masks, clamp, head_masks
from ecrl.policies.base import Action, Observation, PodMetrics

from .policies.observations import make_observation

GIB = 1024**3
CFG = EnvelopeConfig()
HEAD_INDEX = {h.name: i for i, h in enumerate(HEADS)}
ACTION_FIELDS = {
    "replicas": ("desired_replicas",),
    "batching": ("max_batch_size", "batch_delay_s"),
    "instances": ("instance_count",),
    "cpu_request": ("cpu_request_cores",),
    "memory_request": ("memory_request_bytes",),
}


def pod(i: int, memory: float | None) -> PodMetrics:
    return PodMetrics(f"p{i}", True, 0.0, 1.0, 0.5, memory_usage_bytes=memory)


def roomy(**overrides: Any) -> Observation:
    """Every step is safe: mid-range settings, room everywhere, long since the last change."""
    fields: dict[str, Any] = {
        "desired_replicas": 3,
        "min_replicas": 1,
        "max_replicas": 8,
        "free_gpu_slots": 4,
        "cpu_request_cores": 2.0,
        "memory_request_bytes": 4 * GIB,
        "max_batch_size": 8,
        "batch_delay_s": 0.0,
        "instance_count": 2,
        "vram_free_bytes": 8.0 * GIB,
        "node_cpu_free_cores": 16.0,
        "node_memory_free_bytes": 64.0 * GIB,
        "last_change_age_s": 600.0,
    }
    fields.update(overrides)
    pods = fields.pop("pods", (pod(0, 1.0 * GIB), pod(1, 1.5 * GIB), pod(2, 0.5 * GIB)))
    return make_observation(1000.0, pods, **fields)


def allowed_steps(obs: Observation, cfg: EnvelopeConfig = CFG) -> dict[str, list[float]]:
    return {
        h.name: [s for s, ok in zip(h.steps, m, strict=True) if ok]
        for h, m in zip(HEADS, head_masks(obs, cfg), strict=True)
    }


def with_step(head: str, step: float) -> tuple[int, ...]:
    c = list(NOOP)
    i = HEAD_INDEX[head]
    c[i] = HEADS[i].steps.index(step)
    return tuple(c)


# ------------------------------------------------------------ explicit cases


def test_every_step_is_allowed_with_room_everywhere() -> None:
    assert action_masks(roomy()).all()


def test_action_masks_is_the_flat_concatenation_of_head_masks() -> None:
    obs = roomy(free_gpu_slots=0)
    flat = action_masks(obs, CFG)
    assert flat.shape == (sum(NVEC),) and flat.dtype == bool
    np.testing.assert_array_equal(flat, np.concatenate(head_masks(obs, CFG)))


def test_never_scale_up_beyond_free_gpu_slots() -> None:
    assert allowed_steps(roomy(free_gpu_slots=0))["replicas"] == [-2, -1, 0]
    assert allowed_steps(roomy(free_gpu_slots=1))["replicas"] == [-2, -1, 0, 1]
    act, why = clamp(roomy(free_gpu_slots=1), Action(desired_replicas=5))
    assert act.desired_replicas == 4
    assert why and "free GPU slots" in why[0]


def test_never_scale_up_beyond_max_replicas() -> None:
    assert allowed_steps(roomy(desired_replicas=8))["replicas"] == [-2, -1, 0]
    assert allowed_steps(roomy(desired_replicas=7))["replicas"] == [-2, -1, 0, 1]
    act, why = clamp(roomy(desired_replicas=8), Action(desired_replicas=9))
    assert act.desired_replicas is None
    assert why and "max_replicas" in why[0]


def test_never_scale_below_min_replicas() -> None:
    assert allowed_steps(roomy(desired_replicas=1))["replicas"] == [0, 1, 2]
    assert allowed_steps(roomy(desired_replicas=2))["replicas"] == [-1, 0, 1, 2]


@pytest.mark.parametrize("age", [None, 0.0, 10.0, CFG.scale_down_cooldown_s - 0.1])
def test_no_scale_down_within_the_cooldown_or_without_a_last_change_age(
    age: float | None,
) -> None:
    obs = roomy(last_change_age_s=age)
    assert allowed_steps(obs)["replicas"] == [0, 1, 2]
    act, why = clamp(obs, Action(desired_replicas=2))
    assert act.desired_replicas is None
    assert why and "cool-down" in why[0]


def test_scale_down_is_allowed_once_the_cooldown_has_passed() -> None:
    obs = roomy(last_change_age_s=CFG.scale_down_cooldown_s)
    assert allowed_steps(obs)["replicas"] == [-2, -1, 0, 1, 2]


def test_clamp_cuts_a_large_scale_up_to_the_largest_allowed_step_with_a_reason() -> None:
    act, why = clamp(roomy(), Action(desired_replicas=3 + 5, reason="baseline"))
    assert act.desired_replicas == 3 + CFG.max_replica_step
    assert act.reason == "baseline"
    assert len(why) == 1 and "replicas 8" in why[0]


def test_clamp_cuts_a_large_scale_down_to_the_largest_allowed_step() -> None:
    act, why = clamp(roomy(desired_replicas=8), Action(desired_replicas=1))
    assert act.desired_replicas == 8 - CFG.max_replica_step
    assert len(why) == 1


def test_clamp_keeps_an_allowed_action_and_drops_unchanged_settings() -> None:
    obs = roomy()
    act = Action(desired_replicas=4, instance_count=obs.instance_count, cpu_request_cores=2.5)
    out, why = clamp(obs, act)
    assert why == []
    assert out == Action(desired_replicas=4, cpu_request_cores=2.5)


@pytest.mark.parametrize(
    ("overrides", "step"),
    [
        ({"pods": (pod(0, None), pod(1, None))}, -512),  # working set unknown
        ({"pods": ()}, -512),  # no pod to measure
        ({"pods": (pod(0, 2.9 * GIB),)}, -512),  # 2.9 GiB > 0.75 × 3.5 GiB
        ({"node_memory_free_bytes": None}, 512),  # node room unknown
        ({"node_memory_free_bytes": 512.0 * MIB}, 512),  # 3 pods × 512 MiB do not fit
        ({"memory_request_bytes": CFG.memory_min_bytes}, -512),
        ({"memory_request_bytes": CFG.memory_max_bytes}, 512),
    ],
    ids=["usage-missing", "no-pods", "too-close", "node-free-missing", "node-full", "min", "max"],
)
def test_memory_step_refused(overrides: dict[str, Any], step: int) -> None:
    obs = roomy(**overrides)
    assert step not in allowed_steps(obs)["memory_request"]
    target = obs.memory_request_bytes + step * MIB
    out, why = clamp(obs, Action(memory_request_bytes=target))
    assert out.memory_request_bytes is None
    assert len(why) == 1 and why[0].startswith("memory_request_bytes")


def test_memory_shrink_allowed_with_headroom_over_the_largest_working_set() -> None:
    # new request 3.5 GiB; 0.75 × 3.5 GiB = 2.625 GiB > 2.6 GiB
    obs = roomy(pods=(pod(0, 2.6 * GIB), pod(1, None)))
    assert -512 in allowed_steps(obs)["memory_request"]


@pytest.mark.parametrize(
    ("overrides", "step"),
    [
        ({"node_cpu_free_cores": None}, 0.5),
        ({"node_cpu_free_cores": 1.0}, 0.5),  # 3 pods × 0.5 cores
        ({"cpu_request_cores": CFG.cpu_max_cores}, 0.5),
        ({"cpu_request_cores": CFG.cpu_min_cores}, -0.5),
    ],
    ids=["node-free-missing", "node-full", "max", "min"],
)
def test_cpu_step_refused(overrides: dict[str, Any], step: float) -> None:
    obs = roomy(**overrides)
    assert step not in allowed_steps(obs)["cpu_request"]
    out, why = clamp(obs, Action(cpu_request_cores=obs.cpu_request_cores + step))
    assert out.cpu_request_cores is None and len(why) == 1


@pytest.mark.parametrize("vram", [None, 0.0, CFG.vram_margin_bytes - 1.0])
def test_batching_and_instances_grow_only_with_framebuffer_to_spare(vram: float | None) -> None:
    obs = roomy(max_batch_size=8, batch_delay_s=0.002, vram_free_bytes=vram)  # +1 → batch 16
    allowed = allowed_steps(obs)
    assert allowed["batching"] == [-1, 0]
    assert allowed["instances"] == [-1, 0]
    out, why = clamp(obs, Action(max_batch_size=16, batch_delay_s=0.002, instance_count=3))
    assert out.is_noop() and len(why) == 2


def test_instances_stay_within_one_and_instances_max() -> None:
    assert allowed_steps(roomy(instance_count=1))["instances"] == [0, 1]
    assert allowed_steps(roomy(instance_count=CFG.instances_max))["instances"] == [-1, 0]


def test_batching_cannot_leave_the_ladder() -> None:
    assert allowed_steps(roomy(max_batch_size=1, batch_delay_s=0.0))["batching"] == [0, 1]
    top = BATCHING_LADDER[-1]
    assert allowed_steps(roomy(max_batch_size=top[0], batch_delay_s=top[1]))["batching"] == [-1, 0]
    out, why = clamp(roomy(), Action(max_batch_size=64, batch_delay_s=0.0))
    assert out.max_batch_size is None and out.batch_delay_s is None and len(why) == 1


def test_noop_is_allowed_even_when_nothing_else_is() -> None:
    obs = roomy(
        desired_replicas=1,
        min_replicas=1,
        max_replicas=1,
        free_gpu_slots=0,
        instance_count=1,
        cpu_request_cores=CFG.cpu_min_cores,
        memory_request_bytes=CFG.memory_min_bytes,
        vram_free_bytes=None,
        node_cpu_free_cores=None,
        node_memory_free_bytes=None,
        last_change_age_s=None,
        max_batch_size=1,
        batch_delay_s=0.0,
        pods=(),
    )
    masks = head_masks(obs, CFG)
    for h, m, n in zip(HEADS, masks, NOOP, strict=True):
        assert m[n], h.name
        assert m.sum() == 1, h.name
    assert clamp(obs, decode(obs, NOOP)) == (Action(), [])


def test_mask_and_clamp_agree_off_the_batching_ladder() -> None:
    # max_batch_size 7 is nearest to rung (8, 0): +1 → (8, 0.002) grows the real batch 7 → 8,
    # so without framebuffer information both the mask and clamp must refuse it.
    obs = roomy(max_batch_size=7, batch_delay_s=0.0, vram_free_bytes=None)
    choice = with_step("batching", 1)
    assert not action_masks(obs)[OFFSETS[1] + HEADS[1].steps.index(1)]
    act = decode(obs, choice)
    cut, reasons = clamp(obs, act)
    assert cut.max_batch_size is None and reasons


@pytest.mark.parametrize(
    "overrides",
    [
        {"cpu_request_cores": 4.0, "node_cpu_free_cores": 3.0},  # the new pod needs 4 cores
        {"memory_request_bytes": 4 * GIB, "node_memory_free_bytes": 1.0 * GIB},
    ],
    ids=["cpu", "memory"],
)
def test_scale_up_is_refused_when_the_node_cannot_fit_the_new_pod(
    overrides: dict[str, Any],
) -> None:
    # reference box: 15 allocatable cores, 3 pods × 4 cores → a 4th pod would stay Pending
    obs = roomy(free_gpu_slots=1, **overrides)
    assert allowed_steps(obs)["replicas"] == [-2, -1, 0]


# --------------------------------------------------------- property tests

cfgs = st.builds(
    EnvelopeConfig,
    max_replica_step=st.integers(1, 3),
    scale_down_cooldown_s=st.sampled_from([0.0, 30.0, 120.0]),
    memory_headroom_ratio=st.sampled_from([0.0, 0.25, 0.5]),
    instances_max=st.integers(1, 4),
)
maybe_age = st.one_of(st.none(), st.sampled_from([0.0, 29.9, 30.0, 119.9, 120.0, 600.0]))


@st.composite
def observations(draw: st.DrawFn, cfg: EnvelopeConfig) -> Observation:
    lo = draw(st.integers(0, 3))
    hi = draw(st.integers(max(lo, 1), lo + 6))
    desired = draw(st.one_of(st.just(lo), st.just(hi), st.integers(lo, hi)))
    cpu_pts = [cfg.cpu_min_cores, cfg.cpu_max_cores, cfg.cpu_min_cores + 0.5, 2.0]
    cpu = draw(
        st.one_of(
            st.sampled_from(cpu_pts),
            st.floats(cfg.cpu_min_cores, cfg.cpu_max_cores),
        )
    )
    mem_pts = [
        cfg.memory_min_bytes,
        cfg.memory_max_bytes,
        cfg.memory_min_bytes + 512 * MIB,
        cfg.memory_max_bytes - 512 * MIB,
    ]
    mem = draw(
        st.one_of(
            st.sampled_from(mem_pts),
            st.integers(cfg.memory_min_bytes, cfg.memory_max_bytes),
        )
    )
    usage = st.one_of(
        st.none(),
        st.floats(0.0, 1.2 * mem),
        st.sampled_from([0.75 * (mem - 512 * MIB), 0.75 * (mem - 512 * MIB) + 1.0]),
    )
    pods = tuple(pod(i, draw(usage)) for i in range(draw(st.integers(0, 4))))
    batch, delay = draw(st.sampled_from(BATCHING_LADDER))
    vram = st.one_of(
        st.none(),
        st.sampled_from([0.0, cfg.vram_margin_bytes - 1.0, float(cfg.vram_margin_bytes)]),
        st.floats(0.0, 16.0 * GIB),
    )
    node_cpu = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 16.0))
    node_mem = st.one_of(
        st.none(),
        st.sampled_from([0.0, 512.0 * MIB, 1024.0 * MIB]),
        st.floats(0.0, 64.0 * GIB),
    )
    return roomy(
        desired_replicas=desired,
        min_replicas=lo,
        max_replicas=hi,
        free_gpu_slots=draw(st.integers(0, 4)),
        cpu_request_cores=cpu,
        memory_request_bytes=mem,
        max_batch_size=batch,
        batch_delay_s=delay,
        instance_count=draw(st.integers(1, cfg.instances_max)),
        vram_free_bytes=draw(vram),
        node_cpu_free_cores=draw(node_cpu),
        node_memory_free_bytes=draw(node_mem),
        last_change_age_s=draw(maybe_age),
        pods=pods,
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[EnvelopeConfig, Observation]:
    cfg = draw(st.one_of(st.just(CFG), cfgs))
    return cfg, draw(observations(cfg))


@settings(max_examples=200, deadline=None)
@given(case=cases())
def test_every_choice_the_masks_allow_passes_clamp_unchanged(
    case: tuple[EnvelopeConfig, Observation],
) -> None:
    cfg, obs = case
    masks = head_masks(obs, cfg)
    for m, n in zip(masks, NOOP, strict=True):
        assert m[n]  # holding is always allowed
    allowed = [np.flatnonzero(m) for m in masks]
    for choice in itertools.product(*allowed):
        act = decode(obs, choice)
        out, why = clamp(obs, act, cfg)
        assert why == [], (choice, act)
        assert out == act, choice


@settings(max_examples=200, deadline=None)
@given(case=cases())
def test_every_step_the_masks_refuse_is_cut_by_clamp(
    case: tuple[EnvelopeConfig, Observation],
) -> None:
    cfg, obs = case
    masks = head_masks(obs, cfg)
    for h, m in zip(HEADS, masks, strict=True):
        for k in np.flatnonzero(~m):
            choice = with_step(h.name, h.steps[k])
            act = decode(obs, choice)
            out, why = clamp(obs, act, cfg)
            if h.name == "replicas":
                step = int(h.steps[k])
                assert len(why) == 1
                # cut toward 0: to the largest allowed step of the same sign, or dropped
                same_sign = [
                    int(s) for s, ok in zip(h.steps, m, strict=True) if ok and s * step > 0
                ]
                cut = max(same_sign, key=abs, default=0)
                assert abs(cut) < abs(step)
                expected = obs.desired_replicas + cut if cut else None
                assert out == Action(desired_replicas=expected)
                continue
            # Off the ladder's ends decode repeats the current setting: nothing to apply.
            unchanged = all(
                getattr(act, f) in (None, getattr(obs, f)) for f in ACTION_FIELDS[h.name]
            )
            assert out.is_noop(), (h.name, h.steps[k], act)
            assert len(why) == (0 if unchanged else 1), (h.name, h.steps[k])
