"""The RL environment on the twin: gymnasium API, shapes, masks, truncation, determinism,
generated load and domain randomization."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from ecrl.actions import NOOP, NVEC, OFFSETS
from ecrl.experiment.runner import resolve_profile
from ecrl.load.shapes import LoadShape
from ecrl.rl.env import MASK_DIM, EnvConfig, TwinEnv, TwinVecEnv
from ecrl.rl.scenarios import (
    RandomizationConfig,
    env_variation,
    generated_shape,
    randomized_profile,
)
from ecrl.schema import FEATURES, OPTIONAL, STATE_BOUND, STATE_DIM, encode
from ecrl.twin.profile import Profile
from ecrl.twin.spec import ClusterSpec
from ecrl.twin.twin import UNSCHEDULABLE

EPISODE_S = 60.0  # the shortest episode generated_shape supports (see the xfail below)
CFG = EnvConfig(episode_s=EPISODE_S)
TICKS = round(EPISODE_S / CFG.tick_s)
NOOP_COLUMNS = [o + n for o, n in zip(OFFSETS, NOOP, strict=True)]


@pytest.fixture(scope="module")
def profile() -> Profile:
    return resolve_profile("rtx3080-mobilenetv4")


def vec_env(profile: Profile, n: int = 3, seed: int = 0, **cfg: object) -> TwinVecEnv:
    return TwinVecEnv(ClusterSpec(), profile, n, seed=seed, cfg=dataclasses.replace(CFG, **cfg))


def masked_choices(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random allowed step per head per env."""
    return np.array(
        [
            [rng.choice(np.flatnonzero(m[o : o + n])) for o, n in zip(OFFSETS, NVEC, strict=True)]
            for m in mask
        ]
    )


def noop_choices(n: int) -> np.ndarray:
    return np.tile(np.array(NOOP), (n, 1))


# --------------------------------------------------------------- gymnasium


def test_twin_env_passes_gymnasiums_env_checker(profile: Profile) -> None:
    check_env(TwinEnv(ClusterSpec(), profile, cfg=CFG), skip_render_check=True)


def test_twin_env_truncates_at_the_end_of_a_replayed_shape(profile: Profile) -> None:
    shape = LoadShape("flat", ((0.0, 10.0), (30.0, 10.0)))
    env = TwinEnv(ClusterSpec(), profile, cfg=CFG, shape=shape)
    state, info = env.reset(seed=1)
    assert state.shape == (STATE_DIM,) and info["action_mask"].shape == (MASK_DIM,)
    truncs = []
    for _ in range(6):
        state, rew, term, trunc, info = env.step(np.array(NOOP))
        assert isinstance(rew, float) and not term
        assert {"gpu_util_gain", "qos_violation", "churn"} <= set(info)
        truncs.append(trunc)
    assert truncs == [False] * 5 + [True]


# ------------------------------------------------------------ vector env


def test_reset_returns_a_state_and_a_mask_per_env(profile: Profile) -> None:
    states, info = vec_env(profile, n=3).reset()
    assert states.shape == (3, STATE_DIM) and states.dtype == np.float32
    mask = info["action_mask"]
    assert mask.shape == (3, MASK_DIM) and mask.dtype == bool
    assert sum(NVEC) == MASK_DIM
    assert mask[:, NOOP_COLUMNS].all()


def test_step_returns_per_env_rewards_flags_and_reward_terms(profile: Profile) -> None:
    env = vec_env(profile, n=3)
    env.reset()
    states, rew, term, trunc, info = env.step(noop_choices(3))
    assert states.shape == (3, STATE_DIM)
    assert rew.shape == term.shape == trunc.shape == (3,)
    assert not term.any() and not trunc.any()
    assert info["action_mask"].shape == (3, MASK_DIM)
    assert set(info["reward_terms"]) == {
        "gpu_util_gain",
        "resource_efficiency",
        "latency_penalty",
        "qos_violation",
        "churn",
    }
    for v in info["reward_terms"].values():
        assert v.shape == (3,)
    np.testing.assert_array_equal(info["reward_terms"]["churn"], 0.0)


def test_random_masked_play_is_never_clamped_and_never_creates_pending_pods(
    profile: Profile,
) -> None:
    env = vec_env(profile, n=4, seed=5, metric_dropout_ratio=0.2)
    _, info = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(2 * TICKS):
        assert info["action_mask"][:, NOOP_COLUMNS].all()
        states, rew, _, _, info = env.step(masked_choices(info["action_mask"], rng))
        assert info["clamped"] == 0  # the mask never offers what the envelope would cut
        assert not (env.twin.phase == UNSCHEDULABLE).any()
        assert np.isfinite(states).all() and np.abs(states).max() <= STATE_BOUND
        assert np.isfinite(rew).all()


def test_metric_dropout_zeroes_the_values_it_flags(profile: Profile) -> None:
    env = vec_env(profile, n=8, seed=2, metric_dropout_ratio=0.5)
    env.reset()
    states, *_ = env.step(noop_choices(8))
    idx = [FEATURES.index(f) for f in OPTIONAL]
    flags = states[:, len(FEATURES) :]
    assert flags.sum() > 0
    assert (states[:, idx][flags == 1.0] == 0.0).all()


def test_truncation_with_autoreset_returns_the_final_state_and_the_episode_return(
    profile: Profile,
) -> None:
    env = vec_env(profile, n=2, seed=4)
    env.reset()
    total = np.zeros(2)
    for k in range(TICKS):
        states, rew, term, trunc, info = env.step(noop_choices(2))
        total += rew
        assert not term.any()
        if k < TICKS - 1:
            assert not trunc.any()
            assert "final_state" not in info and "episode_return" not in info
    assert trunc.all()
    assert info["final_state"].shape == (2, STATE_DIM)
    np.testing.assert_allclose(info["episode_return"], total)
    # the returned states start the next episode
    assert env.twin.t == 0.0
    np.testing.assert_array_equal(env.episode_return, 0.0)
    assert not np.array_equal(info["final_state"], states)
    assert info["action_mask"][:, NOOP_COLUMNS].all()


