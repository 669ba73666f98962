"""The three deployable services: policy server, collector, scheduler extender + actuator.

Each is its own process and container image (``python -m services.<name>``); they share only
the :mod:`ecrl` library and the generated protobuf code (``ecrl/v1``). A service's ``client``
module is its public face for the others (e.g. ``services.policy_server.client``); nothing
else crosses between services.
"""

import os as _os

GRPC_EXPERIMENTS = (
    "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
)
"""gRPC core's TCP endpoints on its long-standing iomgr path instead of the EventEngine
endpoints that the locked grpcio (1.85) uses by default. Measured on the 2-core box
(BENCHMARKS.md "Services"): a sequential Decide p50 1.28 → 0.85 ms, p99 1.8 → 1.25 ms with
client and server both switched (either side alone gained nothing); grpcio 1.75.0 gave the
same gain without it, but tritonclient needs ≥ 1.81. Set here, in the package every service
process imports first, because gRPC reads the variable when it initializes; a
``GRPC_EXPERIMENTS`` already in the environment is left as it is."""
_os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
