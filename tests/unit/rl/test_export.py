"""Agent → ONNX export: a valid, stamped graph that computes what torch computes."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ecrl import actions
from ecrl.errors import Permanent
from ecrl.policy_model import PolicyModel
from ecrl.rl import export
from ecrl.rl.agent import MASKED_LOGIT, Agent, greedy_heads, padded_head_index
from ecrl.rl.export import (
    ExportError,
    ExportReport,
    export_onnx,
    parity_inputs,
    reexport_onnx,
)
from ecrl.schema import SCHEMA_HASH, SCHEMA_VERSION, STATE_DIM, describe

TRAIN_CONFIG = {"ppo": {"seed": 3, "lr": 3e-4}, "profile": "mnv4", "out": Path("runs/x")}


def trained_like_agent(seed: int = 0) -> Agent:
    """An untrained Agent whose normalization statistics are far from identity."""
    torch.manual_seed(seed)
    agent = Agent(STATE_DIM, actions.NVEC)
    scale = torch.linspace(0.1, 200.0, STATE_DIM)
    for _ in range(3):
        agent.obs_rms.update(torch.randn(256, STATE_DIM) * scale + 5.0)
    return agent


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Agent, ExportReport]:
    agent = trained_like_agent()
    path = tmp_path_factory.mktemp("export") / "policy.onnx"
    return agent, export_onnx(agent, path, TRAIN_CONFIG)


def realistic_batch(agent: Agent, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw states around the agent's statistics and masks that always keep every no-op."""
    rng = np.random.default_rng(seed)
    mean, std = agent.obs_rms.mean.numpy(), np.sqrt(agent.obs_rms.var.numpy())
    states = rng.normal(mean, 2.0 * std, size=(n, STATE_DIM)).astype(np.float32)
    masks = rng.random((n, sum(actions.NVEC))) < 0.6
    masks[:, np.add(actions.OFFSETS, actions.NOOP)] = True
    return states, masks


def test_export_passes_onnx_checker_with_opset_at_least_17(
    exported: tuple[Agent, ExportReport],
) -> None:
    _, report = exported
    proto = onnx.load(report.path)
    onnx.checker.check_model(proto, full_check=True)
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets.get("", opsets.get("ai.onnx", 0)) >= 17
    assert report.opset >= 17
    assert report.bytes == Path(report.path).stat().st_size < 200_000


