"""The PPO actor-critic: observation normalization, two small MLPs, masked multi-head actions.

Kept apart from the training loop so the export (:mod:`ecrl.rl.export`) and the tests use the
exact network that was trained. Normalization statistics live in buffers of the module, so
they are saved with a checkpoint and baked into the ONNX graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

MASKED_LOGIT = -1e8
"""Logit of a step the safety envelope forbids: probability exactly 0 after softmax."""
OBS_CLIP = 10.0
"""Normalized observations are clipped to ±10 standard deviations (as gymnasium's wrapper)."""


class RunningMeanStd(nn.Module):
    """Running mean/variance of observations (parallel update of Chan et al.)."""

    def __init__(self, dim: int, epsilon: float = 1e-4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        b_mean, b_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(x.dtype), torch.sqrt(self.var + 1e-8).to(x.dtype)
        return torch.clamp((x - mean) / std, -OBS_CLIP, OBS_CLIP)


def layer_init(layer: nn.Linear, std: float = float(np.sqrt(2)), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias (cleanrl's initialization for PPO)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(n_in: int, hidden: int, n_out: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(n_in, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, n_out), std=out_std),
    )


class Agent(nn.Module):
    """Actor (one categorical per action head) and critic over normalized observations."""

    def __init__(self, obs_dim: int, nvec: Sequence[int], hidden: int = 64) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.nvec = tuple(int(n) for n in nvec)
        self.obs_rms = RunningMeanStd(obs_dim)
        self.critic = mlp(obs_dim, hidden, 1, out_std=1.0)
        self.actor = mlp(obs_dim, hidden, sum(self.nvec), out_std=0.01)

    def value(self, states: torch.Tensor) -> torch.Tensor:
        return self.critic(self.obs_rms(states)).squeeze(-1)

    def masked_logits(self, states: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        logits = self.actor(self.obs_rms(states))
        return torch.where(masks, logits, torch.full_like(logits, MASKED_LOGIT))

    def action_and_value(
        self,
        states: torch.Tensor,
        masks: torch.Tensor,
        action: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or score ``action``): returns action [N, heads], log-prob, entropy, value."""
        heads = torch.split(self.masked_logits(states, masks), self.nvec, dim=1)
        dists = [Categorical(logits=h) for h in heads]
        if action is None:
            action = torch.stack([d.sample() for d in dists], dim=1)
        logprob = torch.stack([d.log_prob(a) for d, a in zip(dists, action.T, strict=True)])
        entropy = torch.stack([d.entropy() for d in dists])
        return action, logprob.sum(0), entropy.sum(0), self.value(states)

    def forward(
        self, states: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Greedy serving path: (action [N, heads] int64, masked logits, value [N, 1])."""
        logits = self.masked_logits(states, masks)
        heads = torch.split(logits, self.nvec, dim=1)
        action = torch.stack([torch.argmax(h, dim=1) for h in heads], dim=1)
        return action, logits, self.value(states).unsqueeze(-1)

    @torch.no_grad()
    def act(self, states: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Greedy choices for numpy inputs (what :class:`ecrl.policies.learned` calls)."""
        action, _, _ = self(
            torch.as_tensor(states, dtype=torch.float32), torch.as_tensor(masks, dtype=torch.bool)
        )
        return action.numpy()
