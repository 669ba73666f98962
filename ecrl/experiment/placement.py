"""Compare node scorers on the multi-node twin: same autoscaler, same seeds, only placement differs.

Why a comparison of its own: ``ecrl experiment`` compares *scaling* modes on one placement; here
the replica policy is held fixed (``hpa-queue`` by default) and the contenders are placements —
the GPU-unaware default scheduler (baseline), the twin's GPU-aware spread, and the learned
scorer. Every run goes through :func:`ecrl.experiment.runner.run_one` (the loop the main harness
uses), so the two harnesses cannot drift apart.

- Common random numbers by seed, as in the main harness: repeat k of a shape uses the same seed
  for every scorer (and scorers are the inner loop). The training-only trick of sharing the
  arrival draws between envs (``ecrl.rl.placement_train.CommonDraws``) is not used here: a
  comparison runs the twin exactly as every other experiment does.
- Named shapes only (:data:`HELD_OUT_SHAPES`): training and validation see generated shapes, so
  these are held out. Users are scaled ×2 because the seeds' shapes are sized for the one-GPU
  box and the cluster holds about twice the replicas.
- Torch-free: the learned scorer is loaded from ONNX by :func:`ecrl.placement.load_node_scorer`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ecrl.config import bounds
from ecrl.experiment.runner import resolve_profile, run_one, run_seed
from ecrl.experiment.stats import significance_marks, summarize
from ecrl.load.shapes import LoadShape, get_shape
from ecrl.placement import KubeDefaultScorer, NodeScorer, load_node_scorer, twin_placement
from ecrl.twin.profile import Profile
from ecrl.twin.spec import ClusterSpec

HELD_OUT_SHAPES: tuple[str, ...] = ("step", "mixed", "bursty", "diurnal")
"""Named shapes the comparison runs on (training and validation only see generated shapes)."""
SPREAD = "twin-spread"
"""The twin's built-in GPU-aware spread (placement hook None): free slots + free CPU."""
BASELINE_SCORER = "default-scheduler"
LEARNED_SCORER = "learned"
PACKAGED_SCORER = str(Path(__file__).resolve().parent.parent / "models" / "placement.onnx")
"""The trained scorer shipped with the package (``ecrl placement train --install``)."""


