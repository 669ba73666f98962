"""A/B of policy servers side by side: sequential Decide latency, rounds alternating.

This 2-vCPU machine's speed drifts by tens of percent between minutes, more than most
changes to the server are worth, so two benchmark runs one after the other compare the
machine's moods, not the code. Here every variant runs at once, each its own policy-server
process, and one client alternates between them in rounds (``--rounds`` × ``--calls``
sequential ``PolicyClient.decide`` calls, then as many empty ``grpc.health.v1`` calls): each
variant sees the same minutes. Percentiles are over all of a variant's calls.

A variant is ``NAME[;key=value…]`` with the keys

- ``root``: a checkout whose server code runs (e.g. ``git worktree add /tmp/base HEAD~1``,
  then copy ``ecrl/v1/*_pb2*`` into it, the generated code git does not hold);
- ``policy``: another ONNX policy file (e.g. ``git show HEAD~1:ecrl/models/rl-policy.onnx``);
- ``server-cpus`` / ``client-cpus``: CPUs for the server process (``taskset``) and for the
  client while it calls this variant, comma-separated.

Example — this session's code against the previous commit, and pinned against unpinned::

    python -m ecrl.bench_ab 'new' 'base;root=/tmp/base' 'pinned;server-cpus=1;client-cpus=0'
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecrl.bench_services import REPO, _timed, _twin_state, client_on, policy_server

KEYS = ("root", "policy", "server-cpus", "client-cpus")


class BadArguments(ValueError):
    """A variant or option the comparison cannot run with (the message says which)."""


@dataclass(frozen=True)
class Variant:
    """One policy server of the comparison, and where its client runs."""

    name: str
    root: Path = REPO
    policy: str | None = None
    server_cpus: tuple[int, ...] | None = None
    client_cpus: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``NAME[;key=value…]``; BadArguments names what is wrong."""
        name, *pairs = text.split(";")
        if not name or "=" in name:
            raise BadArguments(f"variant {text!r}: starts with a name, e.g. 'base;root=/tmp/base'")
        given: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if key not in KEYS or not sep or not value:
                raise BadArguments(f"variant {name!r}: {pair!r} is not one of {', '.join(KEYS)}=…")
            given[key] = value
        return cls(
            name=name,
            root=Path(given["root"]) if "root" in given else REPO,
            policy=given.get("policy"),
            server_cpus=_cpu_list(name, given.get("server-cpus")),
            client_cpus=_cpu_list(name, given.get("client-cpus")),
        )


def _cpu_list(name: str, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        cpus = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise BadArguments(f"variant {name!r}: CPUs {text!r} are not like 0 or 0,1") from None
    if not cpus or min(cpus) < 0:
        raise BadArguments(f"variant {name!r}: CPUs {text!r} are not like 0 or 0,1")
    return cpus


@dataclass
class Timings:
    """Seconds per call, gathered over the rounds."""

    decide: list[float] = field(default_factory=list)
    empty: list[float] = field(default_factory=list)

    def line(self, name: str) -> str:
        d, e = (np.percentile(np.asarray(x) * 1e3, [50, 90, 99]) for x in (self.decide, self.empty))
        return (
            f"{name:>16}: Decide p50 {d[0]:.3f}  p90 {d[1]:.3f}  p99 {d[2]:.3f} ms"
            f"  (n={len(self.decide):,})  | empty call p50 {e[0]:.3f}  p99 {e[2]:.3f} ms"
        )


def compare(variants: Sequence[Variant], rounds: int, calls: int, warmup: int = 500) -> dict:
    """Timings per variant name; the servers start together and stop at the end."""
    from grpc_health.v1 import health_pb2

    from ecrl.testbed.procs import free_port
    from services.policy_server.client import PolicyClient

    state, mask = _twin_state()
    check = health_pb2.HealthCheckRequest()
    with ExitStack() as stack:
        clients = []
        for v in variants:
            target = stack.enter_context(
                policy_server(
                    free_port(),
                    cpus=v.server_cpus,
                    name=f"ab-{v.name}",
                    root=v.root,
                    policy=v.policy,
                )
            )
            clients.append(stack.enter_context(PolicyClient(target, timeout_s=2.0)))
        for v, client in zip(variants, clients, strict=True):
            with client_on(v.client_cpus):
                for _ in range(warmup):
                    client.decide(state, mask)
        out = {v.name: Timings() for v in variants}
        for _ in range(rounds):
            for v, client in zip(variants, clients, strict=True):
                with client_on(v.client_cpus):
                    t = out[v.name]
                    t.decide += _timed(lambda c=client: c.decide(state, mask), calls)
                    t.empty += _timed(
                        lambda c=client: c.health.Check(check, timeout=2.0), calls // 3
                    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ecrl.bench_ab",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("variants", nargs="+", metavar="VARIANT", help="NAME[;key=value…]")
    p.add_argument("--rounds", type=int, default=10, help="rounds per variant (default 10)")
    p.add_argument("--calls", type=int, default=1000, help="Decide calls per round (default 1000)")
    args = p.parse_args(argv)
    try:
        variants = [Variant.parse(v) for v in args.variants]
        if len({v.name for v in variants}) != len(variants):
            raise BadArguments("variants: every name must be different")
        if args.rounds < 1 or args.calls < 3:
            raise BadArguments("--rounds must be ≥ 1 and --calls ≥ 3")
    except BadArguments as exc:
        p.exit(2, f"{p.prog}: error: {exc}\n")
    for name, t in compare(variants, args.rounds, args.calls).items():
        print(t.line(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
