"""The committed policy matches today's schema and runs in the harness like any mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecrl.experiment.runner import RL_MODE, resolve_profile, run_one
from ecrl.load.shapes import get_shape
from ecrl.policy_model import PolicyModel, builtin_policy_path
from ecrl.schema import SCHEMA_HASH
from ecrl.twin.spec import ClusterSpec

pytestmark = pytest.mark.skipif(
    not Path(builtin_policy_path()).exists(), reason="no packaged policy (run make train)"
)


def test_packaged_policy_was_trained_on_the_current_state_schema() -> None:
    model = PolicyModel.load(builtin_policy_path())
    assert model.info["schema_hash"] == SCHEMA_HASH


def test_rl_mode_runs_in_the_harness_and_stays_inside_the_envelope() -> None:
    shape = get_shape("step").scaled(0.2)
    res = run_one(RL_MODE, shape, ClusterSpec(), resolve_profile("rtx3080-mobilenetv4"), seed=7)
    assert len(res.series) == int(shape.duration_s)
    assert res.kpis["gpu_replica_seconds"] > 0
    assert all("envelope cut" not in a.reason for _, a in res.actions)
