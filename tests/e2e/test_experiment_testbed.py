"""`ecrl experiment --backend testbed`: a short baseline run end to end on the testbed gives
the same KPI table the twin gives, from Locust's log and the real Prometheus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ecrl.experiment.report import write_report
from ecrl.experiment.runner import ExperimentConfig
from ecrl.experiment.testbed_backend import MANIFEST, run_experiment_testbed
from ecrl.load.shapes import LoadShape

pytestmark = pytest.mark.e2e


def test_a_short_baseline_run_on_the_testbed(testbed, dataplane, endpoints, tmp_path: Path) -> None:
    ep = endpoints
    # An earlier controller left another model config loaded: the run must not inherit it.
    import tritonclient.http as th

    testbed.kubectl("apply", "-f", str(MANIFEST))
    dataplane.wait_pods(1, timeout_s=60)
    th.InferenceServerClient(dataplane.http_url.removeprefix("http://")).load_model(
        "mobilenetv4", config=json.dumps({"max_batch_size": 4})
    )
    shape = LoadShape("short-step", ((0, 3), (20, 3), (20, 25), (50, 25)))
    cfg = ExperimentConfig(modes=("hpa-cpu",), shapes=("short-step",), repeats=1)
    try:
        kpis, series = run_experiment_testbed(
            cfg, [shape], testbed, ep, tmp_path, slo_p95_s=0.15, progress=False
        )
    finally:
        testbed.kubectl("delete", "deployment,hpa", "mobilenetv4-triton", "--ignore-not-found")
        dataplane.wait_pods(0, timeout_s=60)
    row = kpis.iloc[0]
    assert row["throughput_rps"] > 5 and row["success_ratio"] > 0.99
    assert 0.1 < row["latency_p95_s"] < 10
    assert len(series) == 50
    assert series["replicas_ready"].notna().mean() > 0.8  # from kube-state-metrics
    assert series["gpu_util_ratio"].notna().mean() > 0.8  # from the emulator's DCGM series
    # sampled from Triton's config API: the Deployment's initial config, restored by the reset
    assert (series["max_batch_size"].dropna() == 8).all()
    assert not math.isnan(row["cpu_util_ratio"])
    files = write_report(
        tmp_path / "report", kpis, series, {"backend": "testbed", "slo_p95_s": ep.slo(0.15)}
    )
    assert Path(files.markdown).read_text().count("hpa-cpu") >= 1