@dataclass(frozen=True)
class PlacementCompareConfig:
    """Scorers × held-out named shapes × repeats, one autoscaler for every placement."""

    shapes: tuple[str, ...] = HELD_OUT_SHAPES
    repeats: int = field(default=5, metadata=bounds(1, 1000))
    seed: int = field(default=0, metadata=bounds(0, 2**31 - 1))
    users_scale: float = field(default=2.0, metadata=bounds(0.01, 100.0))
    """Users × this: the seeds' shapes are sized for the box; the cluster holds 2× the replicas."""
    time_scale: float = field(default=1.0, metadata=bounds(0.01, 100.0))
    """Multiply every shape's duration (tests use shorter runs)."""
    autoscaler: str = "hpa-queue"
    """Fixed replica policy (``default_policy_factory`` names, tuned settings applied)."""
    profile: str = "rtx3080-mobilenetv4"

    def config_hash(self, cluster: ClusterSpec, profile: Profile) -> str:
        blob = json.dumps(
            [asdict(self), asdict(cluster), asdict(profile)], sort_keys=True, default=str
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PlacementComparison:
    """Per-run KPIs (one row per scorer × shape × repeat, with its seed), summary and table."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    markdown: str


def comparison_shape(name: str, cfg: PlacementCompareConfig) -> LoadShape:
    """A named shape with its load × ``users_scale`` and its duration × ``time_scale``."""
    base = get_shape(name)
    shape = replace(base, points=tuple((t, v * cfg.users_scale) for t, v in base.points))
    return shape.scaled(cfg.time_scale) if cfg.time_scale != 1.0 else shape


def compare_placement(
    cfg: PlacementCompareConfig,
    cluster: ClusterSpec,
    scorers: dict[str, NodeScorer | None],
    progress: bool = True,
) -> PlacementComparison:
    """Run every (shape, repeat, scorer) with ``run_one``; baseline = the first scorer.

    ``scorers`` maps a name to a scorer (None = the twin's spread). Repeat k of a shape uses
    the same seed for every scorer (common random numbers); scorers are the inner loop.
    """
    profile = resolve_profile(cfg.profile)
    shapes = [comparison_shape(s, cfg) for s in cfg.shapes]
    todo = [
        (si, rep, name)
        for si in range(len(shapes))
        for rep in range(cfg.repeats)
        for name in scorers
    ]
    runs = []
    for si, rep, name in tqdm(todo, desc="placement-compare", disable=not progress):
        scorer = scorers[name]
        hook = None if scorer is None else twin_placement(scorer)
        seed = run_seed(cfg.seed, si, rep)
        res = run_one(cfg.autoscaler, shapes[si], cluster, profile, seed, rep, placement=hook)
        runs.append({"mode": name, "profile": res.shape, "repeat": rep, "seed": seed, **res.kpis})
    frame = pd.DataFrame(runs)
    summary = summarize(frame, baseline_mode=next(iter(scorers)))
    return PlacementComparison(frame, summary, markdown_table(summary))


def markdown_table(summary: pd.DataFrame) -> str:
    """SLO-violation share, p95 and cost per shape × scorer: mean ± 95 % CI, Welch p vs baseline."""
    kpis = (("slo_violation_ratio", "SLO viol.", 1.0), ("latency_p95_s", "p95 ms", 1e3))
    kpis += (("gpu_replica_seconds", "cost rep·s", 1.0),)
    head = "| shape | scorer | " + " | ".join(k[1] for k in kpis) + " |"
    lines = [head, "|" + "---|" * (2 + len(kpis))]
    for (shape, mode), grp in summary.groupby(["profile", "mode"], sort=False):
        cells = []
        for kpi, _, scale in kpis:
            r = grp[grp["kpi"] == kpi].iloc[0]
            p = r["p_welch"]
            tail = "" if np.isnan(p) else f" (p={p:.3f}{significance_marks(p)})"
            cells.append(f"{r['mean'] * scale:.3g} ± {r['ci_half'] * scale:.2g}{tail}")
        lines.append(f"| {shape} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_contenders(learned: str | Path | None) -> dict[str, NodeScorer | None]:
    """default-scheduler (baseline, first), the twin's spread, and the learned scorer if given."""
    out: dict[str, NodeScorer | None] = {BASELINE_SCORER: KubeDefaultScorer(), SPREAD: None}
    if learned is not None:
        out[LEARNED_SCORER] = load_node_scorer(learned)
    return out


def write_comparison(
    result: PlacementComparison, out_dir: str | Path, meta: dict[str, Any]
) -> dict[str, Path]:
    """``placement.md`` (table + what was run), ``summary.csv``, ``runs.csv``, ``meta.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": out / "placement.md",
        "summary": out / "summary.csv",
        "runs": out / "runs.csv",
        "meta": out / "meta.json",
    }
    header = [
        f"# Placement comparison — {meta.get('cluster', '?')}",
        "",
        f"Autoscaler `{meta.get('autoscaler')}` for every scorer; baseline (Welch p) = "
        f"`{meta.get('baseline')}`; {meta.get('repeats')} repeats per shape, base seed "
        f"{meta.get('seed')}, config hash `{meta.get('config_hash')}`. Mean ± 95 % CI; "
        "backend: the embedded twin (emulated, not hardware).",
        "",
    ]
    files["markdown"].write_text("\n".join([*header, result.markdown, ""]))
    result.summary.to_csv(files["summary"], index=False)
    result.runs.to_csv(files["runs"], index=False)
    files["meta"].write_text(json.dumps(meta, indent=2, default=str))
    return files
