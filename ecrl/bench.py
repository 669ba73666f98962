"""``make bench``: twin speed (vectorized env-steps/s), emulator fidelity, the demo's wall time and
the services' latencies (policy Decide, extender /prioritize, collector tick; ecrl.bench_services).

Prints percentiles over repeated trials and the ratio to each target, so a regression is a
number, not a feeling. Figures and the command go into BENCHMARKS.md by hand after a run.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable

import numpy as np

from ecrl.actions import NOOP
from ecrl.experiment.runner import resolve_profile
from ecrl.twin.spec import ClusterSpec
from ecrl.twin.twin import Twin

TWIN_TARGET_STEPS_S = 100_000.0
"""Issue 2: ≥ 100k environment-steps per second, vectorized across environments."""
DEMO_TARGET_S = 300.0
"""Issue 2: `make demo` within 5 minutes on 2 cores."""


def _pct(values: list[float]) -> str:
    a = np.asarray(values)
    p10, p50, p90 = np.percentile(a, [10, 50, 90])
    return f"median {p50:,.0f}  p10 {p10:,.0f}  p90 {p90:,.0f}"


def bench_twin(n_envs: int, steps: int = 100, trials: int = 7) -> list[float]:
    """Environment-steps per second (1 s of simulated time per step, no histograms)."""
    cluster = ClusterSpec()
    profile = resolve_profile(cluster.profile)
    tw = Twin(cluster, profile, n_envs=n_envs, seed=0)
    users = np.random.default_rng(0).uniform(5, 100, n_envs)
    for _ in range(10):
        tw.step(users)
    return _rates(lambda: tw.step(users), n_envs * steps, steps, trials)


def _rates(step: Callable[[], object], work: int, steps: int, trials: int) -> list[float]:
    """``work`` units per second of ``steps`` calls to ``step``, once per trial."""
    out = []
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        out.append(work / (time.perf_counter() - t0))
    return out


def bench_rl_env(n_envs: int = 64, ticks: int = 60, trials: int = 3) -> list[float]:
    """RL environment ticks per second (5 s of twin time each, observe+encode+mask+act)."""
    from ecrl.rl.env import TwinVecEnv

    cluster = ClusterSpec()
    env = TwinVecEnv(cluster, resolve_profile(cluster.profile), n_envs, seed=0)
    env.reset()
    noop = np.tile(np.array(NOOP), (n_envs, 1))
    return _rates(lambda: env.step(noop), n_envs * ticks, ticks, trials)


def bench_decide(n: int = 2000) -> list[float]:
    """Latency (µs) of one LearnedPolicy decision with the packaged ONNX (encode → act → clamp)."""
    from ecrl.policies.learned import LearnedPolicy
    from ecrl.twin.observe import observation

    cluster = ClusterSpec()
    tw = Twin(cluster, resolve_profile(cluster.profile), seed=0)
    for _ in range(30):
        tw.step(30.0)
    obs = observation(tw)
    policy = LearnedPolicy.load()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        policy.decide(obs)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def bench_emulator(seconds: float = 30.0) -> list[dict[str, float]]:
    """Testbed emulator vs twin: mean server-side latency of one pod at 30/60/80 % load."""
    from ecrl.emulator.fidelity import compare

    cluster = ClusterSpec()
    return compare(resolve_profile(cluster.profile), 4.0, (0.3, 0.6, 0.8), seconds)


def bench_demo() -> float:
    from ecrl.cli import main

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        main(["demo", "--out", d, "--no-progress"])
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ecrl.bench", description=__doc__)
    parser.add_argument("--skip-demo", action="store_true", help="everything but the demo")
    parser.add_argument(
        "--skip-services",
        action="store_true",
        help="skip the services (policy server, scheduler extender, collector on the testbed)",
    )
    parser.add_argument(
        "--only-services", action="store_true", help="only the services' benchmarks"
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    if args.only_services:
        from ecrl.bench_services import run

        run()
        return
    for n in (1, 256, 4096):
        rates = bench_twin(n, steps=100 if n > 1 else 300)
        ratio = np.median(rates) / TWIN_TARGET_STEPS_S
        print(f"twin env-steps/s, {n:>5} envs: {_pct(rates)}  (×{ratio:.2f} of the 100k target)")
    rates = bench_rl_env()
    print(f"rl env ticks/s, 64 envs (PPO's rollout side): {_pct(rates)}")
    lat = np.asarray(bench_decide())
    p50, p99 = np.percentile(lat, [50, 99])
    print(f"rl policy decide (ONNX, one observation): p50 {p50:,.0f} µs  p99 {p99:,.0f} µs")
    print("\nemulator vs twin, one pod, time scale 4 (mean server-side latency, Poisson arrivals):")
    for r in bench_emulator():
        print(
            f"  load {r['load']:.0%} ({r['rate_rps']:.1f} req/s, {r['requests']:.0f} requests): "
            f"emulator {r['emulator_ms']:.0f} ms, twin {r['twin_ms']:.0f} ms  "
            f"(×{r['ratio']:.2f})"
        )
    if not args.skip_services:
        from ecrl.bench_services import run

        run()
    if not args.skip_demo:
        wall = bench_demo()
        print(f"\ndemo wall time: {wall:.1f} s  (×{wall / DEMO_TARGET_S:.2f} of the 300 s budget)")


if __name__ == "__main__":
    main()
