"""Placement scoring: node features, upstream scores, the twin hook, training, ONNX, comparison."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ecrl.cli import main
from ecrl.config import from_mapping
from ecrl.errors import ConfigError, InvalidRequest, Permanent
from ecrl.experiment.placement import (
    PlacementCompareConfig,
    compare_placement,
    default_contenders,
)
from ecrl.experiment.runner import run_one
from ecrl.load.shapes import get_shape
from ecrl.placement import (
    NODE_FEATURE_DIM,
    NODE_SCHEMA_HASH,
    KubeDefaultScorer,
    MlpNodeScorer,
    NodeState,
    OnnxNodeScorer,
    PodRequest,
    balanced_allocation_score,
    extender_priorities,
    least_allocated_score,
    node_features,
    node_states_from_twin,
    twin_placement,
)
from ecrl.rl.placement_train import (
    MULTI_NODE_CLUSTER,
    PlacementTrainConfig,
    export_placement_onnx,
    fast_config,
    train_placement,
)
from ecrl.twin.profile import Profile, builtin_profile_path, load_profile
from ecrl.twin.spec import (
    GIB,
    ClusterSpec,
    DeploymentSpec,
    GpuSpec,
    NodeSpec,
    load_cluster,
    resolve_cluster,
)
from ecrl.twin.twin import Twin

POD = PodRequest(cpu_cores=2.0, memory_bytes=4 * GIB)


@pytest.fixture(scope="module")
def profile() -> Profile:
    return load_profile(builtin_profile_path("rtx3080-mobilenetv4"))


def random_nodes(n: int, seed: int = 0) -> list[NodeState]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        slots = int(rng.integers(1, 7))
        cpu = float(rng.choice([8.0, 16.0, 32.0]))
        out.append(
            NodeState(
                name=f"n{i}",
                gpu_count=1,
                gpu_slots_total=slots,
                gpu_slots_free=int(rng.integers(1, slots + 1)),
                gpu_speed=float(rng.uniform(0.3, 2.0)),
                gpu_util_ratio=None if i == 1 else float(rng.uniform(0, 1)),
                vram_free_ratio=float(rng.uniform(0, 1)),
                cpu_allocatable_cores=cpu,
                cpu_requested_cores=float(rng.uniform(0, cpu - 2)),
                memory_allocatable_bytes=64.0 * GIB,
                memory_requested_bytes=float(rng.uniform(0, 32)) * GIB,
                replicas=int(rng.integers(0, 3)),
            )
        )
    return out


def random_scorer(hidden: int = 8, seed: int = 1) -> MlpNodeScorer:
    n = sum(i * o + o for i, o in MlpNodeScorer.dims(hidden))
    return MlpNodeScorer.from_flat(np.random.default_rng(seed).normal(0, 0.5, n), hidden)


# ----------------------------------------------------------------------- features and scorers
def test_shuffling_nodes_permutes_features_and_scores_identically() -> None:
    nodes = random_nodes(5)
    scorer = random_scorer()
    perm = np.random.default_rng(3).permutation(5)
    x, xp = node_features(nodes, POD), node_features([nodes[i] for i in perm], POD)
    np.testing.assert_allclose(xp, x[perm], rtol=1e-6)
    np.testing.assert_allclose(
        scorer.score([nodes[i] for i in perm], POD), scorer.score(nodes, POD)[perm], rtol=1e-5
    )


@pytest.mark.parametrize("n_nodes", [1, 2, 5])
def test_scorer_scores_any_node_count(n_nodes: int) -> None:
    nodes = random_nodes(n_nodes, seed=n_nodes)
    assert node_features(nodes, POD).shape == (n_nodes, NODE_FEATURE_DIM)
    scores = random_scorer(hidden=0).score(nodes, POD)
    assert scores.shape == (n_nodes,) and np.isfinite(scores).all()


def test_missing_gpu_util_is_flagged_not_invented() -> None:
    x = node_features(random_nodes(2), POD)
    assert x[1, 4] == 0.0 and x[1, 5] == 1.0 and x[0, 5] == 0.0


def test_empty_or_negative_input_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="at least one"):
        node_features([], POD)
    bad = dataclasses.replace(random_nodes(1)[0], cpu_allocatable_cores=0.0)
    with pytest.raises(InvalidRequest, match="cpu_allocatable_cores"):
        KubeDefaultScorer().score([bad], POD)


def node(cpu_m: int, mem: int, req_cpu_m: int = 0, req_mem: int = 0) -> NodeState:
    return NodeState("n", 1, 4, 4, 1.0, 0.0, 1.0, cpu_m / 1000, req_cpu_m / 1000, mem, req_mem, 0)


def test_least_allocated_matches_upstream_differently_sized_nodes_case() -> None:
    # least_allocated_test.go, "nothing scheduled, resources requested, differently sized
    # nodes": pod 3000m / 5000; node1 4000m / 10000 → (25 + 50) / 2 = 37; node2 6000m → 50.
    pod = PodRequest(cpu_cores=3.0, memory_bytes=5000)
    assert least_allocated_score(node(4000, 10000), pod) == 37
    assert least_allocated_score(node(6000, 10000), pod) == 50


def test_least_allocated_truncates_like_go_and_scores_overcommit_zero() -> None:
    pod = PodRequest(cpu_cores=1.0, memory_bytes=0)
    # cpu (3000 − 1000)·100 // 3000 = 66 (not 67); memory 100 → (66 + 100) // 2 = 83
    assert least_allocated_score(node(3000, 10000), pod) == 83
    assert least_allocated_score(node(3000, 10000, req_cpu_m=2500), pod) == 50  # cpu over → 0


def test_balanced_allocation_matches_upstream_std_form() -> None:
    pod = PodRequest(cpu_cores=3.0, memory_bytes=5000)
    # fractions 0.75 and 0.5 → std = |0.75 − 0.5| / 2 = 0.125 → int(87.5) = 87
    assert balanced_allocation_score(node(4000, 10000), pod) == 87
    assert balanced_allocation_score(node(6000, 10000), pod) == 100  # 0.5 and 0.5
    # fraction capped at 1: cpu 6000/4000 → 1, memory 0.5 → std 0.25 → 75
    assert balanced_allocation_score(node(4000, 10000, req_cpu_m=3000), pod) == 75


def test_default_scheduler_is_the_sum_of_both_plugins() -> None:
    pod = PodRequest(cpu_cores=3.0, memory_bytes=5000)
    scores = KubeDefaultScorer().score([node(4000, 10000), node(6000, 10000)], pod)
    assert scores.tolist() == [37 + 87, 50 + 100]


def test_extender_priorities_scale_to_zero_to_ten() -> None:
    assert extender_priorities(np.array([-1.0, 0.0, 3.0])) == [0, 2, 10]
    assert extender_priorities(np.array([5.0, 5.0])) == [10, 10]


# ------------------------------------------------------------------------------ the twin
def test_multi_node_config_has_three_differently_sized_gpu_nodes() -> None:
    cluster = load_cluster(MULTI_NODE_CLUSTER)
    speeds = sorted(g.speed for n in cluster.nodes for g in n.gpus)
    assert len(cluster.nodes) == 3 and len(set(speeds)) == 3 and speeds[1] == 1.0
    assert cluster.total_gpu_slots >= cluster.deployment.max_replicas >= 8


def test_decorrelated_config_misleads_the_default_scheduler_onto_the_slow_card(
    profile: Profile,
) -> None:
    same, decor = load_cluster(MULTI_NODE_CLUSTER), resolve_cluster("multi-node-decorrelated")
    cards = sorted((g.speed, g.slots) for n in decor.nodes for g in n.gpus)
    assert cards == sorted((g.speed, g.slots) for n in same.nodes for g in n.gpus)
    empty = dataclasses.replace(decor, deployment=DeploymentSpec(0, 0))
    states = node_states_from_twin(Twin(empty, profile, n_envs=1, seed=0), 0)
    first = states[int(np.argmax(KubeDefaultScorer().score(states, POD)))]
    assert first.gpu_speed == min(s.gpu_speed for s in states)  # the roomiest host: the T4


class PreferNode:
    """Scores one node far above the rest and records what it was shown."""

    name = "prefer"

    def __init__(self, favourite: str) -> None:
        self.favourite = favourite
        self.seen: list[list[str]] = []

    def score(self, nodes: list[NodeState], pod: PodRequest) -> np.ndarray:
        self.seen.append([n.name for n in nodes])
        return np.array([100.0 if n.name == self.favourite else 0.0 for n in nodes])


def test_twin_hook_binds_only_to_feasible_gpus(profile: Profile) -> None:
    nodes = (
        NodeSpec("tiny-cpu", cpu_cores=1.0, gpus=(GpuSpec(slots=4, speed=3.0),)),
        NodeSpec("one-slot", cpu_cores=16.0, gpus=(GpuSpec(slots=1),)),
        NodeSpec("roomy", cpu_cores=32.0, gpus=(GpuSpec(slots=4),)),
    )
    deploy = DeploymentSpec(initial_replicas=1, max_replicas=6)
    cluster = ClusterSpec(nodes=nodes, deployment=deploy, system_reserved_cpu_cores=0.0)
    scorer = PreferNode("tiny-cpu")
    tw = Twin(cluster, profile, n_envs=2, seed=0, placement=twin_placement(scorer))
    tw.set_targets(replicas=np.array([6.0, 6.0]))
    per_gpu = tw.pods_per_gpu(tw.holding())
    assert per_gpu[:, 0].sum() == 0  # 1 core cannot hold a 2-core pod
    assert (per_gpu <= tw.gpu_slots).all() and per_gpu.sum(axis=1).tolist() == [5.0, 5.0]
    assert all("tiny-cpu" not in seen for seen in scorer.seen)
    assert ["one-slot", "roomy"] in scorer.seen and ["roomy"] in scorer.seen


def test_node_states_from_twin_count_replicas_and_slots(profile: Profile) -> None:
    cluster = load_cluster(MULTI_NODE_CLUSTER)
    tw = Twin(cluster, profile, n_envs=1, seed=0, placement=twin_placement(PreferNode("edge-t4")))
    tw.set_targets(replicas=np.array([3.0]))
    states = {s.name: s for s in node_states_from_twin(tw, 0)}
    t4 = states["edge-t4"]
    assert t4.replicas == 2 and t4.gpu_slots_free == 0 and t4.gpu_speed == 0.5
    assert t4.cpu_requested_cores == 4.0 and sum(s.replicas for s in states.values()) == 3


# -------------------------------------------------------------------------------- training
def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="population"):
        from_mapping(PlacementTrainConfig, {"population": 7})
    with pytest.raises(ConfigError, match="sigma"):
        from_mapping(PlacementTrainConfig, {"sigma": -1.0})


def test_fast_training_learns_to_put_the_pod_on_the_fast_gpu(tmp_path: Path) -> None:
    # One replica (static), two identical nodes but for the GPU: the slow card is listed first,
    # so the default scheduler (ties → first) and the twin's spread both pick it and violate
    # the SLO; the right answer is the fast card.
    nodes = (
        NodeSpec("slow", cpu_cores=16.0, gpus=(GpuSpec(slots=4, speed=0.12),)),
        NodeSpec("fast", cpu_cores=16.0, gpus=(GpuSpec(slots=4, speed=2.0),)),
    )
    cluster = ClusterSpec(nodes=nodes, system_reserved_cpu_cores=0.0)
    cfg = fast_config(
        cluster=cluster,
        autoscaler="static",
        max_users=40.0,
        node_subsets=False,
        speed_jitter=(1.0, 1.0),
        size_jitter=(1.0, 1.0),
    )
    report = train_placement(cfg, tmp_path, progress=False)
    assert report["best_validation"] < 0.8 * report["validation_baselines"]["default-scheduler"]
    learned = OnnxNodeScorer(tmp_path / "placement.onnx")
    empty = dataclasses.replace(cluster, deployment=DeploymentSpec(0, 0))
    tw = Twin(empty, load_profile(builtin_profile_path(cluster.profile)), n_envs=1, seed=0)
    states = node_states_from_twin(tw, 0)  # the decision training made: the first pod
    scores = learned.score(states, PodRequest(2.0, 4 * GIB))
    assert scores[1] > scores[0]
    assert report["export"]["parity_ok"] and report["wall_time_s"] < 20.0


# ---------------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlpNodeScorer, Path, dict]:
    scorer = random_scorer()
    path = tmp_path_factory.mktemp("onnx") / "placement.onnx"
    return scorer, path, export_placement_onnx(scorer, path)


@pytest.mark.parametrize("n_nodes", [1, 2, 5])
def test_onnx_round_trip_matches_numpy_within_1e5(exported: tuple, n_nodes: int) -> None:
    scorer, path, report = exported
    nodes = random_nodes(n_nodes, seed=10 + n_nodes)
    np.testing.assert_allclose(
        OnnxNodeScorer(path).score(nodes, POD), scorer.score(nodes, POD), atol=1e-5
    )
    assert report["max_abs_diff_vs_torch"] <= 1e-5


def test_onnx_metadata_names_kind_and_node_schema(exported: tuple) -> None:
    _, path, _ = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["kind"] == "placement-scorer" and meta["node_schema_hash"] == NODE_SCHEMA_HASH


def test_onnx_with_another_node_schema_hash_is_refused(exported: tuple, tmp_path: Path) -> None:
    _, path, _ = exported
    proto = onnx.load(str(path))
    for p in proto.metadata_props:
        if p.key == "node_schema_hash":
            p.value = "0000000000000000"
    bad = tmp_path / "other.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(Permanent, match="node schema hash"):
        OnnxNodeScorer(bad)


def test_npz_round_trip_and_hash_refusal(tmp_path: Path) -> None:
    scorer = random_scorer(hidden=4)
    path = scorer.save_npz(tmp_path / "s.npz")
    nodes = random_nodes(3)
    np.testing.assert_allclose(
        MlpNodeScorer.load_npz(path).score(nodes, POD), scorer.score(nodes, POD)
    )
    arrays = dict(np.load(path))
    arrays["node_schema_hash"] = np.array("ffffffffffffffff")
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(Permanent, match="node schema hash"):
        MlpNodeScorer.load_npz(tmp_path / "bad.npz")


# ---------------------------------------------------------------------------- comparison
def test_run_one_without_placement_is_unchanged_and_with_a_hook_binds_by_it(
    profile: Profile,
) -> None:
    cluster = load_cluster(MULTI_NODE_CLUSTER)
    shape = get_shape("step").scaled(0.2)
    plain = run_one("static", shape, cluster, profile, seed=3)
    assert run_one("static", shape, cluster, profile, seed=3, placement=None).kpis == plain.kpis
    slow, fast = (
        run_one("static", shape, cluster, profile, seed=3, placement=twin_placement(PreferNode(n)))
        for n in ("edge-t4", "big-rtx4090")
    )
    assert slow.kpis["latency_p95_s"] > fast.kpis["latency_p95_s"]  # one pod: 0.5× vs 1.7× card


def test_comparison_pairs_scorers_by_seed_and_puts_the_baseline_first(exported: tuple) -> None:
    _, path, _ = exported
    cfg = PlacementCompareConfig(shapes=("step",), repeats=2, time_scale=0.2)
    result = compare_placement(
        cfg, load_cluster(MULTI_NODE_CLUSTER), default_contenders(path), progress=False
    )
    runs = result.runs
    assert list(runs["mode"].unique()) == ["default-scheduler", "twin-spread", "learned"]
    assert runs.groupby("repeat")["seed"].nunique().tolist() == [1, 1]  # common random numbers
    assert result.markdown.splitlines()[2].split("|")[2].strip() == "default-scheduler"


def test_comparison_does_not_import_torch() -> None:
    code = "import sys, ecrl.experiment.placement, ecrl.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_placement_compare_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["placement", "compare", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "ecrl placement compare --cluster multi-node-decorrelated" in out


def test_placement_compare_cli_writes_the_table_of_three_contenders(
    exported: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path, _ = exported
    argv = ["placement", "compare", "--scorer", str(path), "--shapes", "step"]
    argv += ["--repeats", "2", "--time-scale", "0.2", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    table = (tmp_path / "placement.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| step |")]
    assert [r.split("|")[2].strip() for r in rows] == [
        "default-scheduler",
        "twin-spread",
        "learned",
    ]
    assert (tmp_path / "summary.csv").is_file() and rows[0] in capsys.readouterr().out


def test_placement_compare_without_a_scorer_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["placement", "compare", "--scorer", str(tmp_path / "none.onnx")]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--scorer" in err and len(err.splitlines()) == 1
