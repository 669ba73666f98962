#!/usr/bin/env bash
# Remove what deploy/microk8s/install.sh installed: the GPU operator's time-slicing setting (its
# ConfigMap belongs to the release: a ClusterPolicy left naming it would leave a restarted
# device plugin without its config), the Helm release and its namespace. Addons stay enabled
# (other workloads may use them). Idempotent: what is already gone is skipped. `make undeploy`
# runs it.
set -euo pipefail
PROG="uninstall.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/microk8s/lib.sh
source "$ROOT/deploy/microk8s/lib.sh"

RELEASE=ecrl
NAMESPACE=ecrl
TIME_SLICING_CONFIGMAP=ecrl-time-slicing
CLUSTER_POLICY=clusterpolicies.nvidia.com/cluster-policy

usage() {
  cat <<USAGE
Usage: deploy/microk8s/uninstall.sh [OPTIONS]

Uninstall ECRL from this MicroK8s box: if the GPU operator's ClusterPolicy names ECRL's
time-slicing ConfigMap ($TIME_SLICING_CONFIGMAP), point it back at no device-plugin config (one
nvidia.com/gpu per GPU again: the ConfigMap goes with the release); then the Helm release
$RELEASE and the namespace $NAMESPACE. MicroK8s and its addons stay as they are.

Options:
  --undo-time-slicing   accepted for compatibility; time-slicing is always undone
  --dry-run             run only the read-only checks; print every command that would change
                        something instead of running it
  -h, --help            this help

Examples:
  deploy/microk8s/uninstall.sh             # what \`make undeploy\` runs
  deploy/microk8s/uninstall.sh --dry-run   # print what it would change
USAGE
}

DRY_RUN="${DRY_RUN:-0}"
[[ $DRY_RUN =~ ^[01]$ ]] || usage_error "DRY_RUN: '$DRY_RUN' is not 0 or 1"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --undo-time-slicing) shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown flag $1" ;;
  esac
done
command -v microk8s >/dev/null || { echo "microk8s not found: nothing to uninstall"; exit 0; }
[[ $DRY_RUN == 0 ]] || echo "(dry run: read-only checks run, commands that change something are printed)"

config_name="$(microk8s kubectl get "$CLUSTER_POLICY" \
  -o jsonpath='{.spec.devicePlugin.config.name}' 2>/dev/null || true)"
if [[ $config_name == "$TIME_SLICING_CONFIGMAP" ]]; then
  step "GPU time-slicing off (its ConfigMap goes with the release)"
  run microk8s kubectl patch "$CLUSTER_POLICY" --type merge -p \
    '{"spec":{"devicePlugin":{"config":{"name":"","default":""}}}}'
fi

step "Helm release $RELEASE"
if microk8s helm3 status "$RELEASE" -n "$NAMESPACE" >/dev/null 2>&1; then
  run microk8s helm3 uninstall "$RELEASE" -n "$NAMESPACE" --wait
else
  echo "release $RELEASE: not installed"
fi

step "namespace $NAMESPACE"
if microk8s kubectl get namespace "$NAMESPACE" >/dev/null 2>&1; then
  run microk8s kubectl delete namespace "$NAMESPACE" --wait=true --timeout=300s
else
  echo "namespace $NAMESPACE: not there"
fi
step "done"
