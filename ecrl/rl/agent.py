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


def padded_head_index(nvec: Sequence[int]) -> torch.Tensor:
    """``[heads, widest]``: each head's columns of the logits, padded to the widest head with
    the index one past the last logit (the padding column :meth:`Agent.forward` appends)."""
    width, pad, index = max(nvec), sum(nvec), []
    for offset, n in zip(np.cumsum([0, *nvec[:-1]]).tolist(), nvec, strict=True):
        index.append([offset + i for i in range(n)] + [pad] * (width - n))
    return torch.tensor(index, dtype=torch.long)


def greedy_heads(logits: torch.Tensor, nvec: Sequence[int]) -> torch.Tensor:
    """Per-head argmax of masked logits (the reference for :meth:`Agent.forward`)."""
    heads = torch.split(logits, list(nvec), dim=1)
    return torch.stack([torch.argmax(h, dim=1) for h in heads], dim=1)


class Agent(nn.Module):
    """Actor (one categorical per action head) and critic over normalized observations."""

    def __init__(self, obs_dim: int, nvec: Sequence[int], hidden: int = 64) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.nvec = tuple(int(n) for n in nvec)
        self.obs_rms = RunningMeanStd(obs_dim)
        self.critic = mlp(obs_dim, hidden, 1, out_std=1.0)
        self.actor = mlp(obs_dim, hidden, sum(self.nvec), out_std=0.01)
        self.head_index = padded_head_index(self.nvec)

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
        """Greedy serving path: (action [N, heads] int64, masked logits, value [N, 1]).

        Written for the exported graph, which the policy server runs once per decision: one
        normalization for both networks, and every head's argmax in a single ArgMax over the
        heads padded to the widest with :data:`MASKED_LOGIT` (Pad, Gather, ArgMax)
        instead of a Split, an ArgMax and an Unsqueeze per head and a Concat. Each node
        costs onnxruntime a few microseconds, several times that once the caches are cold
        between sequential calls: onnxruntime runs 13 nodes of this graph, 26 of the per-head one.
        A padding entry comes after its head's own entries and ties resolve to the first
        index, so the action is the per-head argmax (:func:`greedy_heads`, tested).
        """
        z = self.obs_rms(states)
        logits = torch.where(masks, self.actor(z), MASKED_LOGIT)
        padded = nn.functional.pad(logits, (0, 1), value=MASKED_LOGIT)
        per_head = padded[:, self.head_index]  # [N, heads, widest]: one Gather
        return per_head.argmax(dim=2), logits, self.critic(z)

    @torch.no_grad()
    def act(self, states: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Greedy choices for numpy inputs (what :class:`ecrl.policies.learned` calls)."""
        action, _, _ = self(
            torch.as_tensor(states, dtype=torch.float32), torch.as_tensor(masks, dtype=torch.bool)
        )
        return action.numpy()
