"""ECRL's kube-scheduler extender: GPU-slot-aware filter, learned node scores, optional bind.

Layout (after gpushare-scheduler-extender: routes → scheduler logic → cache):

- ``wire``: the extender JSON (``k8s.io/kube-scheduler/extender/v1``) ↔ typed objects.
- ``gpu``: time-sliced ``nvidia.com/gpu`` slot accounting and the filter rule (pure).
- ``cache``: the cluster view (nodes and bound pods, re-listed every 2 s; fails open when stale).
- ``kube``: Kubernetes API adapters (lists, the Binding subresource).
- ``scoring``: the pluggable ``Scorer`` (local, or the policy server over gRPC).
- ``extender``: the verbs without HTTP, fail-open by construction.
- ``app``: Flask routes, metrics, one JSON log line per call.
- ``__main__``: flags → config → gunicorn.

The scheduler calls it as configured in ``deploy/testbed/scheduler-config.yaml``
(``nodeCacheCapable: true``, ``ignorable: true``, ``httpTimeout: 5s``).
"""
