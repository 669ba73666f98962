"""`ecrl train`: a smoke run on the twin end to end, --help, and one-line config errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ecrl.cli import main
from ecrl.policy_model import PolicyModel
from ecrl.rl.env import EnvConfig
from ecrl.rl.ppo import Args
from ecrl.rl.train import TrainConfig, run_training


def test_training_smoke_run_exports_a_policy_the_serving_loader_accepts(tmp_path: Path) -> None:
    cfg = TrainConfig(
        ppo=Args(num_envs=4, num_steps=8, total_timesteps=4 * 8 * 3, eval_every=1, hidden=16),
        env=EnvConfig(episode_s=60.0),
        validation_shapes=(),
        validation_generated=1,
    )
    _, result, export = run_training(cfg, tmp_path, progress=False)
    assert result.updates == 3 and result.global_steps == 96
    assert export["max_abs_diff"] <= 1e-5 and export["opset"] >= 17
    model = PolicyModel.load(tmp_path / "policy.onnx")
    assert model.info["train_config_hash"] == cfg.config_hash()
    assert (tmp_path / "tb").is_dir() and (tmp_path / "result.json").exists()


def test_train_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "ecrl train --out" in capsys.readouterr().out


def test_bad_training_config_is_one_line_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "train.yaml"
    bad.write_text("ppo:\n  gamma: 1.5\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "ppo.gamma" in err and len(err.splitlines()) == 1


def test_config_hash_changes_with_any_setting() -> None:
    cfg = TrainConfig()
    assert cfg.config_hash() != replace(cfg, ppo=replace(cfg.ppo, seed=2)).config_hash()
