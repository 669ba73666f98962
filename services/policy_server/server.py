"""The policy server process: gRPC (policy service, grpc.health.v1, reflection), metrics, reload.

:class:`PolicyServer` owns the lifecycle: load the models, bind, report SERVING, follow the
model files, and on stop report NOT_SERVING before draining in-flight requests. Health stays
SERVING while the heuristic answers (a fallback answer is still an answer); the fallback is
reported by GetPolicyInfo, the ``ecrl_policy_fallback`` gauge and the logs instead.
"""

from __future__ import annotations

import logging
from concurrent import futures
from pathlib import Path
from types import TracebackType

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
        self.health = health.HealthServicer()
        self.port = 0
        """The bound gRPC port (useful with ``:0``)."""
        self.metrics_port = 0
        self._server: grpc.Server | None = None
        self._metrics_httpd = None
        self._watcher: Watcher | None = None

    def start(self) -> None:
        """Load the models, bind, serve; raises :class:`StartError` if it cannot bind."""
        cfg = self.config
        self.store.poll()
        executor = futures.ThreadPoolExecutor(cfg.max_workers, thread_name_prefix="grpc")
        server = grpc.server(
            executor,
            handlers=[PolicyServicer(self.core, self.metrics).handler()],
            options=GRPC_OPTIONS,
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
        self.port = port
        if cfg.metrics_listen is not None:
            self._start_metrics(cfg.metrics_listen)
        server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.reload_interval_s > 0:
            self._watcher = Watcher(self.store, cfg.reload_interval_s)
            self._watcher.start()
        info = self.core.info()
        log.info(
            "policy server started",
            extra={
                "listen": cfg.listen,
                "port": port,
                "tls": "mutual" if cfg.tls_client_ca else ("server" if cfg.tls else "off"),
                "metrics_port": self.metrics_port,
                "policy_version": info.policy_version,
                "fallback": info.fallback.value,
                "fallback_detail": info.fallback_detail,
                "scorer_version": info.scorer_version,
                "schema_hash": info.schema_hash,
            },
        )

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
        self.health.enter_graceful_shutdown()
        if self._watcher is not None:
            self._watcher.stop()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
            self._metrics_httpd = None
        log.info("policy server stopped")

    def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            self._server.wait_for_termination()

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
