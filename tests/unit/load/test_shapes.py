"""Load shapes: the seeds' definitions, Locust's tick() contract and trace loading."""

from __future__ import annotations

import pytest

from ecrl.errors import ConfigError
from ecrl.load.shapes import BUILTIN_SHAPES, get_shape, load_trace


def test_seed_step_shape_is_10_then_20_then_50_users():
    s = BUILTIN_SHAPES["step"]
    assert [s.tick(t)[0] for t in (0, 99, 100, 199, 200, 299)] == [10, 10, 20, 20, 50, 50]
    assert s.tick(300) is None


def test_seed_ramp_goes_from_1_to_50_users_over_five_minutes():
    s = BUILTIN_SHAPES["ramp"]
    assert s.value_at(0) == 1 and s.value_at(300) == 50 and s.duration_s == 300
    assert s.value_at(150) == pytest.approx(25.5)


def test_low_medium_high_are_10_50_100_users():
    assert [BUILTIN_SHAPES[n].value_at(10) for n in ("low", "medium", "high")] == [10, 50, 100]


def test_trace_with_users_column_replays_as_shape(tmp_path):
    p = tmp_path / "prod.csv"
    p.write_text("time_s,users,comment\n0,5,night\n60,40,peak\n120,10,x\n")
    s = get_shape(str(p))
    assert s.kind == "users" and s.duration_s == 120 and s.value_at(30) == pytest.approx(22.5)


def test_trace_with_rps_column_is_open_loop(tmp_path):
    p = tmp_path / "rps.csv"
    p.write_text("time_s,rps\n5,10\n10,20\n")
    s = load_trace(p)
    assert s.kind == "rps" and s.value_at(0) == 10


def test_bad_trace_row_names_the_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("time_s,users\n0,5\n10,lots\n")
    with pytest.raises(ConfigError, match="line 3"):
        load_trace(p)


def test_trace_without_users_or_rps_column_is_refused(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("time_s,load\n0,5\n")
    with pytest.raises(ConfigError, match="users\\|rps"):
        load_trace(p)


def test_unknown_shape_name_lists_the_built_ins():
    with pytest.raises(ConfigError, match="constant"):
        get_shape("nope")
