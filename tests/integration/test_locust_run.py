"""Real Locust (headless, in a subprocess) with both tritonclient users against a real server.

The server is the data-plane emulator in standalone mode (KServe v2 over HTTP and gRPC).
Locust never runs inside pytest: ``import locust`` monkey-patches the standard library.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pytest

from ecrl.load.locust_run import HISTORY_COLUMNS, LocustRunError, run_locust
from ecrl.testbed.procs import free_port
from tests.integration.standalone import standalone_emulator

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Server:
    http_url: str
    grpc_url: str


@pytest.fixture(scope="module")
def emulator() -> Iterator[Server]:
    if importlib.util.find_spec("ecrl.emulator") is None:
        pytest.skip("emulator not available")
    args = ("--pods", "1", "--time-scale", "1")
    with standalone_emulator(*args, timeout_s=READY_TIMEOUT_S) as ports:
        yield Server(f"http://127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}")


def test_locust_step_shape_with_http_and_grpc_users_succeeds(emulator: Server, tmp_path):
    # The seeds' step shape squeezed into 9 s (3 s per level), at a tenth of the users: 1→2→5.
    result = run_locust(
        emulator.http_url,
        "step",
        tmp_path / "run",
        grpc_url=emulator.grpc_url,
        time_scale=9 / 300,
        users_scale=0.1,
        extra_env={"ECRL_THINK_S": "0.05,0.1"},
        timeout_s=90,
    )
    hist = result.history
    assert list(hist.columns[: len(HISTORY_COLUMNS)]) == list(HISTORY_COLUMNS.values())
    agg = hist[hist["name"] == "Aggregated"]
    assert len(agg) >= 5, hist
    assert agg["user_count"].max() == 5  # the shape reached its last level
    assert set(hist.loc[hist["name"] == "infer", "request_type"]) == {"HTTP", "gRPC"}

    # Locust's own end-of-run table: both protocols served, nothing failed.
    stats = pd.read_csv(f"{result.csv_prefix}_stats.csv", keep_default_na=False)
    per_type = stats[stats["Name"] == "infer"].set_index("Type")
    assert set(per_type.index) == {"HTTP", "gRPC"}
    assert (per_type["Request Count"] > 10).all(), per_type
    assert (per_type["Failure Count"] == 0).all(), result.failures
    assert (per_type["Average Content Size"] == 4000).all()  # [1, 1000] float32 logits

    assert result.total_failures == 0 and result.total_requests >= per_type["Request Count"].sum()
    assert result.exceptions.empty, result.exceptions
    assert result.requests is not None and len(result.requests) == result.total_requests
    assert (result.requests["exception"] == "").all()


def test_unreachable_server_counts_as_failed_requests_not_a_failed_run(tmp_path):
    closed = free_port()  # nothing listens there
    result = run_locust(
        f"http://127.0.0.1:{closed}",
        None,
        tmp_path / "down",
        grpc_url=f"127.0.0.1:{closed}",
        users=2,
        run_time_s=3,
        extra_env={"ECRL_THINK_S": "0.2,0.3", "ECRL_REQUEST_TIMEOUT_S": "1"},
        timeout_s=60,
    )
    assert result.total_requests > 0
    assert result.total_failures == result.total_requests
    assert set(result.totals["request_type"]) == {"HTTP", "gRPC"}
    assert not result.failures.empty and result.exceptions.empty, result.exceptions


def test_locust_that_cannot_start_raises_with_its_log_tail(tmp_path):
    with pytest.raises(LocustRunError, match="ECRL_THINK_S"):
        run_locust(
            "http://127.0.0.1:1",
            None,
            tmp_path / "bad",
            users=1,
            run_time_s=1,
            extra_env={"ECRL_THINK_S": "slow"},
            timeout_s=60,
        )
