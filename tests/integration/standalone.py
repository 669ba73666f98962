"""The data-plane emulator in standalone mode (Triton's HTTP/gRPC/metrics API, no cluster) as a
subprocess for integration tests: free loopback ports, ready before use, always stopped."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from ecrl.testbed.procs import free_port


@contextmanager
def standalone_emulator(
    *args: str, host: str = "127.0.0.1", http_port: int | None = None, timeout_s: float = 30.0
) -> Iterator[dict]:
    """``python -m ecrl.emulator standalone *args`` on ``host``; yields its ports."""
    ports = {"http": http_port or free_port(), "grpc": free_port(), "metrics": free_port()}
    argv = [sys.executable, "-m", "ecrl.emulator", "standalone", "--host", host]
    argv += ["--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"])]
    argv += ["--metrics-port", str(ports["metrics"]), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        url = f"http://{host}:{ports['http']}/v2/health/ready"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, f"emulator not ready in {timeout_s:.0f} s"
            time.sleep(0.1)
        yield ports
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stderr:
            proc.stderr.close()
