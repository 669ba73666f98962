"""The learned policy live on the testbed: ``ecrl experiment --backend testbed`` in ``rl`` mode.

Under Locust load the product's services run as a user deploys them: the real kube-scheduler
calls our extender for the Deployment's pods (its JSON request log names each pod and the
nodes that passed; the pod is bound to one of them), the actuator changes the Deployment
through the policy server's decisions (audit log), and the state it decides on comes from the
collector's PromQL against the real Prometheus (the rate it saw matches Locust's own count).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ecrl.experiment.runner import ExperimentConfig
from ecrl.experiment.testbed_backend import DEPLOYMENT, run_experiment_testbed
from ecrl.load.shapes import LoadShape
from ecrl.testbed import procs
from ecrl.testbed.services import EXTENDER

pytestmark = pytest.mark.e2e
CHANGES = {"replicas", "resize", "rolling_update", "triton_config"}


def log_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(errors="replace").splitlines() if x[:1] == "{"]


def test_rl_mode_runs_the_policy_through_the_services(
    testbed, dataplane, endpoints, tmp_path: Path
) -> None:
    ep = endpoints
    shape = LoadShape("rl-step", ((0, 4), (20, 4), (20, 24), (75, 24)))
    cfg = ExperimentConfig(modes=("rl",), shapes=("rl-step",), repeats=1)
    try:
        kpis, series = run_experiment_testbed(
            cfg, [shape], testbed, ep, tmp_path, slo_p95_s=0.15, progress=False
        )
        pods = json.loads(
            testbed.kubectl(
                "get", "pods", "-l", f"app.kubernetes.io/name={DEPLOYMENT}", "-o", "json"
            )
        )["items"]
    finally:
        testbed.kubectl("delete", "deployment,hpa", DEPLOYMENT, "--ignore-not-found")
        dataplane.wait_pods(0, timeout_s=60)

    # 1. the scheduler called our extender for the Deployment's pods; each was bound to a node
    #    the extender passed
    calls = [
        x
        for x in log_lines(procs.run_dir(testbed.name) / f"{EXTENDER}.log")
        if x.get("verb") == "filter" and x.get("pod", "").startswith(f"default/{DEPLOYMENT}-")
    ]
    assert calls, "the scheduler never called the extender's /filter for the Deployment's pods"
    passed = {x["pod"].split("/", 1)[1]: x["result"]["passed"] for x in calls}
    bound = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in pods}
    checked = [name for name in bound if name in passed]
    assert checked, f"no pod of the run in the extender's log: {sorted(bound)} vs {sorted(passed)}"
    assert all(bound[n] in passed[n] for n in checked), (bound, passed)
    print(f"\nextender /filter line: {json.dumps(calls[-1])}\nbound: {bound}")

    # 2. the actuator acted on the policy's decisions (resources, batching or replicas)
    (audit_file,) = (tmp_path / "locust" / "audit").glob("*.jsonl")
    audit = log_lines(audit_file)
    decided = [x for x in audit if x["outcome"] == "policy"]
    assert len(decided) >= 0.8 * len([x for x in audit if x["leader"]]), "mostly fallback ticks"
    applied = [
        (x["tick"], op["op"], op["outcome"], op["detail"])
        for x in decided
        for op in x["ops"]
        if op["op"] in CHANGES and op["outcome"] in ("ok", "fallback")
    ]
    assert applied, "the policy changed nothing in the whole run"
    print(f"policy ops: {applied}")

    # 3. the state came from Prometheus: the rate the policy saw under the step is Locust's
    #    (in the box's units: the collector multiplies the emulator's rate by its time scale)
    late = [x for x in decided if x["observation"]["request_rate_rps"] is not None][-4:]
    seen = np.mean([x["observation"]["request_rate_rps"] for x in late]) / dataplane.time_scale
    served = series["throughput_rps"].iloc[-30:].mean()
    assert 0.6 < seen / served < 1.5, (seen, served)
    assert all(not x["state"]["missing_inputs"] or x["state"]["values"] for x in late)

    row = kpis.iloc[0]
    assert row["mode"] == "rl" and row["throughput_rps"] > 5 and row["success_ratio"] > 0.95
    print(f"collector rate {seen:.1f} req/s vs Locust {served:.1f}; KPIs {row.to_dict()}")
