"""The policy server process: gRPC (policy service, grpc.health.v1, reflection), metrics, reload.

:class:`PolicyServer` owns the lifecycle: load the models, bind, report SERVING, follow the
model files, and on stop report NOT_SERVING before draining in-flight requests. Health stays
SERVING while the heuristic answers (a fallback answer is still an answer); the fallback is
reported by GetPolicyInfo, the ``ecrl_policy_fallback`` gauge and the logs instead.

gRPC runs as a ``grpc.aio`` server on an event loop in its own thread, behind the same
blocking ``start``/``stop``/``wait`` API. Every handler is a short coroutine, so a call is
served on the loop without the sync server's hand-off to a worker thread and back: under 32
calls in flight that was ~14 context switches per call against ~3.5, and ~20 % more decisions
per second on the same two cores (BENCHMARKS.md, "Services").
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from ecrl.errors import Permanent

from .config import ServerConfig, parse_hostport
from .decisions import PolicyCore
from .grpc_service import SERVICE_NAME, PolicyServicer
from .metrics import ServerMetrics
from .model_store import ModelStore, Watcher

log = logging.getLogger("ecrl.policy_server")

SERVICE_NAMES = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
"""What reflection lists (grpcurl's ``list``)."""
GRPC_OPTIONS = (("grpc.so_reuseport", 0),)
"""No SO_REUSEPORT: a second server on a taken port must fail, not silently share it."""
LOOP_CALL_TIMEOUT_S = 60.0
"""Bound on one lifecycle step run on the server's loop (bind, start, drain is bounded by
the grace period plus this)."""

T = TypeVar("T")


class MethodAwarePool:
    """The default descriptor pool, plus method symbols for reflection.

    ``grpcurl describe ecrl.v1.PolicyService.Decide`` and ghz ask reflection for the file
    containing a *method*; the upb pool's ``FindFileContainingSymbol`` knows messages and
    services but not methods, so the stock servicer answered NOT_FOUND. A method's file is
    its service's file.
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self._pool = pool or descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str):  # noqa: N802 (the pool's interface)
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in service.methods_by_name:
                raise KeyError(symbol) from None
            return service.file

    def __getattr__(self, name: str):
        return getattr(self._pool, name)


class StartError(Permanent):
    """The server could not start (port taken, unreadable TLS files)."""


def _read_pem(path: str, flag: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StartError(f"{flag}: cannot read {path}: {exc.strerror}") from exc
    if b"-----BEGIN " not in data:
        raise StartError(f"{flag}: {path} is not a PEM file")
    return data


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials:
    """TLS from the configured PEM files; a client CA turns on mandatory client certificates."""
    assert config.tls_cert is not None and config.tls_key is not None
    key = _read_pem(config.tls_key, "--tls-key")
    cert = _read_pem(config.tls_cert, "--tls-cert")
    ca = (
        None if config.tls_client_ca is None else _read_pem(config.tls_client_ca, "--tls-client-ca")
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class PolicyServer:
    """One policy server: ``start()``, then ``stop()`` (or use it as a context manager)."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or ServerMetrics()
        self.store = ModelStore(config.policy_path, config.scorer_path, self.metrics)
        self.core = PolicyCore(self.store, self.metrics, config.deadline_margin_s)
        self.health = health.aio.HealthServicer()
        self.port = 0
        """The bound gRPC port (useful with ``:0``)."""
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._metrics_httpd = None
        self._watcher: Watcher | None = None

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Load the models, bind, serve; raises :class:`StartError` if it cannot bind."""
        cfg = self.config
        self.store.poll()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="grpc-aio", daemon=True)
        thread.start()
        self._loop, self._loop_thread = loop, thread
        try:
            self.port = self._on_loop(self._bind())
            if cfg.metrics_listen is not None:
                self._start_metrics(cfg.metrics_listen)
            self._on_loop(self._serve())
        except BaseException:
            self._close_loop()
            raise
        if cfg.reload_interval_s > 0:
            self._watcher = Watcher(self.store, cfg.reload_interval_s)
            self._watcher.start()
        info = self.core.info()
        log.info(
            "policy server started",
            extra={
                "listen": cfg.listen,
                "port": self.port,
                "tls": "mutual" if cfg.tls_client_ca else ("server" if cfg.tls else "off"),
                "metrics_port": self.metrics_port,
                "policy_version": info.policy_version,
                "fallback": info.fallback.value,
                "fallback_detail": info.fallback_detail,
                "scorer_version": info.scorer_version,
                "schema_hash": info.schema_hash,
            },
        )

    async def _bind(self) -> int:
        """Create the server on the loop (grpc.aio objects belong to their loop) and bind."""
        cfg = self.config
        server = grpc.aio.server(
            handlers=[PolicyServicer(self.core, self.metrics).handler()],
            options=GRPC_OPTIONS,
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs or None,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server, pool=MethodAwarePool())
        try:
            if cfg.tls:
                port = server.add_secure_port(cfg.listen, server_credentials(cfg))
            else:
                port = server.add_insecure_port(cfg.listen)
        except RuntimeError as exc:  # grpc ≥ 1.5x raises; older versions returned 0
            raise StartError(f"--listen {cfg.listen}: cannot bind ({exc})") from exc
        if port == 0:
            raise StartError(f"--listen {cfg.listen}: cannot bind")
        self._server = server
        return port

    async def _serve(self) -> None:
        assert self._server is not None
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _drain(self, grace_s: float) -> None:
        """Finish in-flight calls for up to ``grace_s``, refusing new ones."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    def _on_loop(self, coro: Coroutine[Any, Any, T], timeout_s: float = LOOP_CALL_TIMEOUT_S) -> T:
        """Run ``coro`` on the server's loop and wait for its result (or its exception)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._loop_thread
        if loop is None or thread is None:
            return
        if self._server is not None:  # bound but never served (a later start step failed)
            self._on_loop(self._drain(0))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=LOOP_CALL_TIMEOUT_S)
        loop.close()
        self._loop = self._loop_thread = None

    def _start_metrics(self, address: str) -> None:
        host, port = parse_hostport(address)
        try:
            httpd, _thread = start_http_server(
                port, addr=host.strip("[]"), registry=self.metrics.registry
            )
        except OSError as exc:
            raise StartError(f"--metrics-listen {address}: cannot bind ({exc.strerror})") from exc
        self._metrics_httpd = httpd
        self.metrics_port = httpd.server_port

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING first (load balancers drain), then finish in-flight requests."""
        grace = self.config.grace_s if grace_s is None else grace_s
        if self._loop is not None:
            self._on_loop(self.health.enter_graceful_shutdown())
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._loop is not None:
            self._on_loop(self._drain(grace), timeout_s=grace + LOOP_CALL_TIMEOUT_S)
            self._close_loop()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
            self._metrics_httpd = None
        self._stopped.set()
        log.info("policy server stopped")

    def wait(self) -> None:
        """Block until the server stops (another thread calls :meth:`stop`)."""
        self._stopped.wait()

    def __enter__(self) -> PolicyServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(grace_s=0.5)
