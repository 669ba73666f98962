"""The collector: PromQL over Prometheus (and Triton's model config) → one state per tick.

Layout, protocol outside in (the same split as the policy server):

- :mod:`.__main__` is the command line; :mod:`.server` starts and stops everything together.
- :mod:`.grpc_api` (``ecrl.v1.StateService``, health, reflection) and :mod:`.http_api`
  (``/state`` JSON, ``/metrics``, ``/healthz``, ``/readyz``) are thin shells over the store.
- :mod:`.collector` runs the tick loop and keeps the last states (immutable snapshots).
- :mod:`.queries` holds every PromQL, once, with its source; :mod:`.sources` runs them
  (prometheus-api-client) and reads Triton's model config.
- :mod:`.observation` turns the results into an :class:`~ecrl.policies.base.Observation`,
  purely: stale or missing inputs are marked missing, never invented; the state is then
  ``ecrl.schema.encode`` of it — the same code the twin's observations go through.
- :mod:`.metrics` is the collector's own Prometheus registry.
"""
