"""Fault injection on the testbed: what the controller does when a dependency dies.

Under a constant Locust load, with the product's services running as a user deploys them
(:mod:`ecrl.testbed.services`), three faults one after the other:

1. **policy server killed** (SIGKILL) mid-run: how many ticks until the actuator falls back
   and why, then restarted: how long until the policy decides again;
2. **Prometheus stopped**: the collector has no fresh input, so no state; the actuator holds
   ``hold_ticks`` ticks, then falls back with every measurement missing (nothing invented:
   the fallback's observation carries no rate, latency or CPU), then Prometheus restarts:
   how long until a fresh state and a policy tick;
3. **extender killed**: the Deployment is scaled up by one (the actuator stopped first, so it
   does not undo it): how long until the new pod is bound, and to which node (the scheduler
   treats our extender as ``ignorable``).

Throughout, the pods and ``spec.replicas`` are sampled every second: the report gives the
most unschedulable pods seen (must be 0) and the replica range (must stay in [min, max]).
The report is JSON plus a Markdown table; ``python -m ecrl.testbed.faults --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecrl.testbed import monitoring, procs
from ecrl.testbed.cluster import DEFAULT_NAME, Testbed, TestbedError, attach
from ecrl.testbed.procs import wait_until
from ecrl.testbed.services import ACTUATOR, EXTENDER, POLICY, Services, ServicesConfig

DEPLOYMENT = "mobilenetv4-triton"
SELECTOR = "app.kubernetes.io/name=mobilenetv4-triton"


@dataclass(frozen=True)
class FaultPlan:
    """Where the testbed answers and how the services run during the faults."""

    prom_port: int = 9090
    ksm_port: int = 8080
    triton_http: str = "http://127.0.0.1:8000"
    triton_grpc: str = "127.0.0.1:8001"
    metrics_url: str = "http://127.0.0.1:8002"
    """The emulator's metrics (how many pods it serves, for the reset)."""
    namespace: str = "default"
    period_s: float = 3.0
    hold_ticks: int = 2
    min_replicas: int = 1
    max_replicas: int = 4
    users: int = 12
    time_scale: float = 4.0
    slo_p95_s: float = 0.15

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"


