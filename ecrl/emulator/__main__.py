"""``python -m ecrl.emulator``: run the data-plane emulator (see ``ecrl.emulator``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path

from aiohttp import web

from ecrl import logs
from ecrl.emulator import grpc_api, http_api
from ecrl.emulator.fleet import Fleet, GpuNodeSpec, PodSpec
from ecrl.emulator.pod import TritonConfig
from ecrl.errors import ConfigError
from ecrl.twin.profile import builtin_profile_path, load_profile

log = logging.getLogger("ecrl.emulator")
LOOPBACK = ("127.0.0.1", "::1", "localhost")

EPILOG = """examples:
  # serve the testbed's Deployment (pods from the real apiserver), 4x slower than an RTX 3080
  python -m ecrl.emulator cluster --kubeconfig $KUBECONFIG --time-scale 4 \\
      --sd-dir ~/.cache/ecrl/testbed/run/ecrl/sd
  # two pods without Kubernetes (for load-generator tests)
  python -m ecrl.emulator standalone --pods 2
  # then: curl -s 127.0.0.1:8000/v2/models/mobilenetv4 ; curl -s 127.0.0.1:8002/metrics
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ecrl.emulator",
        description="Emulated Triton data plane: KServe v2 HTTP/gRPC, Triton and DCGM metrics "
        "(labelled emulated), kwok usage annotations. Latencies come from the twin's "
        "calibration profile, emulated per request in real time.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--profile", default="rtx3080-mobilenetv4", help="built-in profile name or a YAML path"
    )
    common.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply every service time (>1 saturates at lower request rates)",
    )
    common.add_argument("--max-batch-size", type=int, default=TritonConfig.max_batch_size)
    common.add_argument("--max-queue-delay-us", type=int, default=TritonConfig.max_queue_delay_us)
    common.add_argument("--instances", type=int, default=TritonConfig.instance_count)
    common.add_argument("--max-queue-size", type=int, default=TritonConfig.max_queue_size)
    common.add_argument("--host", default="127.0.0.1", help="listen address (loopback default)")
    common.add_argument("--http-port", type=int, default=8000)
    common.add_argument("--grpc-port", type=int, default=8001)
    common.add_argument("--metrics-port", type=int, default=8002)
    common.add_argument("--sd-dir", type=Path, help="write Prometheus file_sd targets here")
    common.add_argument("--seed", type=int, default=None, help="seed of the Service's routing")
    common.add_argument("--log-level", default="info")
    c = sub.add_parser(
        "cluster", parents=[common], help="serve the ready pods of a Deployment on a cluster"
    )
    c.add_argument("--kubeconfig", type=Path, help="default: in-cluster service account")
    c.add_argument("--namespace", default="default")
    c.add_argument("--selector", default="app.kubernetes.io/name=mobilenetv4-triton")
    c.add_argument("--usage-interval", type=float, default=5.0, help="seconds between patches")
    s = sub.add_parser("standalone", parents=[common], help="serve N pods without Kubernetes")
    s.add_argument("--pods", type=int, default=1)
    s.add_argument("--cpu", type=float, default=2.0, help="CPU limit of each pod, cores")
    return p


def _profile(name_or_path: str):
    path = name_or_path if name_or_path.endswith((".yaml", ".yml")) else None
    return load_profile(path or builtin_profile_path(name_or_path))


async def _serve(args: argparse.Namespace) -> None:
    config = TritonConfig(
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        instance_count=args.instances,
        max_queue_size=args.max_queue_size,
    )
    try:
        config.validate()
    except ValueError as exc:
        field, _, why = str(exc).partition(": ")
        raise ConfigError("command line", field, why) from None
    if args.time_scale <= 0:
        raise ConfigError("command line", "--time-scale", "must be > 0")
    fleet = Fleet(
        _profile(args.profile),
        config,
        time_scale=args.time_scale,
        sd_dir=args.sd_dir,
        metrics_address=f"{args.host}:{args.metrics_port}",
        seed=args.seed,
    )
    runners = []
    for app, port in (
        (http_api.inference_app(fleet), args.http_port),
        (http_api.metrics_app(fleet), args.metrics_port),
    ):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, port).start()
        runners.append(runner)
    grpc_server = grpc_api.server(fleet, f"{args.host}:{args.grpc_port}")
    await grpc_server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(_ticker(fleet, stop))]
    link = None
    if args.mode == "standalone":
        fleet.set_node(GpuNodeSpec("standalone"))
        for i in range(args.pods):
            fleet.add_pod(PodSpec(f"standalone-{i}", "default", "standalone", args.cpu, 4 << 30))
    else:
        from ecrl.emulator.kube import KubeLink, Target

        link = KubeLink(fleet, args.kubeconfig, Target(args.namespace, args.selector))
        threading.Thread(target=link.watch_forever, args=(loop,), daemon=True).start()
        tasks.append(asyncio.create_task(_usage(link, args.usage_interval, stop)))
    log.info(
        "emulator ready",
        extra={
            "mode": args.mode,
            "http": f"{args.host}:{args.http_port}",
            "grpc": f"{args.host}:{args.grpc_port}",
            "metrics": f"{args.host}:{args.metrics_port}",
            "profile": fleet.profile.name,
            "time_scale": args.time_scale,
            "emulated": True,
        },
    )
    await stop.wait()
    log.info("emulator stopping")
    if link is not None:
        link.stop()
    for t in tasks:
        t.cancel()
    await grpc_server.stop(grace=1.0)
    for name in list(fleet.pods):
        await fleet.remove_pod(name)
    for r in runners:
        await r.cleanup()


async def _ticker(fleet: Fleet, stop: asyncio.Event) -> None:
    while not stop.is_set():
        fleet.sample_usage()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def _usage(link, interval_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await link.report_usage()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup("emulator", args.log_level)
    if args.host not in LOOPBACK:
        log.warning("listening beyond loopback", extra={"host": args.host})
    try:
        asyncio.run(_serve(args))
    except ConfigError as exc:
        print(f"emulator: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"emulator: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
