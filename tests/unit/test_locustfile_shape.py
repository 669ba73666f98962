"""The locustfile's load schedule follows ecrl.load.shapes (time/users scaling, end → None).

The pure logic (ecrl.load.locust_shape) is tested in-process. Locust itself is only ever
imported in a subprocess: ``import locust`` monkey-patches the standard library with gevent,
which must not happen inside pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecrl.errors import ConfigError
from ecrl.load.locust_shape import (
    DEFAULT_THINK_TIME_S,
    LoadSchedule,
    grpc_url_from_env,
    http_url_from_host,
    request_timeout_from_env,
    schedule_from_env,
    think_time_from_env,
)
from ecrl.load.shapes import BUILTIN_SHAPES, LoadShape
from ecrl.twin.spec import ClusterSpec

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtest" / "locustfile.py"


def test_no_shape_env_means_no_schedule():
    assert schedule_from_env({}) is None
    assert schedule_from_env({"ECRL_SHAPE": "  "}) is None


def test_unscaled_schedule_ticks_exactly_like_the_shared_shape():
    sched = schedule_from_env({"ECRL_SHAPE": "step"})
    shape = BUILTIN_SHAPES["step"]
    for t in (0.0, 50.0, 99.9, 100.0, 150.0, 250.0, 299.0):
        assert sched.tick(t) == shape.tick(t, sched.spawn_rate)
    assert sched.tick(300.0) is None and shape.tick(300.0) is None


def test_time_scale_compresses_the_shape():
    sched = schedule_from_env({"ECRL_SHAPE": "step", "ECRL_TIME_SCALE": "0.1"})
    assert sched.duration_s == pytest.approx(30.0)
    assert [sched.tick(t)[0] for t in (0, 9.9, 10, 19.9, 20, 29.9)] == [10, 10, 20, 20, 50, 50]
    assert sched.tick(30.0) is None
    # A compressed step ramps proportionally faster (10 users/s → 100 users/s).
    assert sched.spawn_rate == pytest.approx(100.0)


def test_spawn_rate_default_is_capped_and_overridable():
    fast = schedule_from_env({"ECRL_SHAPE": "step", "ECRL_TIME_SCALE": "0.01"})
    assert fast.spawn_rate == 100.0
    slow = schedule_from_env({"ECRL_SHAPE": "step", "ECRL_SPAWN_RATE": "2"})
    assert slow.tick(0) == (10, 2.0)


def test_users_scale_multiplies_then_rounds_never_below_one():
    sched = schedule_from_env({"ECRL_SHAPE": "step", "ECRL_USERS_SCALE": "0.05"})
    # 10 → 0.5 → 1 (kept alive), 20 → 1, 50 → 2.5 → 2 (round half to even).
    assert [sched.tick(t)[0] for t in (0, 100, 200)] == [1, 1, 2]
    ramp = schedule_from_env({"ECRL_SHAPE": "ramp", "ECRL_USERS_SCALE": "2"})
    assert ramp.tick(150)[0] == round(25.5 * 2)


def test_zero_users_stay_zero_after_scaling():
    shape = LoadShape("gap", ((0, 0), (10, 0), (10, 4), (20, 4)))
    sched = LoadSchedule(shape, users_scale=0.1)
    assert sched.tick(5)[0] == 0
    assert sched.tick(15)[0] == 1


def test_trace_csv_drives_the_schedule(tmp_path):
    trace = tmp_path / "prod.csv"
    trace.write_text("time_s,users\n0,4\n100,40\n")
    sched = schedule_from_env({"ECRL_SHAPE": str(trace), "ECRL_TIME_SCALE": "0.5"})
    assert sched.duration_s == 50 and sched.tick(25)[0] == 22
    assert sched.tick(50) is None


def test_open_loop_trace_becomes_constant_throughput_users(tmp_path):
    trace = tmp_path / "rps.csv"
    trace.write_text("time_s,rps\n0,10\n60,30\n")
    sched = schedule_from_env({"ECRL_SHAPE": str(trace), "ECRL_RPS_PER_USER": "2"})
    assert sched.open_loop
    assert sched.tick(0)[0] == 5 and sched.tick(30)[0] == 10
    assert sched.tick(60) is None


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"ECRL_SHAPE": "step", "ECRL_TIME_SCALE": "0"}, "ECRL_TIME_SCALE"),
        ({"ECRL_SHAPE": "step", "ECRL_TIME_SCALE": "fast"}, "ECRL_TIME_SCALE"),
        ({"ECRL_SHAPE": "step", "ECRL_USERS_SCALE": "-1"}, "ECRL_USERS_SCALE"),
        ({"ECRL_SHAPE": "step", "ECRL_USERS_SCALE": "nan"}, "ECRL_USERS_SCALE"),
        ({"ECRL_SHAPE": "nope"}, "shape"),
    ],
)
def test_bad_env_names_the_variable(env, field):
    with pytest.raises(ConfigError, match=field):
        schedule_from_env(env)


def test_think_time_defaults_to_the_twins_and_parses_lo_hi():
    assert think_time_from_env({}) == DEFAULT_THINK_TIME_S == ClusterSpec().think_time_s
    assert think_time_from_env({"ECRL_THINK_S": "0.1, 0.3"}) == (0.1, 0.3)
    for bad in ("1", "0.5,0.1", "a,b", "-1,1"):
        with pytest.raises(ConfigError, match="ECRL_THINK_S"):
            think_time_from_env({"ECRL_THINK_S": bad})


def test_urls_are_what_tritonclient_expects():
    assert grpc_url_from_env({}) == "127.0.0.1:8001"
    assert grpc_url_from_env({"ECRL_GRPC_URL": "grpc://10.0.0.5:9001/"}) == "10.0.0.5:9001"
    assert http_url_from_host("http://127.0.0.1:8000/") == ("127.0.0.1:8000", False)
    assert http_url_from_host("https://triton:443") == ("triton:443", True)
    assert http_url_from_host("127.0.0.1:8000") == ("127.0.0.1:8000", False)
    with pytest.raises(ConfigError, match="--host"):
        http_url_from_host(None)
    with pytest.raises(ConfigError, match="scheme"):
        http_url_from_host("ftp://x:1")
    assert request_timeout_from_env({"ECRL_REQUEST_TIMEOUT_S": "2.5"}) == 2.5


_PROBE = """
import json, sys
from locust.util.load_locustfile import load_locustfile
users, shapes = load_locustfile(sys.argv[1])
out = {"users": sorted(users), "shapes": [type(s).__name__ for s in shapes], "ticks": []}
for shape in shapes:
    for t in (0.0, 10.5, 29.0, 31.0):
        shape.get_run_time = lambda t=t: t
        out["ticks"].append(shape.tick())
print(json.dumps(out))
"""


def _load_locustfile(extra_env: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECRL_")} | extra_env
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(LOCUSTFILE)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_locust_sees_the_shape_class_only_when_ecrl_shape_is_set():
    plain = _load_locustfile({})
    assert plain["users"] == ["TritonGrpcUser", "TritonHttpUser"]
    assert plain["shapes"] == []
    shaped = _load_locustfile(
        {"ECRL_SHAPE": "step", "ECRL_TIME_SCALE": "0.1", "ECRL_USERS_SCALE": "0.2"}
    )
    assert shaped["shapes"] == ["EcrlLoadShape"]
    # step ×0.1 in time: 10 / 20 / 50 users at 0 / 10 / 20 s, ends at 30 s; ×0.2 users.
    assert shaped["ticks"] == [[2, 100.0], [4, 100.0], [10, 100.0], None]
