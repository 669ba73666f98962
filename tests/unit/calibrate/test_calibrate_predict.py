"""The twin's prediction of a closed-loop calibration point (Little's law, saturation)."""

from __future__ import annotations

import itertools

import pytest

from ecrl.calibrate.predict import closed_loop
from ecrl.emulator.fidelity import capacity_rps, scaled
from ecrl.emulator.pod import TritonConfig
from ecrl.twin.profile import Profile, builtin_profile_path, load_profile


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile(builtin_profile_path("rtx3080-mobilenetv4"))


@pytest.mark.parametrize("clients", [1, 2, 4, 10, 40, 200])
def test_prediction_obeys_littles_law_and_capacity(profile: Profile, clients: int) -> None:
    p = closed_loop(profile, clients, max_batch=8, instances=1, cpu_limit_cores=2.0)
    assert p.throughput_rps * p.latency_mean_s == pytest.approx(clients, rel=1e-4)
    assert p.throughput_rps <= p.capacity_rps * (1 + 1e-6)
    assert p.p95_s >= p.latency_mean_s * 0.9
    assert 1.0 <= p.batch <= min(8, clients)


def test_throughput_rises_with_clients_and_saturates_at_capacity(profile: Profile) -> None:
    tps = [closed_loop(profile, n, 8, 1, 2.0).throughput_rps for n in (1, 2, 4, 8, 32, 256)]
    assert all(b >= a for a, b in itertools.pairwise(tps))
    big = closed_loop(profile, 256, 8, 1, 2.0)
    assert big.saturated
    # the same capacity the emulator's fidelity check computes (server side: no client time)
    assert big.capacity_rps == pytest.approx(
        capacity_rps(profile, 1.0, TritonConfig(max_batch_size=8)), rel=0.02
    )


def test_one_client_sees_no_backlog_and_batch_one(profile: Profile) -> None:
    p = closed_loop(profile, 1, 8, 2, 2.0)
    assert not p.saturated
    assert p.batch == pytest.approx(1.0)
    s = profile.server
    no_wait = s.client_overhead_s + s.cpu_s_per_request + p.compute_s
    assert p.latency_mean_s == pytest.approx(no_wait, rel=0.15)


def test_gpu_bound_setting_scales_with_instances() -> None:
    # time-scaled emulator profile with a large CPU limit: batch 1 is GPU-bound
    prof = scaled(load_profile(builtin_profile_path("rtx3080-mobilenetv4")), 4.0)
    one = closed_loop(prof, 64, 1, 1, 16.0)
    two = closed_loop(prof, 64, 1, 2, 16.0)
    assert two.capacity_rps == pytest.approx(2 * one.capacity_rps, rel=1e-3)
    # the profile's batch-1 time (6 ms) stretched by its background GPU load, plus 0.5 ms host
    batch1_s = (0.006 / (1 - prof.gpu.background_util_ratio) + 0.0005) * 4.0
    assert one.compute_s == pytest.approx(batch1_s, rel=1e-6)


def test_capacity_with_batching_is_full_batches_not_batch_one() -> None:
    # GPU-bound (CPU plentiful): capacity = instances × B / cycle(B), what the emulator serves
    prof = scaled(load_profile(builtin_profile_path("rtx3080-mobilenetv4")), 4.0)
    for batch, inst in ((8, 1), (16, 2)):
        p = closed_loop(prof, 256, batch, inst, 64.0)
        cycle = prof.compute.exec_time_s(batch) / (1 - prof.gpu.background_util_ratio)
        full = inst * batch / (float(cycle) + prof.server.host_s_per_batch)
        assert p.capacity_rps == pytest.approx(full, rel=1e-6)
        assert p.throughput_rps > closed_loop(prof, 256, 1, inst, 64.0).capacity_rps * 2


def test_rejects_no_clients(profile: Profile) -> None:
    with pytest.raises(ValueError, match="clients"):
        closed_loop(profile, 0, 8, 1, 2.0)
