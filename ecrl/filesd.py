"""Prometheus file-based service discovery (``file_sd_configs``) files, written atomically.

Written to a temporary name and renamed, so Prometheus' file watcher never reads half a file
(it would drop every target of the job until the next change).
"""

from __future__ import annotations

import json
from pathlib import Path


def write_sd(directory: Path, job: str, groups: list[dict]) -> Path:
    """Write ``<directory>/<job>.json``: a list of ``{"targets": [...], "labels": {...}}``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{job}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(groups, indent=1))
    tmp.replace(path)
    return path
