"""The GPU box's set-up scripts, image builds and Makefile targets, dry-run against stubs.

``deploy/microk8s/install.sh`` and ``uninstall.sh`` run with a fake ``microk8s`` and
``nvidia-smi`` first on PATH: small scripts that print canned status and log every call, so a
test sees which read-only queries ran and which commands a dry run printed instead of running.
Also checked: the Dockerfiles' conventions (pinned base, numeric non-root user, health check,
entry point) against the Helm chart's expectations.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "microk8s" / "install.sh"
UNINSTALL = REPO / "deploy" / "microk8s" / "uninstall.sh"
BUILD_IMAGES = REPO / "deploy" / "docker" / "build-images.sh"
DOCKERFILES = sorted((REPO / "deploy" / "docker").glob("*.Dockerfile"))
CHART_VALUES = REPO / "deploy" / "helm" / "ecrl" / "values.yaml"
ADDONS = [
    "dns",
    "hostpath-storage",
    "registry",
    "metrics-server",
    "helm3",
    "nvidia",
    "observability",
]

FAKE_MICROK8S = r"""#!/usr/bin/env bash
# Test stub: logs each call; answers from STUB_* variables like a real single-node MicroK8s.
echo "microk8s $*" >> "$STUB_LOG"
case "$1" in
  status) cat "$STUB_STATUS" ;;
  kubectl)
    case "$*" in
      *"get namespace gpu-operator-resources"*) true ;;
      *"get namespace"*) [[ -n ${STUB_RELEASE:-} ]] ;;
      *"get clusterpolicies"*jsonpath*)
        [[ -n ${STUB_POLICY:-} ]] && printf '%s' "$STUB_POLICY" || exit 1 ;;
      *"get clusterpolicies"*) true ;;
      *"get nodes"*) printf '%s\n' "${STUB_GPUS:-1}" ;;
      *) true ;;
    esac ;;
  helm3) [[ $2 != status || -n ${STUB_RELEASE:-} ]] ;;
esac
"""
FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
echo "NVIDIA GeForce RTX 3080, 550.54.15, 10240 MiB"
"""


def status_yaml(enabled: set[str]) -> str:
    """``microk8s status --format yaml`` (1.28+ layout) with these addons enabled."""
    lines = ["microk8s:", "  running: true", "high-availability:", "  enabled: false", "addons:"]
    for name in [*ADDONS, "ingress", "metallb"]:
        state = "enabled" if name in enabled else "disabled"
        lines += [
            f"  - name: {name}",
            "    repository: core",
            f"    description: the {name} addon",
            "    version: 1.0.0",
            f"    status: {state}",
        ]
    return "\n".join(lines) + "\n"


class Box:
    """A fake GPU box: stub commands on PATH, their canned answers and their call log."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for name, text in (("microk8s", FAKE_MICROK8S), ("nvidia-smi", FAKE_NVIDIA_SMI)):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.log = tmp_path / "calls.log"
        self.log.touch()
        self.status = tmp_path / "status.yaml"
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "STUB_LOG": str(self.log),
            "STUB_STATUS": str(self.status),
            "DRY_RUN": "0",
        }
        self.set(enabled=set())

    def set(
        self,
        enabled: set[str],
        policy: str = "",
        gpus: int = 1,
        release: bool = False,
    ) -> None:
        self.status.write_text(status_yaml(enabled))
        self.env["STUB_POLICY"] = policy
        self.env["STUB_GPUS"] = str(gpus)
        self.env["STUB_RELEASE"] = "1" if release else ""

    def run(self, *argv: str | Path) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        return subprocess.run(
            ["bash", *map(str, argv)],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


def printed(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The commands a dry run printed, as typed ("+ " dropped; arguments quoted as needed)."""
    assert result.returncode == 0, result.stderr
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


# --------------------------------------------------------------------------- install.sh
def test_install_dry_run_enables_only_missing_addons_then_helm_then_time_slicing(box: Box) -> None:
    box.set(enabled={"dns", "helm3"})
    cmds = printed(box.run(INSTALL, "--dry-run", "--mode", "rl", "--tag", "t1"))
    enables = [c for c in cmds if c.startswith("microk8s enable ")]
    missing = [a for a in ADDONS if a not in {"dns", "helm3"}]
    assert enables == [f"microk8s enable {a}" for a in missing]
    helm = [c for c in cmds if c.startswith("microk8s helm3 ")]
    assert helm == [
        "microk8s helm3 upgrade --install ecrl deploy/helm/ecrl -n ecrl --create-namespace "
        "--set mode=rl --set image.tag=t1 --set image.registry=localhost:32000 "
        "--set gpuTimeSlicing.namespace=gpu-operator-resources "
        "--set gpuTimeSlicing.configMapName=ecrl-time-slicing --set gpuTimeSlicing.configKey=any"
    ]
    patch = [c for c in cmds if " patch " in c]
    assert len(patch) == 1
    body = json.loads(shlex.split(patch[0])[-1])
    assert body == {
        "spec": {"devicePlugin": {"config": {"name": "ecrl-time-slicing", "default": "any"}}}
    }
    assert cmds.index(helm[0]) > cmds.index(enables[-1])
    assert cmds.index(patch[0]) > cmds.index(helm[0])
    assert "would wait" in box.run(INSTALL, "--dry-run", "--tag", "t1").stdout
    # a dry run asked only read-only questions
    assert all(re.match(r"microk8s (status|kubectl get|helm3 status)\b", c) for c in box.calls())


