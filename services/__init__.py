"""The three deployable services: policy server, collector, scheduler extender + actuator.

Each is its own process and container image (``python -m services.<name>``); they share only
the :mod:`ecrl` library and the generated protobuf code (``ecrl/v1``). A service's ``client``
module is its public face for the others (e.g. ``services.policy_server.client``); nothing
else crosses between services.
"""
