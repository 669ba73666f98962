"""Processes the testbed starts beside the control plane (Prometheus, kube-state-metrics, the
data-plane emulator), tracked by pid files so that ``make testbed-down`` and the test fixtures
stop every one of them, also after a crash of the process that started them.

Each process gets its own session (so its whole process group can be signalled), a log file
and a pid file under ``$ECRL_CACHE/testbed/run/<cluster>/``. :func:`stop_all` sends SIGTERM to
every recorded group, waits, then SIGKILLs whatever is left, and removes the pid files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

CACHE = Path(os.environ.get("ECRL_CACHE", Path.home() / ".cache" / "ecrl"))
T = TypeVar("T")


class ProcessError(RuntimeError):
    """A supervised process exited or did not become ready; the message quotes its log."""


def run_dir(cluster: str) -> Path:
    """Where pid files and logs of one testbed cluster's side processes live."""
    return CACHE / "testbed" / "run" / cluster


@dataclass(frozen=True)
class Proc:
    """A started side process: its name, pid and log file."""

    name: str
    pid: int
    log: Path

    def alive(self) -> bool:
        return _alive(self.pid)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def start(
    cluster: str,
    name: str,
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Start ``argv`` in its own session, logging to ``<run_dir>/<name>.log``."""
    d = run_dir(cluster)
    d.mkdir(parents=True, exist_ok=True)
    stop(cluster, name)
    log = d / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            list(argv),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
    (d / f"{name}.pid").write_text(str(proc.pid))
    _children[proc.pid] = proc
    return Proc(name, proc.pid, log)


def free_port() -> int:
    """A loopback TCP port nobody listens on now (for side processes started next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    what: str, probe: Callable[[], T], timeout_s: float = 60.0, every_s: float = 0.2
) -> T:
    """Poll ``probe`` every ``every_s`` until it returns something truthy, and return that.

    The one bounded wait of the testbed, its experiments and the tests that drive them. The
    probe runs at least once and once more at the deadline, so a state reached during the last
    sleep is not reported as a timeout; after that, :class:`TimeoutError` names ``what`` and
    the probe's last answer, which is what a person reading the failure needs first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        last = probe()
        if last:
            return last
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s (last: {last!r})")
        time.sleep(min(every_s, left))


_children: dict[int, subprocess.Popen] = {}
"""Popen objects of processes this interpreter started, so they are reaped (no zombies)."""


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Exited but not reaped: its parent (or a PID 1 that does not reap) still lists it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[-1].startswith("Z")


def wait_http(proc: Proc, url: str, timeout_s: float, ok: Callable[[bytes], bool] | None = None):
    """Poll ``url`` until it answers 200 (and ``ok(body)``), the process dies, or time runs out."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ProcessError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                body = resp.read()
                if resp.status == 200 and (ok is None or ok(body)):
                    return body
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ProcessError(
        f"{proc.name} not ready at {url} within {timeout_s:.0f} s ({last}):\n{proc.log_tail()}"
    )


def stop(
    cluster: str, name: str, grace_s: float = 10.0, sig: signal.Signals = signal.SIGTERM
) -> bool:
    """Stop one recorded process group (``sig``, then SIGKILL); True if one was running.

    ``sig=SIGKILL`` is a crash: the process gets no chance to drain or release anything.
    """
    pidfile = run_dir(cluster) / f"{name}.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    was_running = _alive(pid)
    if was_running:
        _signal_group(pid, sig)
        deadline = time.monotonic() + grace_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
            deadline = time.monotonic() + grace_s
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)
    pidfile.unlink(missing_ok=True)
    return was_running


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop_all(cluster: str) -> list[str]:
    """Stop every recorded side process of ``cluster``; returns the names that were running."""
    d = run_dir(cluster)
    stopped = [p.stem for p in sorted(d.glob("*.pid")) if stop(cluster, p.stem)]
    return stopped


def running(cluster: str) -> list[str]:
    """Names of recorded side processes that are alive."""
    out = []
    for p in sorted(run_dir(cluster).glob("*.pid")):
        with contextlib.suppress(ValueError):
            if _alive(int(p.read_text().strip())):
                out.append(p.stem)
    return out