def test_install_dry_run_on_a_set_up_box_changes_nothing_but_the_release(box: Box) -> None:
    box.set(enabled=set(ADDONS), policy="ecrl-time-slicing/any", gpus=4)
    result = box.run(INSTALL, "--dry-run", "--mode", "baseline", "--tag", "t2")
    cmds = printed(result)
    assert not [c for c in cmds if c.startswith("microk8s enable") or " patch " in c]
    assert [c.split(" --set ")[1] for c in cmds if "helm3 upgrade" in c] == ["mode=baseline"]
    assert "addon nvidia: enabled already" in result.stdout
    assert "nvidia.com/gpu: 4" in result.stdout
    assert "would wait" not in result.stdout


def test_install_passes_gpu_slots_and_extra_values_to_helm(box: Box) -> None:
    cmds = printed(
        box.run(
            INSTALL, "--dry-run", "--tag", "t", "--gpu-slots", "6", "--set", "loadtest.enabled=true"
        )
    )
    (helm,) = [c for c in cmds if "helm3 upgrade" in c]
    assert helm.endswith("--set gpuTimeSlicing.replicas=6 --set loadtest.enabled=true")


def test_install_help_lists_every_option(box: Box) -> None:
    result = box.run(INSTALL, "--help")
    assert result.returncode == 0
    for flag in ("--mode", "--tag", "--dry-run", "--build-images", "--gpu-slots", "--help"):
        assert flag in result.stdout
    assert box.calls() == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--frobnicate"], "install.sh: error: unknown flag --frobnicate (see --help)"),
        (
            ["--mode", "fast"],
            "install.sh: error: --mode: 'fast' is not baseline or rl (see --help)",
        ),
        (["--mode"], "install.sh: error: --mode needs a value (see --help)"),
        (
            ["--gpu-slots", "0"],
            "install.sh: error: --gpu-slots: '0' is not a whole number in 1..99 (see --help)",
        ),
    ],
)
def test_install_bad_flag_fails_with_one_line_naming_it(
    box: Box, argv: list[str], message: str
) -> None:
    result = box.run(INSTALL, *argv)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]
    assert box.calls() == []


def test_install_stops_with_the_fix_when_the_driver_does_not_answer(box: Box) -> None:
    (box.bin / "nvidia-smi").write_text(
        "#!/usr/bin/env bash\n"
        'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\n'
        "exit 9\n"
    )
    result = box.run(INSTALL, "--tag", "t")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("install.sh: error: nvidia-smi fails (NVIDIA-SMI has failed")
    assert "reboot" in line
    assert box.calls() == []  # nothing was touched


# --------------------------------------------------------------------------- uninstall.sh
def test_uninstall_dry_run_turns_time_slicing_off_then_removes_release_and_namespace(
    box: Box,
) -> None:
    box.set(enabled=set(ADDONS), policy="ecrl-time-slicing", release=True)
    cmds = printed(box.run(UNINSTALL, "--dry-run"))
    assert len(cmds) == 3
    body = json.loads(shlex.split(cmds[0])[-1])  # first: the ConfigMap goes with the release
    assert body == {"spec": {"devicePlugin": {"config": {"name": "", "default": ""}}}}
    assert cmds[1:] == [
        "microk8s helm3 uninstall ecrl -n ecrl --wait",
        "microk8s kubectl delete namespace ecrl --wait=true --timeout=300s",
    ]
    assert printed(box.run(UNINSTALL, "--dry-run", "--undo-time-slicing")) == cmds  # old flag


def test_uninstall_leaves_a_cluster_policy_not_naming_ours_alone(box: Box) -> None:
    box.set(enabled=set(ADDONS), policy="someone-elses", release=True)
    cmds = printed(box.run(UNINSTALL, "--dry-run"))
    assert [c.split()[1] for c in cmds] == ["helm3", "kubectl"]
    assert not any("patch" in c for c in cmds)


def test_uninstall_when_nothing_is_installed_prints_no_command(box: Box) -> None:
    result = box.run(UNINSTALL, "--dry-run", "--undo-time-slicing")
    assert printed(result) == []
    assert "release ecrl: not installed" in result.stdout


def test_uninstall_help_and_bad_flag(box: Box) -> None:
    assert "time-slicing" in box.run(UNINSTALL, "--help").stdout
    result = box.run(UNINSTALL, "--purge")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["uninstall.sh: error: unknown flag --purge (see --help)"]


