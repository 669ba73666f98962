"""Exception types shared by the library and the services.

Kept to a handful (after kserve's ``errors.py``) so that transports map them once:
HTTP status codes in one place, gRPC status codes in another.
"""

from __future__ import annotations


class EcrlError(Exception):
    """Base class for every error ECRL raises on purpose."""


class ConfigError(EcrlError, ValueError):
    """A configuration, profile or trace file is invalid; the message names the field."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        super().__init__(f"{source}: field '{field}': {problem}")


class InvalidRequest(EcrlError):
    """The caller sent something malformed (HTTP 400 / gRPC INVALID_ARGUMENT)."""


class NotReady(EcrlError):
    """The component cannot answer yet (HTTP 503 / gRPC UNAVAILABLE); retry later."""


class Temporary(EcrlError):
    """A dependency failed in a way that may heal by itself; retry later."""


class Permanent(EcrlError):
    """A failure that retrying cannot fix (e.g. schema mismatch); give up and fall back."""
