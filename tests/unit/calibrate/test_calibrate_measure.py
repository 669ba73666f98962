"""Calibration on the local CPU: ONNX export parity, timings, and a profile the twin loads."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from ecrl.calibrate.measure import (
    JsonPathTiming,
    MachineInfo,
    Measurements,
    SessionMemory,
    TimingStats,
    decode_kserve_json,
    encode_kserve_json,
    export_onnx,
    fixed_input,
    measure_local_cpu,
    open_session,
    time_kserve_json,
    write_profile,
)
from ecrl.calibrate.mobilenetv4 import build_mobilenetv4_conv_small
from ecrl.errors import ConfigError
from ecrl.twin.profile import load_profile


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_mobilenetv4_conv_small(seed=0)


@pytest.fixture(scope="module")
def onnx_path(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "mnv4.onnx")


def _fixed_clock() -> dt.datetime:
    return dt.datetime(2025, 5, 15, 12, 0, tzinfo=dt.UTC)


def _stats(median_s: float) -> TimingStats:
    return TimingStats(median_s, median_s * 1.1, median_s, median_s * 0.05, 5)


def _synthetic(medians_s: tuple[float, ...]) -> Measurements:
    """Measurements with chosen batch medians, for testing the writer without timing."""
    machine = MachineInfo(
        "Test CPU", 4, 2, 8 * 2**30, "3.11", "2.x", "1.x", "2025-05-15T12:00:00", 0.1
    )
    return Measurements(
        model_name="mobilenetv4_conv_small",
        params=3_774_024,
        macs=186_005_568,
        input_shape=(3, 224, 224),
        onnx_bytes=15_000_000,
        opset=17,
        batch_sizes=tuple(2**i for i in range(len(medians_s))),
        exec_stats=tuple(_stats(t) for t in medians_s),
        json_path=JsonPathTiming(_stats(0.2), _stats(0.08), 3_100_000, 602_112),
        memory=SessionMemory(0.05, 33_000_000, 2_500_000),
        threads=2,
        repeats=5,
        warmup=1,
        seed=0,
        machine=machine,
    )


def test_exported_onnx_passes_checker_with_dynamic_batch(onnx_path: Path) -> None:
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_output_matches_torch_within_1e4(
    model: torch.nn.Module, onnx_path: Path, batch: int
) -> None:
    images = fixed_input(batch, seed=1)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    (actual,) = open_session(onnx_path, threads=1).run(None, {"input": images})
    assert actual.shape == (batch, 1000)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_kserve_json_round_trip_restores_the_tensor_exactly() -> None:
    tensor = fixed_input(1, seed=2)
    assert np.array_equal(decode_kserve_json(encode_kserve_json(tensor)), tensor)


def test_kserve_json_timing_returns_positive_costs() -> None:
    timing = time_kserve_json(2, warmup=0)
    assert timing.encode.median_s > 0
    assert timing.decode.median_s > 0
    assert timing.body_bytes > timing.tensor_bytes == 3 * 224 * 224 * 4


def test_tiny_measurement_writes_a_profile_the_twin_loads(tmp_path: Path) -> None:
    measured = measure_local_cpu(
        (1, 2),
        repeats=2,
        warmup=1,
        json_repeats=2,
        progress=False,
        workdir=tmp_path,
        clock=_fixed_clock,
    )
    profile = write_profile(measured, tmp_path / "local.yaml")
    assert profile == load_profile(str(tmp_path / "local.yaml"))
    exec_s = profile.compute.exec_s
    assert profile.compute.batch_sizes == (1, 2)
    assert all(t > 0 for t in exec_s)
    assert all(b >= a for a, b in itertools.pairwise(exec_s))
    assert profile.server.client_overhead_s > 0
    assert profile.server.cpu_s_per_request > 0
    assert measured.machine.date == "2025-05-15T12:00:00+00:00"


def test_profile_raises_a_noisy_dip_so_exec_times_never_decrease(tmp_path: Path) -> None:
    profile = write_profile(_synthetic((0.010, 0.009, 0.020)), tmp_path / "p.yaml")
    assert profile.compute.exec_s == (0.010, 0.010, 0.020)
    assert "raised from 0.009000" in (tmp_path / "p.yaml").read_text()


def test_profile_comments_every_figure(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write_profile(_synthetic((0.010, 0.015, 0.020)), path)
    lines = path.read_text().splitlines()
    data = yaml.safe_load(path.read_text())
    for section in ("model", "gpu", "server"):
        for key in data[section]:
            if key == "name":
                continue  # a name, not a figure; the only key repeated across sections
            (i,) = [n for n, ln in enumerate(lines) if ln.strip().startswith(f"{key}:")]
            has_comment = "#" in lines[i] or lines[i - 1].strip().startswith("#")
            assert has_comment, f"{section}.{key} has no source comment"
    exec_items = [ln for ln in lines if ln.strip().startswith("- ")]
    assert len(exec_items) == 3
    assert all("# batch" in ln for ln in exec_items)


def test_measure_rejects_batch_sizes_that_do_not_start_at_1() -> None:
    with pytest.raises(ConfigError, match="batch_sizes"):
        measure_local_cpu((2, 4), progress=False)
