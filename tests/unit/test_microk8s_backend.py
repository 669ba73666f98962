"""``ecrl experiment --backend microk8s --dry-run``: the plan, in the order it would run."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecrl.cli import main
from ecrl.errors import ConfigError
from ecrl.experiment.microk8s_backend import Microk8sTarget, Shell, run_experiment_microk8s
from ecrl.experiment.runner import ExperimentConfig
from ecrl.load.shapes import LoadShape


def plan(repeats: int) -> list[str]:
    lines: list[str] = []
    target = Microk8sTarget(
        kubectl=("kubectl",),
        helm=("helm",),
        prom_url="http://127.0.0.1:9090",
        triton_url="http://127.0.0.1:8000",
        helm_set=("image.tag=1.2.3",),
        warmup_s=5,
    )
    cfg = ExperimentConfig(modes=("hpa-cpu", "rl"), shapes=("s",), repeats=repeats)
    shape = LoadShape("s", ((0, 1), (10, 1)))
    out = run_experiment_microk8s(
        cfg, [shape], target, Path("out"), 0.15, shell=Shell(True, lines.append), progress=False
    )
    assert out is None  # a dry run measures nothing
    return lines


def test_dry_run_switches_modes_with_helm_in_interleaved_order() -> None:
    lines = plan(repeats=2)
    switches = [x for x in lines if " upgrade --install ecrl " in x]
    modes = [x.split("--set mode=")[1].split()[0] for x in switches]
    assert modes == ["baseline", "rl", "rl", "baseline"]  # A B, B A
    assert all("--reuse-values" in x and "--wait" in x and "image.tag=1.2.3" in x for x in switches)
    # after every switch: one replica, rolled out, initial model config, warm-up, the run
    first = lines[: lines.index(switches[1])]
    assert "scale deployment/mobilenetv4-triton --replicas=1" in first[1]
    assert "rollout status" in first[2] and "/load" in first[3]
    assert "-u 2" in first[4] and "-t 5s" in first[4] and "warmup-s-hpa-cpu-0" in first[4]
    assert "locust along s" in first[5]
    assert not any("port-forward" in x for x in lines)  # both URLs were given


def test_without_urls_the_plan_port_forwards_prometheus_and_triton() -> None:
    lines: list[str] = []
    target = Microk8sTarget(kubectl=("kubectl",), helm=("helm",), warmup_s=0)
    cfg = ExperimentConfig(modes=("rl",), shapes=("s",), repeats=1)
    run_experiment_microk8s(
        cfg,
        [LoadShape("s", ((0, 1), (5, 1)))],
        target,
        Path("o"),
        0.15,
        Shell(True, lines.append),
        False,
    )
    forwards = [x for x in lines if "port-forward" in x]
    assert "svc/kube-prom-stack-kube-prome-prometheus" in forwards[0] and ":9090" in forwards[0]
    assert "-n ecrl svc/mobilenetv4-triton" in forwards[1]
    assert all(f":{p}" in forwards[1] for p in (8000, 8001, 8002))


def test_modes_the_chart_does_not_have_are_refused() -> None:
    # static runs on the testbed, but the chart has no such mode
    cfg = ExperimentConfig(modes=("rl", "static"), shapes=("s",), repeats=1)
    with pytest.raises(ConfigError, match="--modes.*static.*microk8s"):
        run_experiment_microk8s(
            cfg, [LoadShape("s", ((0, 1), (5, 1)))], Microk8sTarget(), Path("o"), 0.15, Shell(True)
        )


def test_cli_dry_run_prints_the_plan_and_exits_0(capsys) -> None:
    argv = ["experiment", "--backend", "microk8s", "--dry-run", "--shapes", "step"]
    argv += ["--repeats", "1", "--kubectl", "kubectl", "--helm", "helm", "--warmup", "0"]
    argv += ["--triton-url", "http://127.0.0.1:8000", "--prometheus-url", "http://p:9090"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "nothing measured" in captured.out
    assert captured.err.count("upgrade --install") == 2


def test_cli_rejects_a_set_without_equals(capsys) -> None:
    argv = ["experiment", "--backend", "microk8s", "--dry-run", "--set", "image.tag"]
    assert main(argv) == 2
    assert "--set" in capsys.readouterr().err
