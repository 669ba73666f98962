"""The learned policy's targets (issue 3), checked on the runs as they came out.

Targets are pooled over the load shapes of the experiment (sum over runs of each KPI's
numerator, so a long or heavy shape weighs what it weighs) and reported met or missed — never
tuned, never hidden. Per-shape rows show where a miss comes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

COST = "gpu_replica_seconds"
VIOLATION = "slo_violation_ratio"
ACTIONS = "scaling_actions_per_hour"
REPLICA_ACTIONS = "replica_actions_per_hour"


@dataclass(frozen=True)
class Target:
    """One acceptance check: the measured value, the bound, and whether it holds."""

    name: str
    value: float
    bound: str
    met: bool

    def text(self) -> str:
        verdict = "met" if self.met else "MISSED"
        return f"{self.name}: {self.value:.3g} (target {self.bound}) — {verdict}"


def _mean(kpis: pd.DataFrame, mode: str, kpi: str) -> float:
    v = kpis.loc[kpis["mode"] == mode, kpi].astype(float)
    return float(v.mean()) if len(v) else math.nan


def check_targets(
    kpis: pd.DataFrame, rl_mode: str, oracle_mode: str | None, baseline_mode: str
) -> list[Target]:
    """The four checks of issue 3 for ``rl_mode`` (empty when the needed modes were not run)."""
    modes = set(kpis["mode"])
    if rl_mode not in modes or baseline_mode not in modes:
        return []
    rl_cost, base_cost = _mean(kpis, rl_mode, COST), _mean(kpis, baseline_mode, COST)
    rl_viol, base_viol = _mean(kpis, rl_mode, VIOLATION), _mean(kpis, baseline_mode, VIOLATION)
    out: list[Target] = []
    if oracle_mode in modes:
        ratio = rl_cost / _mean(kpis, oracle_mode, COST)
        out.append(Target("cost ÷ oracle cost", ratio, "≤ 1.10", ratio <= 1.10))
    out.append(Target("SLO-violation seconds (share)", rl_viol, "≤ 0.01", rl_viol <= 0.01))
    fewer = 1.0 - rl_viol / base_viol if base_viol > 0 else math.nan
    out.append(
        Target(
            f"fewer violation-seconds than {baseline_mode}",
            fewer,
            "≥ 0.40",
            bool(fewer >= 0.40) if not math.isnan(fewer) else False,
        )
    )
    out.append(
        Target(f"cost ÷ {baseline_mode} cost", rl_cost / base_cost, "≤ 1.00", rl_cost <= base_cost)
    )
    for kpi, label in ((ACTIONS, "scaling actions/h"), (REPLICA_ACTIONS, "replica changes/h")):
        if kpi not in kpis:
            continue
        rl_act, base_act = _mean(kpis, rl_mode, kpi), _mean(kpis, baseline_mode, kpi)
        out.append(
            Target(
                f"{label} ÷ {baseline_mode}'s",
                rl_act / base_act if base_act > 0 else math.inf if rl_act > 0 else 1.0,
                "≤ 1.00",
                rl_act <= base_act,
            )
        )
    return out


def per_shape_rows(
    kpis: pd.DataFrame,
    modes: list[str],
    kpis_shown: tuple[str, ...] = (COST, VIOLATION, ACTIONS, REPLICA_ACTIONS),
) -> tuple[list[str], list[list[str]]]:
    """Mean per (shape, mode) of the target KPIs, as table header and rows."""
    head = ["profile", "mode", *kpis_shown]
    rows = []
    for shape in pd.unique(kpis["profile"]):
        for mode in modes:
            sel = kpis[(kpis["profile"] == shape) & (kpis["mode"] == mode)]
            if sel.empty:
                continue
            cells = [
                f"{sel[k].astype(float).mean():.3g}" if k in sel else "missing" for k in kpis_shown
            ]
            rows.append([str(shape), mode, *cells])
    return head, rows
