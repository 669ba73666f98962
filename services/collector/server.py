"""The collector process: sources, the tick loop, gRPC and HTTP, started and stopped together."""

from __future__ import annotations

import logging
from types import TracebackType

from ecrl import schema

from .collector import Collector, TickResult
from .config import CollectorConfig
from .grpc_api import GrpcServer
from .http_api import HttpServer
from .metrics import CollectorMetrics
from .sources import PrometheusSource, TritonSource

log = logging.getLogger("ecrl.collector")


class CollectorServer:
    """``start()`` binds both APIs, then starts ticking; ``stop()`` undoes it in reverse."""

    def __init__(self, config: CollectorConfig, metrics: CollectorMetrics | None = None) -> None:
        self.config = config
        self.prometheus = PrometheusSource(
            config.prometheus_url, config.query_timeout_s, config.query_workers
        )
        triton = TritonSource(config.triton_url, config.model, config.query_timeout_s)
        self.collector = Collector(config, self.prometheus, triton.read, metrics)
        self.grpc: GrpcServer | None = None
        self.http: HttpServer | None = None
        if config.grpc_listen is not None:
            self.grpc = GrpcServer(self.collector, config.grpc_listen)
        if config.http_listen is not None:
            self.http = HttpServer(self.collector, config.http_listen)
        self.collector.on_tick = self._on_tick

    def _on_tick(self, result: TickResult) -> None:
        if self.grpc is not None:
            self.grpc.update_health(result)

    def start(self) -> None:
        """Bind (raises :class:`~.grpc_api.StartError`), serve, then tick."""
        try:
            if self.grpc is not None:
                self.grpc.start()
        except BaseException:
            if self.http is not None:
                self.http.close()  # bound in its constructor: release the port
            raise
        if self.http is not None:
            self.http.start()
        self.collector.start()
        cfg = self.config
        log.info(
            "collector started",
            extra={
                "prometheus": cfg.prometheus_url,
                "triton": cfg.triton_url,
                "deployment": f"{cfg.namespace}/{cfg.deployment}",
                "period_s": cfg.period_s,
                "stale_after_s": cfg.stale_after_s,
                "grpc_port": self.grpc.port if self.grpc else None,
                "http_port": self.http.port if self.http else None,
                "schema_hash": schema.SCHEMA_HASH,
            },
        )

    def stop(self) -> None:
        self.collector.stop()
        if self.grpc is not None:
            self.grpc.stop()
        if self.http is not None:
            self.http.stop()
        self.prometheus.close()
        log.info("collector stopped")

    def __enter__(self) -> CollectorServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
