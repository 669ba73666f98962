#!/usr/bin/env bash
# Build Helm once from the Go module proxy and cache it outside the repository; prints its path.
#
# Only package registries are reachable here (no GitHub release tarballs), so Helm is built
# from its module: `go mod download` the one version and `go build ./cmd/helm` inside the
# downloaded module with its own go.sum (helm.sh/helm/v3's go.mod has no replace directives).
# Not `go install ...@version`: that also asks the proxy for the version list, which may be
# refused (deploy/testbed/build.sh does kube-state-metrics the same way).
# The -X flags are the ones upstream's Makefile sets (version, and the Kubernetes version that
# `helm lint`/`helm template` assume, taken from the client-go it builds against).
# A second run finds the binary and exits in well under a second. Idempotent.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.19.0}"
CACHE="${ECRL_CACHE:-$HOME/.cache/ecrl}"
OUT_DIR="$CACHE/helm-$HELM_VERSION"
HELM="$OUT_DIR/helm"
export GOPATH="${GOPATH:-$CACHE/go}"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0

log() { printf '{"event":"%s","helm":"%s","bin":"%s"}\n' "$1" "$HELM_VERSION" "$HELM" >&2; }

if [[ -x "$HELM" ]]; then
  log cached
  echo "$HELM"
  exit 0
fi
command -v go >/dev/null || { log "go not found (Go >= 1.24 is needed to build helm)"; exit 1; }
log building
mod="helm.sh/helm/v3@$HELM_VERSION"
dir="$(go mod download -json "$mod" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
[[ -n "$dir" ]] || { log "download of $mod failed"; exit 1; }
client_go="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$dir/go.mod")"
[[ -n "$client_go" ]] || { log "no k8s.io/client-go in $dir/go.mod"; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$client_go"
done
mkdir -p "$OUT_DIR"
tmp="$(mktemp "$OUT_DIR/helm.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
# The module cache is read-only: -mod=readonly builds with the module's own go.sum.
(cd "$dir" && GOWORK=off GOFLAGS=-mod=readonly go build -trimpath -ldflags "$ldflags" -o "$tmp" ./cmd/helm)
chmod 0755 "$tmp"
mv "$tmp" "$HELM"  # atomic: a concurrent or interrupted run never leaves a half-written helm
trap - EXIT
log built
echo "$HELM"
