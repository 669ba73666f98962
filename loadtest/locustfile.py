"""Locust load for MobileNetV4 on Triton: tritonclient users over HTTP and gRPC, real images.

Each request sends one real photograph (scikit-image's bundled samples, preprocessed as timm's
``mobilenetv4_conv_small`` eval transform: :mod:`ecrl.load.images`) as a [1, 3, 224, 224] FP32
tensor and checks that the logits come back as [1, 1000]. Results go to Locust's own stats
(request type ``HTTP`` or ``gRPC``, name ``infer``), so ``--csv`` and the web UI work as usual.

Users: ``TritonHttpUser`` (``--host``, binary tensor extension) and ``TritonGrpcUser``
(``ECRL_GRPC_URL``, default 127.0.0.1:8001), equal weights; pick one by naming it on the
command line. Think time ``between(0.4, 1.0)`` s as in the digital twin (``ECRL_THINK_S``).
With ``ECRL_SHAPE`` set, a load shape from :mod:`ecrl.load.shapes` drives the user count
(see :mod:`ecrl.load.locust_shape` for every ``ECRL_*`` variable); without it, ``-u/-r/-t``.

Examples::

    # 10 users for 60 s, both protocols, per-second CSV history
    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 \\
        -u 10 -r 10 --csv results/run --csv-full-history -t 60s

    # the seeds' step shape (10→20→50 users), ten times shorter, HTTP only
    ECRL_SHAPE=step ECRL_TIME_SCALE=0.1 locust -f loadtest/locustfile.py --headless \\
        --host http://127.0.0.1:8000 --csv results/step --csv-full-history TritonHttpUser

    # a production trace (time_s,users or time_s,rps), gRPC only, half the users
    ECRL_SHAPE=traces/prod.csv ECRL_USERS_SCALE=0.5 ECRL_GRPC_URL=10.0.0.5:8001 \\
        locust -f loadtest/locustfile.py --headless --host http://10.0.0.5:8000 TritonGrpcUser
"""

from __future__ import annotations

# Locust monkey-patches the standard library with gevent when imported; gRPC's C core must
# then be switched to gevent before any channel exists (Locust's gRPC example and its
# contrib/milvus.py do the same).
import locust  # noqa: F401  # isort: skip
import grpc.experimental.gevent as grpc_gevent  # isort: skip

grpc_gevent.init_gevent()

import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, ClassVar  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from locust import LoadTestShape, User, between, constant_throughput, events, task  # noqa: E402
from locust.contrib.csv_request_logger import CsvRequestLogger  # noqa: E402
from locust.env import Environment  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from ecrl import serving  # noqa: E402
from ecrl.load import images  # noqa: E402
from ecrl.load.locust_shape import (  # noqa: E402
    grpc_url_from_env,
    http_url_from_host,
    request_log_from_env,
    request_timeout_from_env,
    schedule_from_env,
    think_time_from_env,
)

SCHEDULE = schedule_from_env(os.environ)
THINK_TIME_S = think_time_from_env(os.environ)
REQUEST_TIMEOUT_S = request_timeout_from_env(os.environ)
GRPC_URL = grpc_url_from_env(os.environ)
REQUEST_LOG = request_log_from_env(os.environ)
REQUEST_NAME = "infer"
BATCH_SHAPE = [1, *serving.INPUT_SHAPE]
OUTPUT_SHAPE = (1, serving.NUM_CLASSES)

# Open-loop traces give a request rate: each user then paces itself to a fixed rate and the
# shape sets how many such users run (a closed-loop think time would not follow the trace).
WAIT_TIME: Callable[..., float] = (
    constant_throughput(SCHEDULE.rps_per_user)
    if SCHEDULE is not None and SCHEDULE.open_loop
    else between(*THINK_TIME_S)
)


@events.init.add_listener
def _log_every_request(environment: Environment, **_kwargs: Any) -> None:
    """``ECRL_REQUEST_LOG=path``: one CSV row per request (send time, type, ms, error).

    Locust's own per-second history smooths rates and percentiles over ~10 s windows; the
    experiment's KPIs (p95 per second, SLO-violation seconds) need the raw requests.
    """
    if REQUEST_LOG is not None:
        CsvRequestLogger(REQUEST_LOG, flush_interval=200).register(environment)


class BadResponse(Exception):
    """The server answered, but not with [1, 1000] logits."""


def _inputs(module: Any) -> list[Any]:
    """One prebuilt single-image input per sample, shared read-only by every user.

    Built when Locust imports this file, so the ~1 s of image preprocessing never blocks the
    gevent loop during a run (tritonclient only reads these objects when it sends them).
    """
    built = []
    for img in images.load_samples():
        tensor = module.InferInput(serving.INPUT_NAME, BATCH_SHAPE, serving.DATATYPE)
        if module is httpclient:
            tensor.set_data_from_numpy(img[None], binary_data=True)
        else:
            tensor.set_data_from_numpy(img[None])
        built.append(tensor)
    return built