def test_truncation_without_autoreset_keeps_the_last_states(profile: Profile) -> None:
    cfg = dataclasses.replace(CFG, metric_dropout_ratio=0.0)
    env = TwinVecEnv(ClusterSpec(), profile, 2, seed=4, cfg=cfg, autoreset=False)
    env.reset()
    for _ in range(TICKS):
        states, _, _, trunc, info = env.step(noop_choices(2))
    assert trunc.all() and "final_state" not in info and "episode_return" in info
    assert env.twin.t == pytest.approx(EPISODE_S)
    np.testing.assert_array_equal(states, np.stack([encode(o) for o in env.obs]))


def _rollout(profile: Profile, seed: int, ticks: int) -> list[np.ndarray]:
    env = vec_env(profile, n=3, seed=seed, metric_dropout_ratio=0.1)
    states, info = env.reset()
    rng = np.random.default_rng(99)
    out = [states, info["action_mask"]]
    for _ in range(ticks):
        states, rew, _, trunc, info = env.step(masked_choices(info["action_mask"], rng))
        out += [states, rew, trunc, info["action_mask"]]
    return out


def test_same_seed_gives_identical_states_and_rewards_across_episodes(profile: Profile) -> None:
    a = _rollout(profile, seed=11, ticks=TICKS + 3)
    b = _rollout(profile, seed=11, ticks=TICKS + 3)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_different_seeds_give_different_episodes(profile: Profile) -> None:
    a = vec_env(profile, seed=1)
    b = vec_env(profile, seed=2)
    a.reset()
    b.reset()
    assert not np.array_equal(a.load, b.load)


def test_reset_with_a_seed_replays_the_episode(profile: Profile) -> None:
    env = vec_env(profile, seed=0)
    first, _ = env.reset(seed=42)
    load = env.load.copy()
    env.step(noop_choices(3))
    again, _ = env.reset(seed=42)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(load, env.load)


# ---------------------------------------------------------- generated load


@pytest.mark.parametrize("duration", [60.0, 90.5, 600.0, 3600.0])
@pytest.mark.parametrize("max_users", [1.0, 100.0])
def test_generated_shape_never_raises_stays_in_range_and_covers_the_duration(
    duration: float, max_users: float
) -> None:
    t = np.arange(0.0, np.ceil(duration) + 1.0)
    for seed in range(150):
        shape = generated_shape(np.random.default_rng(seed), duration, max_users)
        assert shape.kind == "users"
        assert shape.points[0][0] == 0.0
        assert shape.duration_s >= duration
        v = shape.value_at(t)
        assert np.isfinite(v).all()
        assert (v >= 0).all() and (v <= max_users * (1 + 1e-9)).all(), seed


def test_generated_shapes_differ_between_seeds() -> None:
    shapes = {generated_shape(np.random.default_rng(s), 600.0, 100.0).points for s in range(20)}
    assert len(shapes) == 20


@pytest.mark.parametrize("duration", [10.0, 30.0, 45.0])
def test_generated_shape_supports_every_episode_length_env_config_accepts(
    duration: float,
) -> None:
    for seed in range(50):
        shape = generated_shape(np.random.default_rng(seed), duration, 100.0)
        assert shape.duration_s >= duration


# -------------------------------------------------------- randomization


def test_disabled_randomization_leaves_the_profile_and_the_gpus_unchanged(
    profile: Profile,
) -> None:
    off = RandomizationConfig(enabled=False)
    rng = np.random.default_rng(0)
    assert randomized_profile(profile, rng, off) == profile
    speed, background = env_variation(profile, rng, off, 4)
    np.testing.assert_array_equal(speed, 1.0)
    np.testing.assert_array_equal(background, profile.gpu.background_util_ratio)
    env = TwinVecEnv(ClusterSpec(), profile, 4, cfg=dataclasses.replace(CFG, randomization=off))
    env.reset()
    assert env.twin.profile == profile
    np.testing.assert_array_equal(env.twin.env_speed, 1.0)


def test_unit_ranges_leave_the_profile_unchanged(profile: Profile) -> None:
    unit = RandomizationConfig(
        cpu_s_scale=(1.0, 1.0), client_overhead_scale=(1.0, 1.0), startup_scale=(1.0, 1.0)
    )
    assert randomized_profile(profile, np.random.default_rng(3), unit) == profile


def test_enabled_randomization_scales_the_server_costs_within_their_ranges(
    profile: Profile,
) -> None:
    cfg = RandomizationConfig()
    s = profile.server
    for seed in range(20):
        r = randomized_profile(profile, np.random.default_rng(seed), cfg).server
        lo, hi = cfg.cpu_s_scale
        assert lo * s.cpu_s_per_request <= r.cpu_s_per_request <= hi * s.cpu_s_per_request
        lo, hi = cfg.startup_scale
        assert lo * s.startup_mean_s <= r.startup_mean_s <= hi * s.startup_mean_s
        lo, hi = cfg.client_overhead_scale
        assert lo * s.client_overhead_s <= r.client_overhead_s <= hi * s.client_overhead_s
    speed, background = env_variation(profile, np.random.default_rng(0), cfg, 50)
    assert ((cfg.gpu_speed_scale[0] <= speed) & (speed <= cfg.gpu_speed_scale[1])).all()
    lo, hi = cfg.background_util_ratio
    assert ((lo <= background) & (background <= hi)).all()
