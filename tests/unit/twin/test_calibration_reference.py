"""The reference profile reproduces the seeds' measured baseline (10 users, RTX 3080)."""

from __future__ import annotations

import numpy as np

from .conftest import cluster_with
from .test_twin_behaviour import run_static


def test_twin_reproduces_the_seeds_baseline_at_ten_users(profile):
    # seeds/004 "Baseline Results (2025-05-15)": avg 72 ms, p95 74 ms, ~13 req/s, ~43 % GPU, ~1.5 GB VRAM
    res = run_static(profile, cluster_with(), users=10, seconds=300, seed=2)
    rows = res["rows"]
    assert abs(res["lat"] - 0.072) / 0.072 < 0.05
    assert abs(res["p95"] - 0.074) / 0.074 < 0.08
    assert abs(res["rps"] - 13.0) / 13.0 < 0.08
    util = np.mean([r["gpu_util_ratio"] for r in rows])
    assert abs(util - 0.43) < 0.03
    vram = rows[-1]["vram_used_bytes"]
    assert abs(vram - 1.5e9) / 1.5e9 < 0.05
    assert all(r["failure_rps"] == 0 for r in rows)