class _IdempotentGrpcClient(grpcclient.InferenceServerClient):
    """tritonclient's gRPC client, closed at most once.

    tritonclient's ``__del__`` closes the channel again after ``on_stop`` did; under gevent
    that second close, run by the garbage collector, can block the hub forever and Locust
    never exits (seen intermittently at shutdown under CPU load). Closing once, explicitly
    from the user's greenlet, avoids it.
    """

    _closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()


class _TritonUser(User):
    """One client, one image per request, timed and reported to Locust's request event."""

    abstract = True
    wait_time = WAIT_TIME
    request_type: ClassVar[str]
    inputs: ClassVar[list[Any]]

    def on_start(self) -> None:
        self._rng = np.random.default_rng()
        self.client = self._connect()

    def on_stop(self) -> None:
        self.client.close()

    def _connect(self) -> Any:
        raise NotImplementedError

    def _infer(self, tensor: Any) -> Any:
        raise NotImplementedError

    @task
    def infer(self) -> None:
        tensor = self.inputs[int(self._rng.integers(len(self.inputs)))]
        exception: Exception | None = None
        response_length = 0
        sent_at = time.time()
        start = time.perf_counter()
        try:
            logits = self._infer(tensor).as_numpy(serving.OUTPUT_NAME)
            if logits is None or logits.shape != OUTPUT_SHAPE:
                got = None if logits is None else list(logits.shape)
                want = list(OUTPUT_SHAPE)
                raise BadResponse(f"{serving.OUTPUT_NAME}: expected shape {want}, got {got}")
            response_length = int(logits.nbytes)
        except (InferenceServerException, BadResponse, OSError) as exc:
            # OSError: connection refused/reset or timed out (pods restarting count as failures).
            exception = exc
        response_time_ms = (time.perf_counter() - start) * 1000.0
        self.environment.events.request.fire(
            request_type=self.request_type,
            name=REQUEST_NAME,
            response_time=response_time_ms,
            response_length=response_length,
            exception=exception,
            context={},
            start_time=sent_at,
        )


class TritonHttpUser(_TritonUser):
    """KServe v2 over HTTP with the binary tensor extension, to Locust's ``--host``."""

    request_type = "HTTP"
    inputs = _inputs(httpclient)

    def _connect(self) -> httpclient.InferenceServerClient:
        url, ssl = http_url_from_host(self.host)
        self._outputs = [httpclient.InferRequestedOutput(serving.OUTPUT_NAME, binary_data=True)]
        return httpclient.InferenceServerClient(
            url, ssl=ssl, connection_timeout=REQUEST_TIMEOUT_S, network_timeout=REQUEST_TIMEOUT_S
        )

    def _infer(self, tensor: httpclient.InferInput) -> httpclient.InferResult:
        return self.client.infer(serving.MODEL_NAME, [tensor], outputs=self._outputs)


class TritonGrpcUser(_TritonUser):
    """KServe v2 over gRPC (Triton's ``GRPCInferenceService``) to ``ECRL_GRPC_URL``."""

    request_type = "gRPC"
    inputs = _inputs(grpcclient)

    def _connect(self) -> grpcclient.InferenceServerClient:
        self._outputs = [grpcclient.InferRequestedOutput(serving.OUTPUT_NAME)]
        return _IdempotentGrpcClient(GRPC_URL)

    def _infer(self, tensor: grpcclient.InferInput) -> grpcclient.InferResult:
        return self.client.infer(
            serving.MODEL_NAME, [tensor], outputs=self._outputs, client_timeout=REQUEST_TIMEOUT_S
        )


if SCHEDULE is not None:
    # Locust takes any non-abstract LoadTestShape subclass in the locustfile's namespace as
    # the shape, so the class exists only when ECRL_SHAPE asks for one.
    _schedule = SCHEDULE

    class EcrlLoadShape(LoadTestShape):
        """``ECRL_SHAPE`` (scaled by ``ECRL_TIME_SCALE``/``ECRL_USERS_SCALE``) as a Locust shape."""

        def tick(self) -> tuple[int, float] | None:
            return _schedule.tick(self.get_run_time())


# gevent's loop caches "now" from its last iteration, which was before this (slow) import;
# without a refresh Locust's ``-t`` timer, armed right after, fires early by the import time.
gevent.get_hub().loop.update_now()

__all__ = ["TritonGrpcUser", "TritonHttpUser"]
