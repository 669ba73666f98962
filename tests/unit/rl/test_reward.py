"""The reward: each term by hand on a small tick, and the weights applied with the right signs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ecrl.rl.reward import RewardConfig, TickOutcome, reward, reward_terms

NAN = np.nan
SLO = 0.15


def outcome() -> TickOutcome:
    """Two envs, four seconds each."""
    return TickOutcome(
        p95_s=np.array(
            [
                [0.10, 0.20, NAN, 0.45],  # 0.20 and 0.45 over the SLO; NaN = nothing served
                [0.15, NAN, 1.50, 0.00],  # 0.15 is not over; NaN second had 2 failures
            ]
        ),
        failed=np.array([[0, 0, 0, 0], [0, 2, 0, 0]], dtype=float),
        workload_gpu_busy_ratio=np.array([0.6, 0.2]),
        held_share=np.array([0.25, 1.0]),
        churn=np.array([0.0, 3.0]),
    )


EXPECTED_TERMS = {
    "gpu_util_gain": [0.6, 0.2],
    "resource_efficiency": [0.75, 0.0],
    # env 0: (0 + (0.20/0.15 − 1) + 0 + (0.45/0.15 − 1)) / 4; env 1: (0 + 0 + 3 (capped) + 0) / 4
    "latency_penalty": [(1 / 3 + 2.0) / 4, 3.0 / 4],
    "qos_violation": [0.5, 0.5],
    "churn": [0.0, 3.0],
}


def test_reward_terms_by_hand() -> None:
    terms = reward_terms(outcome(), SLO)
    assert set(terms) == set(EXPECTED_TERMS)
    for name, expected in EXPECTED_TERMS.items():
        np.testing.assert_allclose(terms[name], expected, err_msg=name)


def test_reward_with_given_weights_by_hand() -> None:
    # explicit weights: the defaults are tuned, the formula is what is tested
    cfg = RewardConfig(
        w_gpu_util_gain=0.25,
        w_resource_efficiency=1.0,
        w_latency_penalty=0.5,
        w_qos_violation=4.0,
        w_churn=0.25,
    )
    r = reward(reward_terms(outcome(), SLO), cfg)
    # 0.25·gpu + 1·eff − 0.5·lat − 4·qos − 0.25·churn
    env0 = 0.25 * 0.6 + 0.75 - 0.5 * (7 / 12) - 4 * 0.5 - 0.0
    env1 = 0.25 * 0.2 + 0.0 - 0.5 * 0.75 - 4 * 0.5 - 0.25 * 3
    np.testing.assert_allclose(r, [env0, env1])
    np.testing.assert_allclose(r, [-1.3916666666666666, -3.075])


WEIGHTS = {
    "gpu_util_gain": ("w_gpu_util_gain", +1),
    "resource_efficiency": ("w_resource_efficiency", +1),
    "latency_penalty": ("w_latency_penalty", -1),
    "qos_violation": ("w_qos_violation", -1),
    "churn": ("w_churn", -1),
}


@pytest.mark.parametrize("term", sorted(WEIGHTS))
def test_each_weight_scales_its_own_term_with_its_sign(term: str) -> None:
    weight, sign = WEIGHTS[term]
    zero = RewardConfig(**{w: 0.0 for w, _ in WEIGHTS.values()})
    cfg = dataclasses.replace(zero, **{weight: 2.0})
    terms = reward_terms(outcome(), SLO)
    np.testing.assert_allclose(reward(terms, cfg), sign * 2.0 * terms[term])


def test_nan_p95_without_failures_is_no_violation_and_no_latency_penalty() -> None:
    out = TickOutcome(
        p95_s=np.full((1, 5), NAN),
        failed=np.zeros((1, 5)),
        workload_gpu_busy_ratio=np.zeros(1),
        held_share=np.zeros(1),
        churn=np.zeros(1),
    )
    terms = reward_terms(out, SLO)
    assert terms["qos_violation"][0] == 0.0
    assert terms["latency_penalty"][0] == 0.0
    assert np.isfinite(reward(terms, RewardConfig())).all()


def test_any_failure_is_a_violation_even_under_the_slo() -> None:
    out = dataclasses.replace(
        outcome(), p95_s=np.full((2, 4), 0.01), failed=np.array([[0, 0, 0, 1], [0, 0, 0, 0]])
    )
    np.testing.assert_allclose(reward_terms(out, SLO)["qos_violation"], [0.25, 0.0])


def test_latency_penalty_is_capped_at_three_slos_over() -> None:
    out = dataclasses.replace(outcome(), p95_s=np.full((2, 4), 1e6))
    np.testing.assert_allclose(reward_terms(out, SLO)["latency_penalty"], [3.0, 3.0])
