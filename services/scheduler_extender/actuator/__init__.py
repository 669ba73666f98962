"""The scaling actuator: one control tick per period (DESIGN.md, "One control tick").

collector ``/state`` → safety envelope mask → policy server ``Decide`` → decode → envelope
clamp → apply (scale subresource, in-place pod resize, Triton load-with-config) → audit line.
Any policy-server failure, a schema mismatch or a stale state falls back to the
HPA-equivalent rule, still behind the envelope. Only the Lease holder acts.

Runs as its own process, ``python -m services.scheduler_extender.actuator`` — not inside the
extender's gunicorn workers, so there is exactly one control loop per process however many
workers serve ``/filter``; several replicas of it are safe (the Lease elects one).

Modules: :mod:`.config` (flags → frozen config), :mod:`.state` (collector snapshot),
:mod:`.loop` (the tick, pure over injected parts), :mod:`.apply` (Kubernetes + Triton),
:mod:`.leader` (Lease election), :mod:`.audit` (JSON lines), :mod:`.metrics`.
"""
