#!/usr/bin/env bash
# Set up the GPU box (one node, MicroK8s, an NVIDIA GPU) and install ECRL's Helm chart on it.
# Idempotent: every step checks first and changes only what is missing, so a second run is
# quick and a failed run can simply be repeated. `make deploy` runs it (with --build-images).
set -euo pipefail
PROG="install.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/microk8s/lib.sh
source "$ROOT/deploy/microk8s/lib.sh"

RELEASE=ecrl
NAMESPACE=ecrl
CHART=deploy/helm/ecrl
# Order matters: the registry keeps its images on hostpath storage; nvidia needs dns and helm3.
ADDONS=(dns hostpath-storage registry metrics-server helm3 nvidia observability)
# The time-slicing ConfigMap the chart renders (values gpuTimeSlicing.*), set explicitly below
# so that the ClusterPolicy patch names exactly what the chart created.
TIME_SLICING_CONFIGMAP=ecrl-time-slicing
TIME_SLICING_KEY=any
# The GPU operator's ClusterPolicy (its Helm chart's default name, also under MicroK8s).
CLUSTER_POLICY=clusterpolicies.nvidia.com/cluster-policy

usage() {
  cat <<USAGE
Usage: deploy/microk8s/install.sh [OPTIONS]

Set up MicroK8s on this GPU box and install ECRL (Helm release $RELEASE, namespace $NAMESPACE):
  1. check the prerequisites: MicroK8s (snap), the NVIDIA driver (nvidia-smi), membership of
     the microk8s group; each failure says the command that fixes it
  2. enable the addons that are not enabled yet: ${ADDONS[*]}
  3. with --build-images: build the images and push them to the registry addon
  4. microk8s helm3 upgrade --install $RELEASE $CHART -n $NAMESPACE --create-namespace
       --set mode=MODE --set image.tag=TAG ...
  5. GPU time-slicing: point the GPU operator's ClusterPolicy at the chart's ConfigMap
     ($TIME_SLICING_CONFIGMAP, key $TIME_SLICING_KEY) and wait until the node advertises
     more than one nvidia.com/gpu
  6. wait until the release's Deployments are available

Options:
  --mode MODE           baseline (default scheduler + HPA) or rl (the learned controller);
                        default rl
  --tag TAG             image tag (default: \`git describe --tags --always\`, else the package
                        version)
  --registry HOST:PORT  image registry (default localhost:32000, the registry addon)
  --build-images        build and push the images (deploy/docker/build-images.sh) once the
                        registry addon is up
  --gpu-slots N         nvidia.com/gpu the GPU is sliced into (default: the chart's, 4)
  --gpu-operator-namespace NS
                        where the GPU operator runs (default: gpu-operator-resources, where
                        MicroK8s' nvidia addon puts it, else gpu-operator)
  --set KEY=VALUE       any other chart value (repeatable), e.g. --set loadtest.enabled=true
  --timeout SECONDS     longest wait for each of: GPU slots, Deployments (default 900)
  --dry-run             run only the read-only checks; print every command that would change
                        something instead of running it
  -h, --help            this help

Examples:
  deploy/microk8s/install.sh --mode baseline --tag v0.1.0
  deploy/microk8s/install.sh --mode rl --build-images          # what \`make deploy\` runs
  deploy/microk8s/install.sh --dry-run --mode rl               # see what it would do

Undo with deploy/microk8s/uninstall.sh (addons stay enabled).
USAGE
}

mode=rl
tag=""
registry=localhost:32000
build_images=0
gpu_slots=""
gpu_ns=""
timeout_s=900
extra_sets=()
DRY_RUN="${DRY_RUN:-0}"
[[ $DRY_RUN =~ ^[01]$ ]] || usage_error "DRY_RUN: '$DRY_RUN' is not 0 or 1"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --mode) need_value "$@"; mode="$2"; shift 2 ;;
    --tag) need_value "$@"; tag="$2"; shift 2 ;;
    --registry) need_value "$@"; registry="$2"; shift 2 ;;
    --build-images) build_images=1; shift ;;
    --gpu-slots) need_value "$@"; gpu_slots="$2"; shift 2 ;;
    --gpu-operator-namespace) need_value "$@"; gpu_ns="$2"; shift 2 ;;
    --set) need_value "$@"; extra_sets+=("$2"); shift 2 ;;
    --timeout) need_value "$@"; timeout_s="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown flag $1" ;;
  esac
done
[[ $mode =~ ^(baseline|rl)$ ]] || usage_error "--mode: '$mode' is not baseline or rl"
[[ -z $gpu_slots || $gpu_slots =~ ^[1-9][0-9]?$ ]] ||
  usage_error "--gpu-slots: '$gpu_slots' is not a whole number in 1..99"
[[ $timeout_s =~ ^[1-9][0-9]*$ ]] || usage_error "--timeout: '$timeout_s' is not a number of seconds"
[[ -n $tag ]] || tag="$(default_tag "$ROOT")"
cd "$ROOT"
[[ -f $CHART/Chart.yaml ]] || die "no Helm chart at $ROOT/$CHART"

# Poll CMD (a shell function or command, silent) every 5 s until it succeeds or timeout_s pass.
wait_for() {
  local what="$1" deadline=$((SECONDS + timeout_s))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || die "gave up after ${timeout_s} s waiting for $what"
    sleep 5
  done
}

# A missing prerequisite stops a real run; a dry run says so and goes on, to show the plan.
unmet() {
  [[ $DRY_RUN == 1 ]] || die "$1"
  warn "$1 (dry run: going on as if it were met)"
}

check_prerequisites() {
  step "checking prerequisites"
  if ! command -v microk8s >/dev/null; then
    unmet "MicroK8s is not installed: sudo snap install microk8s --classic, then run this again"
    microk8s() { return 1; }  # dry run only: every read-only query finds nothing there
  fi
  local gpu
  if ! command -v nvidia-smi >/dev/null; then
    unmet "no NVIDIA driver (nvidia-smi not found): install one (sudo ubuntu-drivers install), reboot, run this again"
  elif ! gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"; then
    unmet "nvidia-smi fails (${gpu//$'\n'/ }): is the driver loaded? A reboot after installing it usually is the fix"
  else
    printf 'GPU: %s\n' "${gpu//$'\n'/; }"
  fi
  if [[ $(id -u) -ne 0 ]] && ! id -nG | tr ' ' '\n' | grep -qx microk8s; then
    unmet "$(id -un) is not in the microk8s group of this session: sudo usermod -aG microk8s $(id -un) && newgrp microk8s (or log in again), then run this again"
  fi
}

# `microk8s status --format yaml` lists each addon as "name: X" ... "status: enabled|disabled".
enabled_addons() {
  awk '/^[[:space:]]*(-[[:space:]]*)?name:/ {name = $NF}
       /^[[:space:]]*status:[[:space:]]*enabled/ {print name}' <<<"$1"
}

enable_addons() {
  step "MicroK8s addons"
  local status enabled addon missing=()
  if ! status="$(microk8s status --wait-ready --timeout 120 --format yaml 2>&1)"; then
    unmet "MicroK8s is not ready after 120 s: start it (microk8s start) or look (microk8s inspect)"
  elif ! grep -qiE '^[[:space:]]*running:[[:space:]]*true' <<<"$status"; then
    unmet "MicroK8s is not running: microk8s start (microk8s inspect tells why it stopped)"
  fi
  enabled="$(enabled_addons "$status")"
  for addon in "${ADDONS[@]}"; do
    if grep -qx "$addon" <<<"$enabled"; then
      printf 'addon %s: enabled already\n' "$addon"
    else
      missing+=("$addon")
    fi
  done
  for addon in ${missing[@]+"${missing[@]}"}; do
    run microk8s enable "$addon"
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    run microk8s status --wait-ready --timeout 300
  fi
}

build_and_push_images() {
  step "images"
  run microk8s kubectl -n container-registry rollout status deployment/registry --timeout=300s
  local dry=()
  [[ $DRY_RUN == 0 ]] || dry=(--dry-run)
  bash "$ROOT/deploy/docker/build-images.sh" --registry "$registry" --tag "$tag" ${dry[@]+"${dry[@]}"}
}

detect_gpu_operator_namespace() {
  local ns
  for ns in gpu-operator-resources gpu-operator; do
    if microk8s kubectl get namespace "$ns" >/dev/null 2>&1; then echo "$ns"; return; fi
  done
  echo gpu-operator-resources  # MicroK8s' nvidia addon; not there yet in a dry run
}

install_chart() {
  step "Helm release $RELEASE (mode $mode, tag $tag)"
  local args=(upgrade --install "$RELEASE" "$CHART" -n "$NAMESPACE" --create-namespace
    --set "mode=$mode" --set "image.tag=$tag" --set "image.registry=$registry"
    --set "gpuTimeSlicing.namespace=$gpu_ns"
    --set "gpuTimeSlicing.configMapName=$TIME_SLICING_CONFIGMAP"
    --set "gpuTimeSlicing.configKey=$TIME_SLICING_KEY")
  [[ -z $gpu_slots ]] || args+=(--set "gpuTimeSlicing.replicas=$gpu_slots")
  local s
  for s in ${extra_sets[@]+"${extra_sets[@]}"}; do args+=(--set "$s"); done
  run microk8s helm3 "${args[@]}"
}

cluster_policy_exists() { microk8s kubectl get "$CLUSTER_POLICY" >/dev/null 2>&1; }

# The most nvidia.com/gpu any node advertises (0 when none does).
advertised_gpus() {
  { microk8s kubectl get nodes \
    -o jsonpath='{range .items[*]}{.status.allocatable.nvidia\.com/gpu}{"\n"}{end}' 2>/dev/null ||
    true; } | awk '$1 + 0 > max {max = $1 + 0} END {print max + 0}'
}
gpus_time_sliced() { (($(advertised_gpus) > 1)); }

configure_time_slicing() {
  step "GPU time-slicing (ConfigMap $gpu_ns/$TIME_SLICING_CONFIGMAP)"
  if [[ $DRY_RUN == 0 ]]; then
    wait_for "the GPU operator's ClusterPolicy (microk8s enable nvidia)" cluster_policy_exists
  fi
  local current
  current="$(microk8s kubectl get "$CLUSTER_POLICY" \
    -o jsonpath='{.spec.devicePlugin.config.name}/{.spec.devicePlugin.config.default}' 2>/dev/null || true)"
  if [[ $current == "$TIME_SLICING_CONFIGMAP/$TIME_SLICING_KEY" ]]; then
    echo "ClusterPolicy: names $current already"
  else
    run microk8s kubectl patch "$CLUSTER_POLICY" --type merge -p \
      "{\"spec\":{\"devicePlugin\":{\"config\":{\"name\":\"$TIME_SLICING_CONFIGMAP\",\"default\":\"$TIME_SLICING_KEY\"}}}}"
  fi
  local now
  now="$(advertised_gpus)"
  if ((now > 1)); then
    echo "node advertises nvidia.com/gpu: $now"
  elif [[ $DRY_RUN == 1 ]]; then
    echo "(would wait up to ${timeout_s} s for a node to advertise nvidia.com/gpu > 1; now $now)"
  else
    echo "waiting for the device plugin to restart with time-slicing (nvidia.com/gpu now $now)..."
    wait_for "a node advertising nvidia.com/gpu > 1 (microk8s kubectl -n $gpu_ns get pods)" \
      gpus_time_sliced
    echo "node advertises nvidia.com/gpu: $(advertised_gpus)"
  fi
}

wait_for_release() {
  step "waiting for the Deployments of $NAMESPACE"
  run microk8s kubectl -n "$NAMESPACE" wait deployment --all --for=condition=Available \
    "--timeout=${timeout_s}s"
}

[[ $DRY_RUN == 0 ]] || echo "(dry run: read-only checks run, commands that change something are printed)"
check_prerequisites
enable_addons
[[ $build_images == 0 ]] || build_and_push_images
[[ -n $gpu_ns ]] || gpu_ns="$(detect_gpu_operator_namespace)"
install_chart
configure_time_slicing
wait_for_release
step "done: ECRL ($mode) on MicroK8s"
cat <<NEXT
  microk8s kubectl -n $NAMESPACE get pods                # what runs
  make experiment-microk8s MODES=hpa-cpu,rl SHAPES=step  # the comparison on this box
  microk8s kubectl -n observability port-forward svc/kube-prom-stack-grafana 3000:80  # Grafana
NEXT