def test_export_graph_has_named_io_with_dynamic_batch_axis(
    exported: tuple[Agent, ExportReport],
) -> None:
    graph = onnx.load(exported[1].path).graph

    def io(values: list[onnx.ValueInfoProto]) -> dict[str, tuple[int, list[object]]]:
        return {
            v.name: (
                v.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        }

    heads, width = len(actions.NVEC), sum(actions.NVEC)
    assert io(list(graph.input)) == {
        "state": (onnx.TensorProto.FLOAT, ["batch", STATE_DIM]),
        "action_mask": (onnx.TensorProto.BOOL, ["batch", width]),
    }
    assert io(list(graph.output)) == {
        "action": (onnx.TensorProto.INT64, ["batch", heads]),
        "logits": (onnx.TensorProto.FLOAT, ["batch", width]),
        "value": (onnx.TensorProto.FLOAT, ["batch", 1]),
    }


def test_export_metadata_names_schema_action_space_and_train_config(
    exported: tuple[Agent, ExportReport],
) -> None:
    _, report = exported
    meta = {p.key: p.value for p in onnx.load(report.path).metadata_props}
    config_json = json.dumps(TRAIN_CONFIG, sort_keys=True, default=str)
    assert meta["ecrl.kind"] == "scaling-policy"
    assert meta["ecrl.schema_version"] == SCHEMA_VERSION
    assert meta["ecrl.schema_hash"] == SCHEMA_HASH == report.schema_hash
    assert json.loads(meta["ecrl.schema"]) == describe()
    assert meta["ecrl.action_spec"] == actions.spec_json()
    assert json.loads(meta["ecrl.nvec"]) == list(actions.NVEC)
    assert meta["ecrl.train_config"] == config_json
    assert meta["ecrl.train_config_hash"] == report.train_config_hash
    assert len(report.train_config_hash) == 16
    assert report.train_config_hash == export.config_hash(dict(reversed(TRAIN_CONFIG.items())))


def test_onnx_matches_torch_within_1e_5_with_identical_greedy_actions(
    exported: tuple[Agent, ExportReport],
) -> None:
    agent, report = exported
    assert report.max_abs_diff <= 1e-5 and report.actions_equal
    model = PolicyModel.load(report.path)
    states, masks = realistic_batch(agent, 200, seed=7)
    got = model.decide_raw(states, masks)
    with torch.no_grad():
        _, logits, value = agent(torch.from_numpy(states), torch.from_numpy(masks))
    np.testing.assert_array_equal(got.action, agent.act(states, masks))
    assert got.action.dtype == np.int64
    assert np.abs(got.logits - logits.numpy())[masks].max() <= 1e-5
    assert np.abs(got.value - value.numpy()).max() <= 1e-5


def test_one_argmax_over_padded_heads_is_the_per_head_argmax() -> None:
    """The serving path's single ArgMax picks what an argmax per head picks, ties included
    (integer-valued logits tie often), and with every step but one of a head masked."""
    torch.manual_seed(5)
    agent = trained_like_agent()
    n, width = 4000, sum(actions.NVEC)
    logits = torch.randint(-2, 3, (n, width)).float()
    masks = torch.rand(n, width) < 0.4
    masks[:, list(np.add(actions.OFFSETS, actions.NOOP))] = True
    masked = torch.where(masks, logits, MASKED_LOGIT)
    padded = torch.nn.functional.pad(masked, (0, 1), value=MASKED_LOGIT)
    per_head = padded[:, agent.head_index]
    np.testing.assert_array_equal(per_head.argmax(dim=2), greedy_heads(masked, actions.NVEC))
    states, masks_np = realistic_batch(agent, 500, seed=3)
    with torch.no_grad():
        action, logits_out, _ = agent(torch.from_numpy(states), torch.from_numpy(masks_np))
    np.testing.assert_array_equal(action, greedy_heads(logits_out, actions.NVEC))


def test_padded_head_index_lays_heads_side_by_side() -> None:
    assert padded_head_index((3, 1, 2)).tolist() == [[0, 1, 2], [3, 6, 6], [4, 5, 6]]


@pytest.mark.parametrize("which", ["exported", "packaged"])
def test_onnxruntime_runs_the_lean_graph(
    which: str, exported: tuple[Agent, ExportReport], tmp_path: Path
) -> None:
    """One normalization, one ArgMax: after onnxruntime's optimizations the served graph has
    the six Gemms and seven other nodes (the per-head graph had 26 nodes; each costs time).
    The packaged policy was rewritten with ``ecrl reexport``."""
    import onnxruntime as ort

    from ecrl.policy_model import builtin_policy_path

    path = exported[1].path if which == "exported" else builtin_policy_path()
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("ArgMax") == 1 and ops.count("Sub") == 1
    assert len(ops) <= 13, ops


def test_reexport_keeps_weights_metadata_and_answers(
    exported: tuple[Agent, ExportReport], tmp_path: Path
) -> None:
    agent, report = exported
    again = reexport_onnx(report.path, tmp_path / "again.onnx")
    old, new = onnx.load(report.path), onnx.load(again.path)
    assert {p.key: p.value for p in old.metadata_props} == {
        p.key: p.value for p in new.metadata_props
    }
    assert again.train_config_hash == report.train_config_hash
    constants = [sorted(i.raw_data or b"" for i in m.graph.initializer) for m in (old, new)]
    assert constants[0] == constants[1]  # weights, mean and std: the same bytes
    states, masks = realistic_batch(agent, 300, seed=11)
    a, b = (PolicyModel.load(p).decide_raw(states, masks) for p in (report.path, again.path))
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.value, b.value)


