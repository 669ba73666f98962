"""Autoscaling policies behind one interface (:class:`Policy`), and a registry by name.

Baselines: ``hpa-cpu`` (Kubernetes HPA v2 on CPU utilization, upstream defaults),
``hpa-queue`` (HPA on Triton's average queue time), ``kpa`` (Knative-like concurrency
autoscaler with panic mode) and ``static`` (fixed allocation).

Example::

    policy = make_policy("hpa-queue", target_queue_time_s=0.05)
    action = policy.decide(observation)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ecrl.config import from_mapping
from ecrl.errors import ConfigError
from ecrl.policies.base import Action, Observation, PodMetrics, Policy
from ecrl.policies.hpa import (
    HpaBehavior,
    HpaConfig,
    HpaPolicy,
    ScaleDownRules,
    ScaleUpRules,
    ScalingPolicy,
)
from ecrl.policies.kpa import KpaConfig, KpaPolicy
from ecrl.policies.static import StaticConfig, StaticPolicy

__all__ = [
    "POLICY_NAMES",
    "Action",
    "HpaBehavior",
    "HpaConfig",
    "HpaPolicy",
    "KpaConfig",
    "KpaPolicy",
    "Observation",
    "PodMetrics",
    "Policy",
    "ScaleDownRules",
    "ScaleUpRules",
    "ScalingPolicy",
    "StaticConfig",
    "StaticPolicy",
    "make_policy",
]


def _hpa(metric: str) -> Callable[[str, dict[str, Any]], Policy]:
    def build(name: str, kwargs: dict[str, Any]) -> Policy:
        if kwargs.get("metric", metric) != metric:
            raise ConfigError(f"policy {name}", "metric", f"is fixed to {metric!r} by the name")
        config = from_mapping(HpaConfig, {**kwargs, "metric": metric}, source=f"policy {name}")
        return HpaPolicy(config, name=name)

    return build


def _kpa(name: str, kwargs: dict[str, Any]) -> Policy:
    return KpaPolicy(from_mapping(KpaConfig, kwargs, source=f"policy {name}"), name=name)


def _static(name: str, kwargs: dict[str, Any]) -> Policy:
    return StaticPolicy(from_mapping(StaticConfig, kwargs, source=f"policy {name}"), name=name)


_REGISTRY: dict[str, Callable[[str, dict[str, Any]], Policy]] = {
    "hpa-cpu": _hpa("cpu"),
    "hpa-queue": _hpa("queue_time"),
    "kpa": _kpa,
    "static": _static,
}
POLICY_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""Names :func:`make_policy` accepts."""


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Build a baseline policy by name; ``kwargs`` are its config fields, validated.

    Nested settings are plain mappings, as in YAML (e.g. ``behavior={"scale_down":
    {"stabilization_window_s": 60}}``). An unknown name or field raises ``ConfigError``.
    """
    build = _REGISTRY.get(name)
    if build is None:
        raise ConfigError("make_policy", "name", f"{name!r} is not one of {list(POLICY_NAMES)}")
    return build(name, kwargs)
