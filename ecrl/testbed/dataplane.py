"""Start the data-plane emulator against a testbed cluster (see ``ecrl.emulator``).

The emulator watches the inference Deployment's pods through the testbed's kubeconfig, serves
Triton's protocols on 127.0.0.1 (HTTP 8000, gRPC 8001, metrics 8002 by default, Triton's own
ports), writes Prometheus file_sd targets where :mod:`ecrl.testbed.monitoring` points
Prometheus, and writes kwok usage annotations. It is recorded by :mod:`ecrl.testbed.procs`,
so ``testbed down`` stops it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ecrl.testbed import procs
from ecrl.testbed.cluster import DEFAULT_NAME, Testbed, TestbedError, attach
from ecrl.testbed.monitoring import sd_dir

SELECTOR = "app.kubernetes.io/name=mobilenetv4-triton"
NAMESPACE = "default"
DEFAULT_TIME_SCALE = 4.0
"""Service times ×4: one pod saturates near 17 req/s, which Locust reaches on 2 cores."""


@dataclass(frozen=True)
class DataPlane:
    """Where the running emulator answers."""

    http_url: str
    grpc_url: str
    metrics_url: str
    time_scale: float
    proc: procs.Proc

    def serving(self) -> int:
        """How many ready pods the emulator serves now (its ``ecrl_emulator_pods`` gauge)."""
        return emulator_pods(self.metrics_url)

    def wait_pods(self, n: int, timeout_s: float = 60.0) -> float:
        """Wait until the emulator serves exactly ``n`` pods; returns the seconds waited."""
        t0 = time.monotonic()
        while (have := self.serving()) != n:
            if not self.proc.alive():
                raise procs.ProcessError(f"emulator exited:\n{self.proc.log_tail()}")
            if time.monotonic() - t0 > timeout_s:
                raise procs.ProcessError(f"emulator serves {have} pods, not {n}, in {timeout_s} s")
            time.sleep(0.25)
        return time.monotonic() - t0


def emulator_pods(metrics_url: str) -> int:
    """Ready pods a running emulator serves, read from its ``ecrl_emulator_pods`` gauge."""
    with urllib.request.urlopen(metrics_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^ecrl_emulator_pods ([0-9.e+]+)$", text, re.MULTILINE)
    if m is None:
        raise procs.ProcessError("the emulator's /metrics has no ecrl_emulator_pods")
    return round(float(m.group(1)))


def start_emulator(
    tb: Testbed,
    time_scale: float = DEFAULT_TIME_SCALE,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    namespace: str = NAMESPACE,
    selector: str = SELECTOR,
    usage_interval_s: float = 5.0,
    extra_args: tuple[str, ...] = (),
    timeout_s: float = 30.0,
    name: str = "emulator",
    sd: Path | None = None,
) -> DataPlane:
    """Start the emulator in cluster mode and wait until it answers on every port.

    ``name`` is its process name under the testbed (a second emulator for another namespace
    needs another); ``sd`` its file_sd folder (default: the one the testbed's Prometheus reads).
    """
    argv = [
        sys.executable,
        "-m",
        "ecrl.emulator",
        "cluster",
        "--kubeconfig",
        str(tb.kubeconfig),
        "--namespace",
        namespace,
        "--selector",
        selector,
        "--time-scale",
        str(time_scale),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--sd-dir",
        str(sd or sd_dir(tb.name)),
        "--usage-interval",
        str(usage_interval_s),
        *extra_args,
    ]
    proc = procs.start(tb.name, name, argv)
    metrics = f"http://127.0.0.1:{metrics_port}"
    procs.wait_http(proc, metrics + "/metrics", timeout_s)
    procs.wait_http(proc, f"http://127.0.0.1:{http_port}/v2/health/live", timeout_s)
    return DataPlane(
        f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", metrics, time_scale, proc
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ecrl.testbed.dataplane",
        description="Start/stop the data-plane emulator for a running testbed cluster.",
        epilog="examples:\n  python -m ecrl.testbed.dataplane up --time-scale 4\n"
        "  python -m ecrl.testbed.dataplane down",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE)
    args = parser.parse_args(argv)
    try:
        if args.action == "down":
            procs.stop(args.name, "emulator")
            print("emulator stopped")
            return 0
        dp = start_emulator(attach(args.name), time_scale=args.time_scale)
    except (TestbedError, procs.ProcessError) as exc:
        print(f"dataplane: error: {exc}", file=sys.stderr)
        return 1
    print(f"emulator up: HTTP {dp.http_url}  gRPC {dp.grpc_url}  metrics {dp.metrics_url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
