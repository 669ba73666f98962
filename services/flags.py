"""Command-line flags (else environment variables) → a config mapping, shared by the services.

Each service declares ``FLAGS`` (config field → flag), which fields are numbers and which may
be switched off with an empty string; a flag wins over ``<PREFIX><FLAG>`` in the environment
(Kubernetes manifests set env, people type flags). A value that does not parse raises a
:class:`~ecrl.errors.ConfigError` naming the field, so every service fails with one line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Collection, Mapping
from typing import Any


def env_value(prefix: str, flag: str) -> str | None:
    """``--metrics-listen`` → ``$<prefix>METRICS_LISTEN``."""
    return os.environ.get(prefix + flag.lstrip("-").replace("-", "_").upper())


def flags_to_mapping(
    args: argparse.Namespace,
    flags: Mapping[str, str],
    numbers: Mapping[str, Callable[[str], Any]],
    optional: Collection[str],
    env_prefix: str,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``base`` updated with every flag (or env var) given; numbers parsed, "" → None."""
    from ecrl.errors import ConfigError

    data = dict(base or {})
    for name, flag in flags.items():
        raw = getattr(args, flag.lstrip("-").replace("-", "_"))
        if raw is None:
            raw = env_value(env_prefix, flag)
        if raw is None:
            continue
        if name in optional and raw == "":
            data[name] = None
        elif name in numbers:
            try:
                data[name] = numbers[name](raw)
            except ValueError:
                kind = "an integer" if numbers[name] is int else "a number"
                raise ConfigError("flags", name, f"{raw!r} is not {kind}") from None
        else:
            data[name] = raw
    return data
