"""Start and stop the testbed: a real Kubernetes 1.33 control plane with kwok-emulated GPU nodes.

Everything real that can run here is real: kube-apiserver, kube-controller-manager (with the
HPA) and kube-scheduler built from the Go module proxy by ``deploy/testbed/build.sh``, etcd from
Debian, metrics-server. Only the nodes are emulated (kwok), because there is no GPU and no
container runtime. ``kwokctl --runtime binary`` supervises the processes; every port binds to
127.0.0.1. :func:`up` is idempotent and :func:`down` removes every process and file it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ecrl.errors import ConfigError
from ecrl.testbed import procs

REPO = Path(__file__).resolve().parents[2]
TESTBED_DIR = REPO / "deploy" / "testbed"
K8S_VERSION = os.environ.get("K8S_VERSION", "1.33.13")
CACHE = Path(os.environ.get("ECRL_CACHE", Path.home() / ".cache" / "ecrl"))
DEFAULT_NAME = "ecrl"
DEFAULT_EXTENDER_URL = "http://127.0.0.1:8888"
ETCD_BINARY = "/usr/bin/etcd"
"""Debian's etcd-server 3.4 (fine for Kubernetes ≤ 1.34)."""


class TestbedError(RuntimeError):
    """The testbed could not be built or started; the message says which step and why."""


