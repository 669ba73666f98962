"""JSON without NaN/Infinity: strict parsers (browsers, jq, Go) reject Python's extensions.

Missing values are NaN inside ECRL; on the wire they become ``null`` — still missing, never 0.
"""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats → None, recursively through dicts, lists, tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
