"""The emulator's own Prometheus metrics (``ecrl_emulator_*``), apart from the emulated
Triton and DCGM series: what the emulator process itself did, for debugging the testbed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "ecrl_emulator_requests",
    "Inference requests answered by the emulator, by protocol and outcome.",
    ["protocol", "outcome"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "ecrl_emulator_request_seconds",
    "Server-side emulated latency of successful requests.",
    ["protocol"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
PODS = Gauge("ecrl_emulator_pods", "Ready pods the emulator serves.", registry=REGISTRY)
ANNOTATIONS = Counter(
    "ecrl_emulator_usage_patches",
    "kwok usage annotation patches written, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