@dataclass(frozen=True)
class Testbed:
    """A running testbed cluster: where its kubeconfig and binaries are."""

    __test__ = False  # not a pytest test class, despite the name

    name: str
    kubeconfig: Path
    bin_dir: Path
    workdir: Path

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None) -> str:
        """Run the testbed's kubectl against this cluster; returns stdout."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            input=input_text,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise TestbedError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout


def build_binaries() -> Path:
    """Build (or find cached) control-plane binaries; returns their folder."""
    if shutil.which("etcd") is None and not Path(ETCD_BINARY).exists():
        raise TestbedError("etcd missing: install the Debian package etcd-server (make testbed)")
    proc = subprocess.run(
        ["bash", str(TESTBED_DIR / "build.sh")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "K8S_VERSION": K8S_VERSION, "ECRL_CACHE": str(CACHE)},
    )
    if proc.returncode != 0:
        raise TestbedError(f"building binaries failed: {proc.stderr.strip()[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def workdir() -> Path:
    return CACHE / "testbed" / "kwok"


def kwokctl_config(bin_dir: Path, extender_url: str, out: Path) -> Path:
    """Write the KwokctlConfiguration naming every local binary and our scheduler config."""
    sched = (TESTBED_DIR / "scheduler-config.yaml").read_text()
    sched_path = out.with_name("scheduler-config.yaml")
    sched_path.write_text(sched.replace("${EXTENDER_URL}", extender_url))
    options = {
        "runtime": "binary",
        "kubeVersion": f"v{K8S_VERSION}",
        "bindAddress": "127.0.0.1",
        "kubeApiserverBinary": str(bin_dir / "kube-apiserver"),
        "kubeControllerManagerBinary": str(bin_dir / "kube-controller-manager"),
        "kubeSchedulerBinary": str(bin_dir / "kube-scheduler"),
        "kubectlBinary": str(bin_dir / "kubectl"),
        "kwokControllerBinary": str(bin_dir / "kwok"),
        "metricsServerBinary": str(bin_dir / "metrics-server"),
        "etcdBinary": shutil.which("etcd") or ETCD_BINARY,
        "kubeSchedulerConfig": str(sched_path),
        "enable": ["metrics-server"],
    }
    doc = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": options,
    }
    out.write_text(json.dumps(doc, indent=2))  # JSON is YAML
    return out


def _kwokctl(bin_dir: Path, *args: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "KWOK_WORKDIR": str(workdir())}
    return subprocess.run(
        [str(bin_dir / "kwokctl"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )


REFERENCE_BOX = "reference-box"


def node_files(profile: str, out_dir: Path) -> tuple[Path, ...]:
    """Node manifests of a profile: the reference box, or a twin cluster scenario (name/YAML)."""
    if profile == REFERENCE_BOX:
        return (TESTBED_DIR / "nodes-reference-box.yaml",)
    from ecrl.testbed.nodes import write_manifests

    return (write_manifests(profile, out_dir / f"nodes-{Path(profile).stem}.json"),)


def up(
    name: str = DEFAULT_NAME,
    extender_url: str = DEFAULT_EXTENDER_URL,
    nodes: str = REFERENCE_BOX,
    timeout_s: float = 180.0,
) -> Testbed:
    """Start (or reuse) the cluster and register the emulated GPU nodes; waits until Ready.

    ``nodes`` is ``reference-box`` (one RTX 3080 node) or a twin cluster scenario such as
    ``multi-node`` (three GPU nodes of different sizes) or a path to one.
    """
    wd = workdir()
    wd.mkdir(parents=True, exist_ok=True)
    node_paths = node_files(nodes, wd)  # a bad scenario fails here, before any build
    bin_dir = build_binaries()
    cfg = kwokctl_config(bin_dir, extender_url, wd / f"{name}-kwokctl.yaml")
    proc = _kwokctl(bin_dir, "create", "cluster", "--name", name, "--config", str(cfg))
    if proc.returncode != 0 and "already exists" not in proc.stderr:
        raise TestbedError(f"kwokctl create cluster: {proc.stderr.strip()[-2000:]}")
    kubeconfig = wd / "clusters" / name / "kubeconfig.yaml"
    if not kubeconfig.exists():
        raise TestbedError(f"no kubeconfig at {kubeconfig}: {proc.stderr.strip()[-500:]}")
    tb = Testbed(name, kubeconfig, bin_dir, wd)
    for n in node_paths:
        tb.kubectl("apply", "-f", str(n))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _nodes_ready(tb) and _default_service_account(tb):
            return tb
        time.sleep(1.0)
    raise TestbedError(f"nodes Ready / default ServiceAccount not there within {timeout_s:.0f} s")


def attach(name: str = DEFAULT_NAME) -> Testbed:
    """The running cluster ``name`` (started by :func:`up`); raises if there is none."""
    wd = workdir()
    kubeconfig = wd / "clusters" / name / "kubeconfig.yaml"
    bin_dir = CACHE / "testbed" / f"k8s-v{K8S_VERSION}" / "bin"
    if not kubeconfig.exists():
        raise TestbedError(f"no testbed '{name}' is running (start it with: make testbed)")
    return Testbed(name, kubeconfig, bin_dir, wd)


def _nodes_ready(tb: Testbed) -> bool:
    out = tb.kubectl("get", "nodes", "-o", "json", check=False)
    if not out:
        return False
    items = json.loads(out)["items"]

    def ready(node: dict) -> bool:
        conds = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    return bool(items) and all(ready(i) for i in items)


def _default_service_account(tb: Testbed) -> bool:
    """Pods are refused until the controller-manager has created the 'default' ServiceAccount."""
    return bool(tb.kubectl("get", "serviceaccount", "default", "-o", "name", check=False))


def down(name: str = DEFAULT_NAME) -> None:
    """Stop every process of the cluster and delete its files (no error if it is not running).

    Side processes (Prometheus, kube-state-metrics, the emulator) go first, so nothing keeps
    scraping or writing to an apiserver that is about to disappear.
    """
    procs.stop_all(name)
    shutil.rmtree(procs.run_dir(name), ignore_errors=True)  # logs, TSDB, file_sd targets
    bin_dir = CACHE / "testbed" / f"k8s-v{K8S_VERSION}" / "bin"
    if not (bin_dir / "kwokctl").exists():
        return
    proc = _kwokctl(bin_dir, "delete", "cluster", "--name", name)
    if proc.returncode != 0 and "not exist" not in proc.stderr:
        raise TestbedError(f"kwokctl delete cluster: {proc.stderr.strip()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ecrl.testbed.cluster",
        description="Real Kubernetes control plane + kwok GPU nodes on 127.0.0.1.",
        epilog="examples:\n  python -m ecrl.testbed.cluster up\n"
        "  python -m ecrl.testbed.cluster down",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["up", "down", "build"])
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--extender-url", default=DEFAULT_EXTENDER_URL)
    parser.add_argument(
        "--nodes",
        default=REFERENCE_BOX,
        help="reference-box (default), multi-node, or a twin cluster scenario YAML",
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "build":
            print(build_binaries())
        elif args.action == "up":
            t0 = time.perf_counter()
            tb = up(args.name, args.extender_url, nodes=args.nodes)
            print(f"testbed '{tb.name}' up in {time.perf_counter() - t0:.1f} s")
            print(f"export KUBECONFIG={tb.kubeconfig}")
        else:
            down(args.name)
            print(f"testbed '{args.name}' removed")
    except (TestbedError, ConfigError) as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