def test_reexport_in_place_still_compares_with_the_old_file(
    exported: tuple[Agent, ExportReport], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dst == src`` must compare against the answers of the file as it was, not itself."""
    import shutil

    path = tmp_path / "same.onnx"
    shutil.copyfile(exported[1].path, path)
    reexport_onnx(path, path)  # the same agent: equal answers, accepted
    changed = export.agent_of_onnx(path)[0]
    with torch.no_grad():
        changed.actor[4].bias.add_(1.0)

    def shifted(_: object) -> tuple[Agent, dict[str, object]]:
        return changed, {}

    monkeypatch.setattr(export, "agent_of_onnx", shifted)
    with pytest.raises(ExportError, match="differs from"):
        reexport_onnx(path, path)


def test_reexport_refuses_a_file_that_is_not_a_policy(tmp_path: Path) -> None:
    from services.policy_server.config import default_scorer_path

    scorer = default_scorer_path()
    assert scorer is not None
    with pytest.raises(ExportError, match="not an ECRL scaling policy"):
        reexport_onnx(scorer, tmp_path / "x.onnx")


def test_normalization_is_baked_into_the_graph(
    exported: tuple[Agent, ExportReport], tmp_path: Path
) -> None:
    agent, report = exported
    plain = trained_like_agent()
    plain.obs_rms.mean.zero_()
    plain.obs_rms.var.fill_(1.0)
    other = export_onnx(plain, tmp_path / "plain.onnx", TRAIN_CONFIG)
    states, masks = realistic_batch(agent, 32, seed=1)
    with_stats = PolicyModel.load(report.path).decide_raw(states, masks).value
    without = PolicyModel.load(other.path).decide_raw(states, masks).value
    assert np.abs(with_stats - without).max() > 1e-3


def test_export_leaves_the_callers_agent_in_training_mode(tmp_path: Path) -> None:
    agent = trained_like_agent(seed=2)
    agent.train()
    export_onnx(agent, tmp_path / "p.onnx", {})
    assert agent.training


def test_parity_batch_includes_sample_states_and_keeps_every_noop_allowed() -> None:
    agent = trained_like_agent()
    samples = np.full((3, STATE_DIM), 2.0, dtype=np.float32)
    states, masks = parity_inputs(agent, samples)
    assert states.shape == (export.PARITY_BATCH + 3, STATE_DIM)
    np.testing.assert_array_equal(states[-3:], samples)
    assert masks[:, np.add(actions.OFFSETS, actions.NOOP)].all()
    assert not masks.all()


def test_export_raises_export_error_when_parity_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "PARITY_TOL", -1.0)
    with pytest.raises(ExportError, match="differs from torch") as info:
        export_onnx(trained_like_agent(), tmp_path / "p.onnx", {})
    assert isinstance(info.value, Permanent)


def test_export_refuses_agent_built_for_another_state_schema(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="another schema"):
        export_onnx(Agent(STATE_DIM + 1, actions.NVEC), tmp_path / "p.onnx", {})


def test_export_refuses_opset_below_17(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset"):
        export_onnx(trained_like_agent(), tmp_path / "p.onnx", {}, opset=13)


def test_report_serializes_to_json_for_the_training_result(
    exported: tuple[Agent, ExportReport],
) -> None:
    data = json.loads(json.dumps(asdict(exported[1])))
    assert set(data) == {
        "path",
        "opset",
        "bytes",
        "max_abs_diff",
        "actions_equal",
        "schema_hash",
        "train_config_hash",
    }


def test_reexport_command_rewrites_the_packaged_policy_byte_for_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The packaged policy was written by this command: doing it again changes no byte."""
    from ecrl.cli import main
    from ecrl.policy_model import builtin_policy_path

    out = tmp_path / "rl-policy.onnx"
    assert main(["reexport", builtin_policy_path(), "--out", str(out)]) == 0
    assert out.read_bytes() == Path(builtin_policy_path()).read_bytes()
    assert "the answers of" in capsys.readouterr().out
    assert main(["reexport", str(tmp_path / "missing.onnx"), "--out", str(out)]) == 1
    assert "cannot read it as ONNX" in capsys.readouterr().err


def test_reexport_command_refuses_a_scorer_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecrl.cli import main
    from services.policy_server.config import default_scorer_path

    scorer = default_scorer_path()
    assert scorer is not None
    assert main(["reexport", scorer, "--out", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ecrl reexport: error:") and "\n" not in err
    assert not (tmp_path / "x.onnx").exists()