@dataclass
class FaultReport:
    """The measured numbers; :meth:`problems` lists every broken promise (empty = all held)."""

    period_s: float
    hold_ticks: int
    min_replicas: int
    max_replicas: int
    policy_kill: dict[str, Any] = field(default_factory=dict)
    prometheus_stop: dict[str, Any] = field(default_factory=dict)
    extender_kill: dict[str, Any] = field(default_factory=dict)
    max_unschedulable_pods: int = 0
    replicas_seen: list[int] = field(default_factory=list)
    audit_ticks: dict[str, int] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = []
        pk, ps, ek = self.policy_kill, self.prometheus_stop, self.extender_kill
        if pk.get("first_tick_outcome") != "fallback":
            out.append(f"policy killed: first tick was {pk.get('first_tick_outcome')}")
        if pk.get("recovered_s") is None:
            out.append("policy restarted: no policy tick afterwards")
        if ps.get("hold_ticks") != self.hold_ticks:
            out.append(f"prometheus stopped: held {ps.get('hold_ticks')} ticks")
        if ps.get("fallback_reason") != "stale_state":
            out.append(f"prometheus stopped: fallback reason {ps.get('fallback_reason')}")
        if ps.get("measurements_in_fallback"):
            out.append(f"prometheus stopped: fallback saw {ps['measurements_in_fallback']}")
        if ps.get("recovered_s") is None:
            out.append("prometheus restarted: no policy tick afterwards")
        if not ek.get("node"):
            out.append("extender killed: the new pod was not scheduled")
        if self.max_unschedulable_pods:
            out.append(f"{self.max_unschedulable_pods} unschedulable pod(s) seen")
        lo, hi = self.min_replicas, self.max_replicas
        if any(not lo <= r <= hi for r in self.replicas_seen):
            out.append(f"replicas {sorted(set(self.replicas_seen))} outside [{lo}, {hi}]")
        return out

    def markdown(self) -> str:
        pk, ps, ek = self.policy_kill, self.prometheus_stop, self.extender_kill

        def s(v: float | None) -> str:
            return "—" if v is None else f"{v:.1f} s"

        rows = [
            (
                "policy server killed (SIGKILL)",
                f"first tick after the kill: {pk.get('first_tick_outcome')} "
                f"({pk.get('fallback_reason')}), {s(pk.get('first_tick_after_s'))} after it "
                f"(tick {pk.get('ticks_after')} after; period {self.period_s:g} s)",
            ),
            (
                "… restarted",
                f"first policy tick {s(pk.get('recovered_s'))} after it answered "
                f"({pk.get('recovery_ticks')} tick(s))",
            ),
            (
                "Prometheus stopped",
                f"{ps.get('hold_ticks')} hold tick(s), then {ps.get('fallback_reason')} "
                f"fallback {s(ps.get('fallback_after_s'))} after the stop; measurements the "
                f"fallback saw: {ps.get('measurements_in_fallback') or 'none'}; replica "
                f"changes while stale: {ps.get('replica_changes_while_stale')}",
            ),
            (
                "… restarted",
                f"fresh collector state {s(ps.get('fresh_state_s'))}, first policy tick "
                f"{s(ps.get('recovered_s'))} after it was ready",
            ),
            (
                "extender killed, Deployment scaled +1",
                f"new pod bound to {ek.get('node')} {s(ek.get('bound_after_s'))} after the "
                f"scale (scheduler: extender ignorable)",
            ),
            (
                "throughout",
                f"unschedulable pods at most {self.max_unschedulable_pods}; replicas seen "
                f"{sorted(set(self.replicas_seen))} within [{self.min_replicas}, "
                f"{self.max_replicas}]; audit {self.audit_ticks}; load {self.load}",
            ),
        ]
        lines = ["| fault | measured |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in rows]
        return "\n".join(lines)


# ------------------------------------------------------------------------ observation
class PodWatch:
    """Samples the Deployment's pods and ``spec.replicas`` once a second in a thread."""

    def __init__(self, tb: Testbed, namespace: str) -> None:
        self.tb, self.ns = tb, namespace
        self.max_unschedulable = 0
        self.replicas: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int | None]:
        out = self.tb.kubectl("get", "pods", "-n", self.ns, "-l", SELECTOR, "-o", "json")
        pods = [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]
        unschedulable = sum(
            1
            for p in pods
            for c in p["status"].get("conditions", [])
            if c["type"] == "PodScheduled" and c["status"] == "False"
        )
        dep = self.tb.kubectl(
            "get", "deployment", DEPLOYMENT, "-n", self.ns, "-o", "jsonpath={.spec.replicas}"
        )
        return unschedulable, int(dep) if dep.strip() else None

    def record(self) -> None:
        """Take one sample; an apiserver hiccup is no sample, not a zero."""
        try:
            unschedulable, replicas = self.sample()
        except (TestbedError, ValueError, KeyError):
            return
        self.max_unschedulable = max(self.max_unschedulable, unschedulable)
        if replicas is not None:
            self.replicas.append(replicas)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.record()
            self._stop.wait(1.0)

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.record()  # the state the faults left


