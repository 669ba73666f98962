"""The learned policy's target checks report misses as misses."""

from __future__ import annotations

import pandas as pd

from ecrl.experiment.targets import check_targets, per_shape_rows


def kpis(rows: list[tuple[str, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "mode": m,
                "profile": "step",
                "gpu_replica_seconds": c,
                "slo_violation_ratio": v,
                "scaling_actions_per_hour": a,
            }
            for m, c, v, a in rows
        ]
    )


def test_targets_all_met_when_rl_is_cheap_safe_and_calm() -> None:
    df = kpis([("rl", 105, 0.005, 10), ("oracle", 100, 0.0, 60), ("hpa-cpu", 200, 0.2, 12)])
    got = {t.name: t.met for t in check_targets(df, "rl", "oracle", "hpa-cpu")}
    assert all(got.values()) and len(got) == 5


def test_targets_report_each_miss() -> None:
    df = kpis([("rl", 150, 0.05, 100), ("oracle", 100, 0.0, 60), ("hpa-cpu", 120, 0.06, 12)])
    got = {t.name: t for t in check_targets(df, "rl", "oracle", "hpa-cpu")}
    assert not got["cost ÷ oracle cost"].met and got["cost ÷ oracle cost"].value == 1.5
    assert not got["SLO-violation seconds (share)"].met
    assert not got["fewer violation-seconds than hpa-cpu"].met
    assert not got["cost ÷ hpa-cpu cost"].met
    assert not got["scaling actions/h ÷ hpa-cpu's"].met
    assert "MISSED" in got["cost ÷ oracle cost"].text()


def test_no_targets_without_the_rl_mode() -> None:
    assert check_targets(kpis([("hpa-cpu", 1, 0, 0)]), "rl", None, "hpa-cpu") == []


def test_per_shape_rows_cover_each_mode_that_ran() -> None:
    head, rows = per_shape_rows(kpis([("rl", 1, 0, 0), ("hpa-cpu", 2, 0, 0)]), ["rl", "hpa-cpu"])
    assert head[:2] == ["profile", "mode"] and [r[1] for r in rows] == ["rl", "hpa-cpu"]
