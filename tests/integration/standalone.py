"""The data-plane emulator in standalone mode (Triton's HTTP/gRPC/metrics API, no cluster) as a
subprocess for integration tests: free loopback ports, ready before use, always stopped.

Its log goes to a temporary file, not a pipe: nobody reads a pipe while a test runs, and a
chatty emulator would block once the pipe's buffer filled."""

from __future__ import annotations

import subprocess
import sys
import tempfile
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
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)

        def log_tail() -> str:
            log.seek(0)
            return log.read()[-3000:].decode(errors="replace")

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
                assert proc.poll() is None, f"emulator exited ({proc.returncode}):\n{log_tail()}"
                assert time.monotonic() < deadline, f"emulator not ready in {timeout_s:.0f} s"
                time.sleep(0.1)
            yield ports
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