# --------------------------------------------------------------------------- images, Makefile
def test_build_images_dry_run_builds_and_pushes_every_dockerfile(box: Box) -> None:
    cmds = printed(box.run(BUILD_IMAGES, "--dry-run", "--tag", "v9", "--builder", "docker"))
    images = [p.name.removesuffix(".Dockerfile") for p in DOCKERFILES]
    expected: list[str] = []
    for image in images:
        ref = f"localhost:32000/{image}:v9"
        expected += [
            f"docker build --file deploy/docker/{image}.Dockerfile --tag {ref} "
            "--label org.opencontainers.image.version=v9 .",
            f"docker push {ref}",
        ]
    assert cmds == expected


def test_build_images_with_buildah_pushes_over_plain_http(box: Box) -> None:
    cmds = printed(
        box.run(BUILD_IMAGES, "--dry-run", "--tag", "v9", "--builder", "buildah", "ecrl-collector")
    )
    assert cmds[1] == "buildah push --tls-verify=false localhost:32000/ecrl-collector:v9"
    bad = box.run(BUILD_IMAGES, "--tag", "v9", "nope")
    assert bad.returncode == 2
    assert bad.stderr.startswith("build-images.sh: error: unknown image 'nope'")


def test_make_dry_run_prints_the_docker_and_helm_commands(box: Box) -> None:
    box.set(enabled={"dns"}, release=True, policy="ecrl-time-slicing")
    box.env.update(DRY_RUN="1", BUILDER="docker")
    box.log.write_text("")
    result = subprocess.run(
        ["make", "--no-print-directory", "images", "deploy", "undeploy", "TAG=t3"],
        env=box.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    cmds = printed(result)
    pushes = [c for c in cmds if c.startswith("docker push ")]
    assert len(pushes) == 2 * len(DOCKERFILES)  # `images`, then again inside `deploy`
    assert any(c.startswith("microk8s helm3 upgrade --install ecrl") for c in cmds)
    assert "microk8s helm3 uninstall ecrl -n ecrl --wait" in cmds
    assert all(re.match(r"microk8s (status|kubectl get|helm3 status)\b", c) for c in box.calls())


def test_make_n_shows_the_scripts_each_target_runs() -> None:
    result = subprocess.run(
        [
            "make",
            "-n",
            "images",
            "deploy",
            "undeploy",
            "experiment-microk8s",
            "TAG=t4",
            "DRY_RUN=1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    assert "bash deploy/docker/build-images.sh --registry localhost:32000 --tag t4 --dry-run" in out
    assert (
        "bash deploy/microk8s/install.sh --mode rl --registry localhost:32000 --build-images "
        in out
    )
    assert "bash deploy/microk8s/uninstall.sh --dry-run" in out
    assert "ecrl experiment --backend microk8s --modes hpa-cpu,rl --shapes step --repeats 5" in out


# --------------------------------------------------------------------------- Dockerfiles
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n\s*",
        " ",
        "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        ),
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def test_every_chart_image_has_a_dockerfile() -> None:
    names = set(yaml.safe_load(CHART_VALUES.read_text())["image"]["names"].values())
    assert names == {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.stem)
def test_dockerfile_pins_its_base_and_runs_as_the_charts_numeric_user(path: Path) -> None:
    instructions = dockerfile_instructions(path)
    (base,) = [rest for word, rest in instructions if word == "ARG" and rest.startswith("PYTHON_")]
    assert re.fullmatch(
        r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base
    )
    assert [rest for word, rest in instructions if word == "FROM"] == [
        "${PYTHON_IMAGE} AS build",
        "${PYTHON_IMAGE}",
    ]
    final = final_stage(path)
    (user,) = [rest for word, rest in final if word == "USER"]
    security = yaml.safe_load(CHART_VALUES.read_text())["podSecurityContext"]
    assert user == f"{security['runAsUser']}:{security['runAsGroup']}"
    words = [word for word, _ in final]
    for needed in ("HEALTHCHECK", "ENTRYPOINT", "EXPOSE"):
        assert needed in words, f"{path.name}: no {needed}"
    # the lock file pins the install; only the image's own extra is asked for
    run = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "-c dev.lock" in run
    assert re.search(r"requirements\.py (services|testbed) ", run)


def test_dockerignore_lets_through_exactly_what_the_images_copy() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    sources = {
        src.rstrip("/")
        for path in DOCKERFILES
        for word, rest in dockerfile_instructions(path)
        if word == "COPY" and not rest.startswith("--from=")
        for src in rest.split()[:-1]
    }
    for src in sources:
        assert any(fnmatch(src, a) or src.startswith(a + "/") for a in allowed), src
    for a in allowed:
        assert any(fnmatch(src, a) for src in sources), f"{a} is let through but never copied"
