"""Queueing formulas the twin is built from — pure numpy, vectorized over any shape.

Each step of the twin treats a pod as two stages in tandem: a multi-core CPU stage
(protocol decode, pre/post-processing) and a dynamic-batching executor with ``instances``
parallel model instances on a time-sliced GPU. Backlog that a stage cannot clear within a
step is carried as a fluid queue; the random waiting inside a step (a stable queue still
makes requests wait) comes from the Sakasegawa approximation for GI/G/c queues.

References:
- H. Sakasegawa, "An approximation formula Lq ≈ αρ^β/(1−ρ)", Annals of the Institute of
  Statistical Mathematics 29 (1977) — the M/G/c waiting-time approximation used below, in the
  form popularized by Hopp & Spearman, *Factory Physics*, eq. 8.10.
- NVIDIA Triton docs, "Dynamic Batcher": batches form from queued requests up to
  ``max_batch_size``; ``max_queue_delay_microseconds`` lets the batcher wait for more.
"""

from __future__ import annotations

import numpy as np

RHO_CAP = 0.98
"""Utilization at which the stationary formulas stop; beyond it the fluid backlog takes over."""


def sakasegawa_wait(
    rho: np.ndarray, servers: np.ndarray, service_s: np.ndarray, scv: float
) -> np.ndarray:
    """Mean waiting time in a GI/G/c queue (Sakasegawa / Factory Physics 8.10).

    ``scv`` is (ca² + cs²)/2, the average squared coefficient of variation of arrivals and
    service. Returns 0 where ``rho`` is 0; ``rho`` is capped at :data:`RHO_CAP`.
    """
    r = np.clip(rho, 0.0, RHO_CAP)
    c = np.maximum(servers, 1.0)
    expo = np.sqrt(2.0 * (c + 1.0)) - 1.0
    return scv * (r**expo) / (c * (1.0 - r)) * service_s


def wait_probability(rho: np.ndarray, servers: np.ndarray) -> np.ndarray:
    """Probability that an arrival waits at all, the same approximation's ρ^(√(2(c+1))−1) term."""
    r = np.clip(rho, 0.0, RHO_CAP)
    c = np.maximum(servers, 1.0)
    return r ** (np.sqrt(2.0 * (c + 1.0)) - 1.0)


def batch_size(
    rate_per_instance: np.ndarray,
    max_batch: np.ndarray,
    delay_s: np.ndarray,
    cycle_s,
    iterations: int = 4,
) -> np.ndarray:
    """Mean dynamic-batch size an instance executes at a given arrival rate.

    While an instance runs a batch for ``cycle_s(b)`` seconds, ``rate × cycle_s(b)`` new
    requests queue up and form the next batch; a batching delay adds those arriving within
    it. Solved by fixed-point iteration from b=1 (monotone, converges in a few steps since the
    per-image cost is far below the per-batch cost). Capped at ``max_batch``.
    """
    b = np.ones_like(rate_per_instance, dtype=float)
    with_delay = 1.0 + rate_per_instance * delay_s
    for _ in range(iterations):
        b = np.clip(np.maximum(rate_per_instance * cycle_s(b), with_delay), 1.0, max_batch)
    return b


def uniform_plus_exp_cdf(
    x: np.ndarray, w0: np.ndarray, w1: np.ndarray, mean: np.ndarray
) -> np.ndarray:
    """CDF of U[w0, w1] + Exp(mean) at x, in a form that stays exact as w1 − w0 → 0."""
    width = np.maximum(w1 - w0, 0.0)
    rate = 1.0 / np.maximum(mean, 1e-9)
    x0 = np.maximum(x - w0, 0.0)
    x1 = np.maximum(x - w1, 0.0)
    z = rate * width
    # φ(z) = (1 − e^{−z}) / z, with φ(0) = 1
    phi = np.where(z > 1e-9, -np.expm1(-z) / np.maximum(z, 1e-300), 1.0 - 0.5 * z)
    beyond = 1.0 - np.exp(-rate * x1) * phi
    inside = (x0 + np.expm1(-rate * x0) / rate) / np.maximum(width, 1e-300)
    return np.where(x <= w0, 0.0, np.where(x < w1, np.clip(inside, 0.0, 1.0), beyond))


def latency_cdf(
    x: np.ndarray,
    base_s: np.ndarray,
    w0: np.ndarray,
    w1: np.ndarray,
    jitter_s: np.ndarray,
    p_wait: np.ndarray,
    wait_mean_s: np.ndarray,
) -> np.ndarray:
    """CDF of one pod's latency in one step.

    latency = base + U[w0, w1] (fluid backlog drained FIFO over the step) + an exponential
    tail: service jitter alone with probability 1 − p_wait, jitter plus a random queue wait
    (conditional mean ``wait_mean_s``) with probability ``p_wait``. Adding the two
    exponential means into one is a mean-preserving simplification that keeps the CDF in
    closed form.
    """
    y = x - base_s
    f_nowait = uniform_plus_exp_cdf(y, w0, w1, jitter_s)
    f_wait = uniform_plus_exp_cdf(y, w0, w1, jitter_s + wait_mean_s)
    return (1.0 - p_wait) * f_nowait + p_wait * f_wait


def mixture_quantile(
    q: float, weights: np.ndarray, lo: np.ndarray, hi: np.ndarray, cdf, iterations: int = 24
) -> np.ndarray:
    """Quantile of a weighted mixture over the last axis (pods), by bisection on the CDF.

    ``cdf(x)`` maps an array shaped like ``lo[..., None]`` broadcast against the components
    to component CDFs; ``weights`` (same shape as the components) need not sum to one.
    Where all weights are zero the result is NaN (no traffic → no latency, not zero).
    """
    total = weights.sum(axis=-1)
    a = lo.copy()
    b = hi.copy()
    safe_total = np.where(total > 0, total, 1.0)
    for _ in range(iterations):
        mid = 0.5 * (a + b)
        f = (weights * cdf(mid[..., None])).sum(axis=-1) / safe_total
        below = f < q
        a = np.where(below, mid, a)
        b = np.where(below, b, mid)
    return np.where(total > 0, 0.5 * (a + b), np.nan)
