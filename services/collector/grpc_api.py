"""The gRPC shell of ``ecrl.v1.StateService``, with grpc.health.v1 and reflection.

GetState answers the latest state; its age travels in the trailing metadata
(``ecrl-state-age-s``, and ``ecrl-stale-inputs`` when the newest tick was stale). No state
yet → UNAVAILABLE (retry later). WatchState first sends the latest state (if any), then one
message per new state, until the client cancels or the server stops. Health: the overall
service is SERVING while the process runs; ``ecrl.v1.StateService`` is SERVING only while
the latest state is fresh (no older than ``stale_after_s`` + one period), so a load balancer
or the actuator can tell "up but blind" apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ecrl import schema
from ecrl.errors import Permanent
from ecrl.v1 import state_pb2, state_pb2_grpc

from .collector import Collector, State, TickResult

log = logging.getLogger("ecrl.collector.grpc")

SERVICE_NAME = state_pb2.DESCRIPTOR.services_by_name["StateService"].full_name
SERVICE_NAMES = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
GRPC_OPTIONS = (("grpc.so_reuseport", 0),)
"""No SO_REUSEPORT: a second server on a taken port must fail, not silently share it."""
WATCH_POLL_S = 1.0
"""A watcher re-checks that its client is still there this often."""


class StartError(Permanent):
    """The server could not bind its address."""


def to_proto(state: State) -> state_pb2.StateVector:
    """A :class:`State` as the wire message."""
    msg = state_pb2.StateVector(
        schema_version=schema.SCHEMA_VERSION,
        schema_hash=schema.SCHEMA_HASH,
        values=[float(v) for v in state.values],
        missing_inputs=list(state.missing_inputs),
        tick=state.tick,
    )
    msg.observed_at.FromNanoseconds(round(state.observed_at_s * 1e9))
    return msg


class StateServicer(state_pb2_grpc.StateServiceServicer):
    """GetState and WatchState over a :class:`Collector`'s store."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def GetState(
        self, request: state_pb2.GetStateRequest, context: grpc.ServicerContext
    ) -> state_pb2.GetStateResponse:
        store = self.collector.store
        state = store.latest()
        if state is None:
            reason = ", ".join(store.last_stale) or "no tick finished yet"
            context.abort(grpc.StatusCode.UNAVAILABLE, f"no state yet ({reason})")
            raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
        age = self.collector.state_age_s() or 0.0
        metadata = [("ecrl-state-age-s", f"{age:.3f}")]
        if store.last_stale:
            metadata.append(("ecrl-stale-inputs", ",".join(store.last_stale)))
        context.set_trailing_metadata(tuple(metadata))
        return state_pb2.GetStateResponse(state=to_proto(state))

    def WatchState(
        self, request: state_pb2.WatchStateRequest, context: grpc.ServicerContext
    ) -> Iterator[state_pb2.WatchStateResponse]:
        store = self.collector.store
        latest = store.latest()
        last_tick = 0
        if latest is not None:
            last_tick = latest.tick
            yield state_pb2.WatchStateResponse(state=to_proto(latest))
        while context.is_active() and not store.closed:
            state = store.wait_newer(last_tick, WATCH_POLL_S)
            if state is not None:
                last_tick = state.tick
                yield state_pb2.WatchStateResponse(state=to_proto(state))


class GrpcServer:
    """StateService + health + reflection on one address."""

    def __init__(self, collector: Collector, listen: str, max_workers: int = 16) -> None:
        self.collector = collector
        self.listen = listen
        self.health = health.HealthServicer()
        self.port = 0
        """The bound port (useful with ``:0``)."""
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers, thread_name_prefix="grpc"),
            options=GRPC_OPTIONS,
        )
        state_pb2_grpc.add_StateServiceServicer_to_server(StateServicer(collector), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(SERVICE_NAMES, self._server)

    def start(self) -> None:
        try:
            port = self._server.add_insecure_port(self.listen)
        except RuntimeError as exc:
            raise StartError(f"--grpc-listen {self.listen}: cannot bind ({exc})") from exc
        if port == 0:
            raise StartError(f"--grpc-listen {self.listen}: cannot bind")
        self.port = port
        self._server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.update_health()

    def update_health(self, _result: TickResult | None = None) -> None:
        """SERVING for StateService while the latest state is fresh enough to act on."""
        cfg = self.collector.config
        age = self.collector.state_age_s()
        fresh = age is not None and age <= cfg.stale_after_s + cfg.period_s
        status = health_pb2.HealthCheckResponse
        self.health.set(SERVICE_NAME, status.SERVING if fresh else status.NOT_SERVING)

    def stop(self, grace_s: float = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self._server.stop(grace_s).wait()
