"""Load shapes: how many Locust users (or requests/s) there are at each second.

One definition used by the twin, the testbed's emulator and Locust's ``LoadTestShape``
(``loadtest/locustfile.py`` calls :meth:`LoadShape.tick`). A shape is a piecewise-linear
function of time over ``points``; ``kind`` says whether the values are closed-loop users
(Locust users with a think time, the seeds' setting) or an open-loop request rate
(replayed production traces that give ``rps``).

Built-in shapes follow the seeds (seeds/001 §8, seeds/002 "Load Pattern"): constant 10 users;
step 10→20→50; ramp 1→50 over 5 min; low/medium/high = 10/50/100 users; mixed. Bursty
(flash crowd) and diurnal shapes are added because a controller must survive both.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ecrl.errors import ConfigError


@dataclass(frozen=True)
class LoadShape:
    """A piecewise-linear load curve: ``points`` = ((time_s, value), ...) from t=0."""

    name: str
    points: tuple[tuple[float, float], ...]
    kind: Literal["users", "rps"] = "users"
    description: str = ""

    def __post_init__(self) -> None:
        src = f"shape '{self.name}'"
        if len(self.points) < 2:
            raise ConfigError(src, "points", "needs at least two (time_s, value) points")
        ts = [p[0] for p in self.points]
        if ts[0] != 0:
            raise ConfigError(src, "points[0].time_s", "must start at 0")
        for i, (t, v) in enumerate(self.points):
            if not (math.isfinite(t) and math.isfinite(v)) or v < 0:
                raise ConfigError(src, f"points[{i}]", f"({t}, {v}) must be finite with value >= 0")
            if i and t < ts[i - 1]:
                raise ConfigError(src, f"points[{i}].time_s", "times must not decrease")

    @property
    def duration_s(self) -> float:
        return float(self.points[-1][0])

    def value_at(self, t_s: np.ndarray | float) -> np.ndarray:
        """Users (or rps) at time(s) ``t_s``; vertical steps take the later value at their time."""
        t = np.asarray(t_s, dtype=float)
        ts = np.array([p[0] for p in self.points])
        vs = np.array([p[1] for p in self.points])
        # For duplicated times (a vertical step) np.interp takes the right-most value.
        return np.interp(t, ts, vs)

    def series(self, dt_s: float = 1.0) -> np.ndarray:
        """Values at t = 0, dt, 2dt, … up to (excluding) the duration."""
        n = round(self.duration_s / dt_s)
        return self.value_at(np.arange(n) * dt_s)

    def tick(self, run_time_s: float, spawn_rate: float = 10.0) -> tuple[int, float] | None:
        """Locust ``LoadTestShape.tick()``: (users, spawn_rate), or None when the shape ends."""
        if self.kind != "users":
            raise ValueError(
                f"shape '{self.name}' is open-loop (rps); use a constant-throughput user"
            )
        if run_time_s >= self.duration_s:
            return None
        return round(float(self.value_at(run_time_s))), spawn_rate

    def scaled(self, time_factor: float) -> LoadShape:
        """The same shape compressed or stretched in time (CI runs shorter shapes)."""
        pts = tuple((t * time_factor, v) for t, v in self.points)
        return LoadShape(f"{self.name}", pts, self.kind, self.description)


def _steps(levels: list[tuple[float, float]], end_s: float) -> tuple[tuple[float, float], ...]:
    """Vertical steps: [(start_s, users), ...] held until the next start (and end_s)."""
    pts: list[tuple[float, float]] = []
    for i, (start, users) in enumerate(levels):
        if i:
            pts.append((start, levels[i - 1][1]))
        pts.append((start, users))
    pts.append((end_s, levels[-1][1]))
    return tuple(pts)


def _diurnal(
    duration_s: float, lo: float, hi: float, n: int = 48
) -> tuple[tuple[float, float], ...]:
    """One compressed day: a cosine from night (lo) to the afternoon peak (hi) and back."""
    ts = np.linspace(0.0, duration_s, n + 1)
    vs = lo + (hi - lo) * 0.5 * (1.0 - np.cos(2.0 * np.pi * ts / duration_s))
    return tuple((float(t), float(round(v, 3))) for t, v in zip(ts, vs, strict=True))


BUILTIN_SHAPES: dict[str, LoadShape] = {
    s.name: s
    for s in (
        LoadShape(
            "constant", _steps([(0, 10)], 300), description="10 users (seeds/002 constant load)"
        ),
        LoadShape(
            "step",
            _steps([(0, 10), (100, 20), (200, 50)], 300),
            description="10→20→50 users (seeds/002)",
        ),
        LoadShape("ramp", ((0, 1), (300, 50)), description="1→50 users over 5 min (seeds/002)"),
        LoadShape("low", _steps([(0, 10)], 300), description="10 users (seeds/001 low)"),
        LoadShape("medium", _steps([(0, 50)], 300), description="50 users (seeds/001 medium)"),
        LoadShape("high", _steps([(0, 100)], 300), description="100 users (seeds/001 high)"),
        LoadShape(
            "mixed",
            _steps([(0, 10), (75, 100), (150, 50), (225, 10)], 300),
            description="low→high→medium→low (seeds/001 mixed)",
        ),
        LoadShape(
            "bursty",
            _steps([(0, 20), (120, 100), (150, 20)], 360),
            description="flash crowd: 20 users, 100 for 30 s at t=120 s",
        ),
        LoadShape(
            "diurnal", _diurnal(600, 5, 80), description="compressed day: 5→80→5 users over 10 min"
        ),
    )
}

SEED_SHAPES: tuple[str, ...] = ("constant", "step", "ramp", "low", "medium", "high", "mixed")


def get_shape(name_or_path: str) -> LoadShape:
    """A built-in shape by name, or a trace CSV by path."""
    if name_or_path in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[name_or_path]
    if Path(name_or_path).suffix.lower() == ".csv":
        return load_trace(name_or_path)
    raise ConfigError(
        "load",
        "shape",
        f"unknown shape {name_or_path!r} (built-in: {', '.join(BUILTIN_SHAPES)}; or a .csv trace)",
    )


def load_trace(path: str | Path) -> LoadShape:
    """A user trace as a shape: CSV with ``time_s`` and either ``users`` or ``rps``.

    Taken as-is (researchers bring production traces): extra columns are ignored, rows are
    kept in file order, and a bad row is reported by line number.
    """
    p = Path(path)
    try:
        with p.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            if "time_s" not in cols:
                raise ConfigError(str(p), "time_s", f"missing column (found: {cols})")
            kind = "users" if "users" in cols else "rps" if "rps" in cols else None
            if kind is None:
                raise ConfigError(
                    str(p), "users|rps", f"need a 'users' or 'rps' column (found: {cols})"
                )
            points: list[tuple[float, float]] = []
            for lineno, row in enumerate(reader, start=2):
                cells = {k.strip(): v for k, v in row.items() if k is not None}
                try:
                    points.append((float(cells["time_s"]), float(cells[kind])))
                except (TypeError, ValueError):
                    raise ConfigError(
                        str(p), f"line {lineno}", f"time_s/{kind} must be numbers, got {row}"
                    ) from None
    except FileNotFoundError:
        raise ConfigError(str(p), "<file>", "file not found") from None
    if points and points[0][0] != 0:
        points.insert(0, (0.0, points[0][1]))
    return LoadShape(p.stem, tuple(points), kind, description=f"trace {p.name}")  # type: ignore[arg-type]
