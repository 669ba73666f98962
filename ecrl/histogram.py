"""Quantiles from bucketed latency counts — one implementation for the twin and the KPIs."""

from __future__ import annotations

import numpy as np


def histogram_quantile_rows(hist: np.ndarray, edges: np.ndarray, q: float) -> np.ndarray:
    """Quantile per row of ``hist`` with linear interpolation inside the bucket.

    Same rule as Prometheus ``histogram_quantile``; NaN for a row with no observations.
    ``edges`` has ``hist.shape[1] + 1`` entries.
    """
    total = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    rank = q * total
    i = np.minimum((cum < rank[:, None]).sum(axis=1), hist.shape[1] - 1)
    rows = np.arange(hist.shape[0])
    below = np.where(i > 0, cum[rows, np.maximum(i - 1, 0)], 0.0)
    inside = hist[rows, i]
    frac = np.where(inside > 0, (rank - below) / np.where(inside > 0, inside, 1.0), 0.0)
    val = edges[i] + (edges[i + 1] - edges[i]) * np.clip(frac, 0.0, 1.0)
    return np.where(total > 0, val, np.nan)


def histogram_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Quantile of one histogram (see :func:`histogram_quantile_rows`)."""
    return float(histogram_quantile_rows(np.asarray(counts, dtype=float)[None, :], edges, q)[0])
