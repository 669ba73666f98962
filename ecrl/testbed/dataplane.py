"""Start the data-plane emulator against a testbed cluster (see ``ecrl.emulator``).

The emulator watches the inference Deployment's pods through the testbed's kubeconfig, serves
Triton's protocols on 127.0.0.1 (HTTP 8000, gRPC 8001, metrics 8002 by default, Triton's own
ports), writes Prometheus file_sd targets where :mod:`ecrl.testbed.monitoring` points
Prometheus, and writes kwok usage annotations. It is recorded by :mod:`ecrl.testbed.procs`,
so ``testbed down`` stops it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ecrl.testbed import procs
from ecrl.testbed.cluster import DEFAULT_NAME, Testbed, TestbedError, attach

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
    proc: procs.Proc


def sd_dir(cluster: str) -> Path:
    """Where the emulator writes file_sd targets and Prometheus reads them."""
    return procs.run_dir(cluster) / "sd"


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
) -> DataPlane:
    """Start the emulator in cluster mode and wait until it answers on every port."""
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
        str(sd_dir(tb.name)),
        "--usage-interval",
        str(usage_interval_s),
        *extra_args,
    ]
    proc = procs.start(tb.name, "emulator", argv)
    metrics = f"http://127.0.0.1:{metrics_port}"
    procs.wait_http(proc, metrics + "/metrics", timeout_s)
    procs.wait_http(proc, f"http://127.0.0.1:{http_port}/v2/health/live", timeout_s)
    return DataPlane(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", metrics, proc)


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
