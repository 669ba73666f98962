"""The policy server: the learned scaling policy and node scorer (ONNX) behind gRPC.

Layout, protocol outside in (kserve's model server split: the protocol never leaks into the
model code):

- :mod:`.server` wires the gRPC server, grpc.health.v1, reflection, TLS and the metrics port;
  :mod:`.__main__` is the command line, :mod:`.config` its validated configuration.
- :mod:`.grpc_service` is the thin gRPC shell: bytes → messages → :mod:`.decisions`, errors
  mapped to status codes in one place, deadlines honoured.
- :mod:`.decisions` is the transport-free core: validate, decide, score, describe.
- :mod:`.model_store` holds the loaded policy and scorer, reloads them on change and swaps one
  reference atomically; :mod:`.heuristic` answers when no valid policy is loaded.
- :mod:`.results` holds the plain-data answers; :mod:`.convert` turns messages into plain data
  and back; both are shared with :mod:`.client`, what the actuator and the extender import.
- :mod:`.metrics` is the Prometheus registry.
"""
