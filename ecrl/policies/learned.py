"""The learned scaling policy as a :class:`~ecrl.policies.base.Policy`: encode → mask → act.

The model only picks small steps among those the safety envelope allows now (masked logits);
:func:`ecrl.envelope.clamp` still runs on the decoded action as defence in depth, and anything
it cuts is named in the action's reason for the audit log. Torch-free: the model is anything
with ``act(states, masks)`` — the ONNX :class:`~ecrl.policy_model.PolicyModel` in the twin and
in production, the torch :class:`~ecrl.rl.agent.Agent` in training code.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ecrl.actions import HEADS, decode
from ecrl.envelope import EnvelopeConfig, action_masks, clamp
from ecrl.policies.base import Action, Observation
from ecrl.schema import encode


class ActsOnStates(Protocol):
    """What the policy needs from a model: greedy step indices for a batch of states."""

    def act(self, states: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """int [N, heads] step indices for float32 states [N, D] and bool masks [N, sum(NVEC)]."""
        ...


def describe_choice(choice: np.ndarray) -> str:
    """The chosen steps in words (``replicas +1, cpu_request -0.5``; ``hold`` if none)."""
    moves = [
        f"{h.name} {h.steps[int(c)]:+g}"
        for h, c in zip(HEADS, choice, strict=True)
        if h.steps[int(c)]
    ]
    return ", ".join(moves) or "hold"


class LearnedPolicy:
    """A trained policy: every ``period_s`` one masked, greedy step per managed setting."""

    def __init__(
        self,
        model: ActsOnStates,
        envelope: EnvelopeConfig | None = None,
        period_s: float = 5.0,
        name: str = "rl",
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s: {period_s} must be > 0")
        self.model = model
        self.envelope = envelope or EnvelopeConfig()
        self.envelope.validate()
        self.period_s = period_s
        self.name = name

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        envelope: EnvelopeConfig | None = None,
        period_s: float = 5.0,
        name: str = "rl",
    ) -> LearnedPolicy:
        """The ONNX policy at ``path`` (default: the packaged ``rl-policy.onnx``), checked."""
        from ecrl.policy_model import PolicyModel, builtin_policy_path

        model = PolicyModel.load(builtin_policy_path() if path is None else path)
        return cls(model, envelope, period_s, name)

    def reset(self) -> None:
        """Nothing to forget: the policy is a function of the current observation."""

    def decide(self, obs: Observation) -> Action:
        """Greedy allowed steps for ``obs``, decoded to targets and clamped by the envelope."""
        state = encode(obs)[None, :]
        mask = action_masks(obs, self.envelope)[None, :]
        choice = np.asarray(self.model.act(state, mask))[0]
        reason = f"{self.name}: {describe_choice(choice)}"
        action, cuts = clamp(obs, decode(obs, choice), self.envelope)
        if cuts:
            reason += "; envelope cut " + "; ".join(cuts)
        return replace(action, reason=reason)
