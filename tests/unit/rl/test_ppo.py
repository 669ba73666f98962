"""PPO: GAE by hand, and learning small problems whose answer is known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ecrl.rl.agent import Agent
from ecrl.rl.ppo import Args, Plateau, gae, train


class SignBandit:
    """Head 0 must copy the sign of state[0]; head 1's last choice is always masked off.

    Optimal return per step is 1; a uniform policy earns 0.5 on head 0.
    """

    nvec = (2, 3)

    def __init__(self, n_envs: int, seed: int = 0) -> None:
        self.n_envs = n_envs
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.masked_taken = 0

    def _obs(self) -> tuple[np.ndarray, dict[str, Any]]:
        self.state = self.rng.normal(size=(self.n_envs, 3)).astype(np.float32) * 5 + 3
        mask = np.ones((self.n_envs, 5), dtype=bool)
        mask[:, 4] = False
        return self.state, {"action_mask": mask}

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        return self._obs()

    def step(self, choices: np.ndarray):
        want = (self.state[:, 0] > 3).astype(int)
        reward = (choices[:, 0] == want).astype(float)
        self.masked_taken += int((choices[:, 1] == 2).sum())
        self.t += 1
        trunc = np.full(self.n_envs, self.t % 16 == 0)
        states, info = self._obs()
        return states, reward, np.zeros(self.n_envs, dtype=bool), trunc, info


def greedy_accuracy(agent: Agent, env: SignBandit) -> float:
    states, info = env.reset(seed=123)
    choices = agent.act(states, info["action_mask"])
    return float((choices[:, 0] == (states[:, 0] > 3)).mean())


def test_gae_matches_a_hand_computed_two_step_case() -> None:
    rewards = torch.tensor([[1.0], [2.0]])
    values = torch.tensor([[0.5], [1.0]])
    dones = torch.zeros((2, 1))
    next_value, next_done = torch.tensor([3.0]), torch.tensor([0.0])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, dones, next_value, next_done, gamma, lam)
    d1 = 2.0 + 0.9 * 3.0 - 1.0  # last step
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    assert adv[1, 0].item() == pytest.approx(d1)
    assert adv[0, 0].item() == pytest.approx(d0 + gamma * lam * d1)
    assert torch.allclose(ret, adv + values)


def test_gae_does_not_leak_across_an_episode_end() -> None:
    rewards = torch.tensor([[1.0], [5.0]])
    values = torch.zeros((2, 1))
    dones = torch.tensor([[0.0], [1.0]])  # step 1 starts a new episode
    adv, _ = gae(rewards, values, dones, torch.tensor([0.0]), torch.tensor([0.0]), 0.9, 0.9)
    assert adv[0, 0].item() == pytest.approx(1.0)


def test_ppo_learns_the_sign_bandit_and_never_takes_a_masked_step(tmp_path: Path) -> None:
    env = SignBandit(n_envs=16, seed=0)
    probe = SignBandit(n_envs=256, seed=1)
    untrained = Agent(3, SignBandit.nvec, hidden=16)
    args = Args(
        seed=3,
        total_timesteps=16 * 16 * 40,
        num_envs=16,
        num_steps=16,
        num_minibatches=4,
        learning_rate=3e-3,
        hidden=16,
        eval_every=10,
        min_updates=1000,
        max_minutes=2.0,
    )
    agent, result = train(
        args,
        env,
        lambda a: greedy_accuracy(a, probe),
        tmp_path,
        obs_dim=3,
        nvec=SignBandit.nvec,
        progress=False,
    )
    assert greedy_accuracy(untrained, probe) < 0.8  # the problem is not solved by chance
    assert greedy_accuracy(agent, probe) >= 0.95
    assert env.masked_taken == 0
    assert result.best_score >= 0.95
    assert (tmp_path / "best.pt").exists() and (tmp_path / "result.json").exists()


def run_plateau(scores: list[float], kls: list[float], entropies: list[float]) -> list[bool]:
    p = Plateau(Args(plateau_patience=2, min_updates=0, stable_kl=0.01, stable_entropy_delta=0.1))
    out = []
    for i, (s, kl, ent) in enumerate(zip(scores, kls, entropies, strict=True)):
        p.improved(s)
        out.append(p.converged(kl, ent, update=i))
    return out


def test_plateau_stops_on_a_flat_score_with_a_stable_policy() -> None:
    assert run_plateau([10, 10.05, 10, 9.9], [0.001] * 4, [1.0] * 4) == [False, False, True, True]


def test_plateau_waits_while_kl_is_large_or_entropy_still_drifts() -> None:
    assert not any(run_plateau([10, 10, 10, 10], [0.5] * 4, [1.0] * 4))
    assert not any(run_plateau([10, 10, 10, 10], [0.001] * 4, [2.0, 1.7, 1.4, 1.1]))


def test_plateau_keeps_the_best_checkpoint_even_below_the_patience_margin() -> None:
    p = Plateau(Args(plateau_patience=2))
    assert p.improved(10.0) and p.improved(10.05) and not p.improved(10.0)
    assert p.best == 10.05 and p.since_best == 2