def read_audit(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


MEASURED = ("request_rate_rps", "p95_latency_s", "success_ratio", "gpu_util_ratio")


def measurements(observation: dict | None) -> list[str]:
    """Measured fields an audit line's observation carries (a fallback on stale must have none)."""
    if not observation:
        return []
    found = [k for k in MEASURED if observation.get(k) is not None]
    if any(v is not None for v in observation.get("pod_cpu_usage_cores", [])):
        found.append("pod_cpu_usage_cores")
    return found


# ------------------------------------------------------------------------ the faults
def run_faults(
    tb: Testbed, plan: FaultPlan, out_dir: Path, log: Callable[[str], None]
) -> FaultReport:
    """Reset the Deployment, start the services and Locust, inject the three faults."""
    from ecrl.experiment.testbed_backend import TestbedEndpoints, reset
    from ecrl.load.locust_run import run_locust

    out_dir.mkdir(parents=True, exist_ok=True)
    ep = TestbedEndpoints(
        prom_url=plan.prom_url,
        triton_http=plan.triton_http,
        triton_grpc=plan.triton_grpc,
        metrics_url=plan.metrics_url,
        namespace=plan.namespace,
    )
    services = Services(
        tb,
        ServicesConfig(
            prom_url=plan.prom_url,
            triton_http=plan.triton_http,
            namespace=plan.namespace,
            slo_p95_s=plan.slo_p95_s,
            time_scale=plan.time_scale,
            min_replicas=plan.min_replicas,
            max_replicas=plan.max_replicas,
            period_s=plan.period_s,
            hold_ticks=plan.hold_ticks,
            lease_name="ecrl-actuator-faults",
        ),
    )
    audit = out_dir / "audit.jsonl"
    audit.unlink(missing_ok=True)
    report = FaultReport(plan.period_s, plan.hold_ticks, plan.min_replicas, plan.max_replicas)
    locust_box: dict[str, Any] = {}
    stop_load = threading.Event()
    locust = threading.Thread(
        target=lambda: locust_box.update(
            result=run_locust(
                plan.triton_http,
                None,
                out_dir / "locust",
                grpc_url=plan.triton_grpc,
                users=plan.users,
                run_time_s=900,
                stop=stop_load,
            )
        ),
        daemon=True,
    )
    try:
        services.start_policy_server()
        services.start_collector()
        services.start_extender()
        reset(tb, ep, "rl")  # also loads the Deployment's initial Triton config
        services.start_actuator(audit)
        locust.start()
        with PodWatch(tb, plan.namespace) as watch:
            wait_until(
                "two policy ticks",
                lambda: sum(x["outcome"] == "policy" for x in read_audit(audit)) >= 2,
                20 * plan.period_s,
            )
            log("policy deciding; killing the policy server")
            report.policy_kill = _kill_policy(services, audit, plan)
            log(f"policy kill: {report.policy_kill}; stopping Prometheus")
            report.prometheus_stop = _stop_prometheus(tb, services, audit, plan)
            log(f"prometheus stop: {report.prometheus_stop}; killing the extender")
            report.extender_kill = _kill_extender(tb, services, plan)
            log(f"extender kill: {report.extender_kill}")
        report.max_unschedulable_pods = watch.max_unschedulable
        report.replicas_seen = sorted(set(watch.replicas))
    finally:
        stop_load.set()
        services.stop_all()
        if locust.is_alive():
            locust.join(timeout=60)
    lines = read_audit(audit)
    report.audit_ticks = {
        o: sum(x["outcome"] == o for x in lines) for o in ("policy", "fallback", "hold")
    }
    res = locust_box.get("result")
    if res is not None:
        report.load = {
            "requests": int(res.totals["requests"].sum()),
            "failures": int(res.totals["failures"].sum()),
        }
    (out_dir / "faults.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out_dir / "faults.md").write_text(report.markdown() + "\n")
    return report


def _ticks_after(audit: Path, t: float) -> list[dict]:
    return [x for x in read_audit(audit) if x["time_s"] > t]


def _kill_policy(services: Services, audit: Path, plan: FaultPlan) -> dict[str, Any]:
    killed = time.time()
    services.kill(POLICY)
    before = len(read_audit(audit))
    first = wait_until(
        "a tick after the kill", lambda: _ticks_after(audit, killed), 4 * plan.period_s
    )[0]
    wait_until("two more ticks", lambda: len(_ticks_after(audit, killed)) >= 3, 6 * plan.period_s)
    services.start_policy_server()
    ready = time.time()
    back = wait_until(
        "a policy tick after the restart",
        lambda: [x for x in _ticks_after(audit, ready) if x["outcome"] == "policy"],
        10 * plan.period_s,
    )[0]
    fallbacks = [x for x in _ticks_after(audit, killed) if x["time_s"] < ready]
    return {
        "first_tick_outcome": first["outcome"],
        "fallback_reason": first["fallback_reason"],
        "first_tick_after_s": round(first["time_s"] - killed, 2),
        "ticks_after": first["tick"] - before,
        "fallback_ticks": sum(x["outcome"] == "fallback" for x in fallbacks),
        "recovered_s": round(back["time_s"] - ready, 2),
        "recovery_ticks": len([x for x in _ticks_after(audit, ready) if x["tick"] <= back["tick"]]),
    }


def _stop_prometheus(
    tb: Testbed, services: Services, audit: Path, plan: FaultPlan
) -> dict[str, Any]:
    stopped = time.time()
    procs.stop(tb.name, monitoring.PROMETHEUS)

    def first_fallback() -> list[dict]:
        return [x for x in _ticks_after(audit, stopped) if x["outcome"] == "fallback"]

    fb = wait_until("a fallback tick", first_fallback, (plan.hold_ticks + 6) * plan.period_s)[0]
    window = [x for x in _ticks_after(audit, stopped) if x["tick"] <= fb["tick"]]
    # ticks before the collector noticed (its state still fresh) are policy ticks; count holds
    holds = [x for x in window if x["outcome"] == "hold"]
    wait_until("one more fallback tick", lambda: len(first_fallback()) >= 2, 3 * plan.period_s)
    stale_fallbacks = first_fallback()
    replica_ops = [op for x in stale_fallbacks for op in x["ops"] if op["op"] == "replicas"]
    restart = time.time()
    monitoring.start_prometheus(tb, plan.prom_port, plan.ksm_port)
    ready = time.time()

    back = wait_until(
        "a policy tick after Prometheus is back",
        lambda: [x for x in _ticks_after(audit, ready) if x["outcome"] == "policy"],
        20 * plan.period_s,
    )[0]
    fresh = [x for x in _ticks_after(audit, ready) if x["state"] and not x["state"]["stale"]]
    return {
        "hold_ticks": len(holds),
        "fallback_reason": fb["fallback_reason"],
        "fallback_after_s": round(fb["time_s"] - stopped, 2),
        "measurements_in_fallback": sorted(
            {m for x in stale_fallbacks for m in measurements(x["observation"])}
        ),
        "replica_changes_while_stale": len(replica_ops),
        "restart_took_s": round(ready - restart, 2),
        "fresh_state_s": round(fresh[0]["time_s"] - ready, 2) if fresh else None,
        "recovered_s": round(back["time_s"] - ready, 2),
    }


def _kill_extender(tb: Testbed, services: Services, plan: FaultPlan) -> dict[str, Any]:
    services.stop(ACTUATOR)  # it would undo a scale it did not decide
    services.kill(EXTENDER)
    before = {
        p["metadata"]["name"]
        for p in json.loads(
            tb.kubectl("get", "pods", "-n", plan.namespace, "-l", SELECTOR, "-o", "json")
        )["items"]
    }
    current = int(
        tb.kubectl(
            "get", "deployment", DEPLOYMENT, "-n", plan.namespace, "-o", "jsonpath={.spec.replicas}"
        )
    )
    target = min(current + 1, plan.max_replicas)
    if target == current:
        return {"node": None, "note": f"already at max_replicas {current}"}
    t0 = time.time()
    tb.kubectl("scale", "deployment", DEPLOYMENT, "-n", plan.namespace, f"--replicas={target}")

    def new_pod_node() -> str:
        items = json.loads(
            tb.kubectl("get", "pods", "-n", plan.namespace, "-l", SELECTOR, "-o", "json")
        )["items"]
        for p in items:
            if p["metadata"]["name"] not in before and p["spec"].get("nodeName"):
                return p["spec"]["nodeName"]
        return ""

    node = wait_until("the new pod bound", new_pod_node, 60)
    return {"node": node, "bound_after_s": round(time.time() - t0, 2), "replicas": target}


# ------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ecrl.testbed.faults",
        description="Kill the policy server, stop Prometheus, kill the extender under Locust "
        "load on a running testbed (make testbed); print what the controller did.",
        epilog="example:\n  make testbed && python -m ecrl.testbed.faults --out results/faults",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--testbed", default=DEFAULT_NAME, help="testbed cluster name")
    p.add_argument("--out", default="results/faults", help="folder for faults.json/.md, audit")
    p.add_argument("--period", type=float, default=3.0, help="actuator period in seconds")
    p.add_argument("--users", type=int, default=12, help="Locust users (constant)")
    args = p.parse_args(argv)
    try:
        tb = attach(args.testbed)
    except TestbedError as exc:
        print(f"faults: error: --testbed: {exc}", file=sys.stderr)
        return 2
    plan = FaultPlan(period_s=args.period, users=args.users)
    report = run_faults(tb, plan, Path(args.out), log=lambda m: print(m, file=sys.stderr))
    print(report.markdown())
    problems = report.problems()
    for line in problems:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
