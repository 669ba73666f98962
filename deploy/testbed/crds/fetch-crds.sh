#!/usr/bin/env bash
# Print the path of prometheus-operator's real ServiceMonitor CRD (monitoring.coreos.com/v1),
# taken from the Go module proxy: the testbed has no Prometheus Operator, but the chart's
# ServiceMonitors must pass the real kube-apiserver's validation (tests/e2e/test_chart.py
# applies this CRD, then `kubectl apply --dry-run=server` the rendered chart).
#
# The module github.com/prometheus-operator/prometheus-operator ships the CRDs it generates
# under example/prometheus-operator-crd/; `go mod download` fetches exactly one version into
# the module cache (read-only, verified against sum.golang.org). Nothing is vendored here.
# Idempotent: a second run only reads the cache.
set -euo pipefail

PROM_OPERATOR_VERSION="${PROM_OPERATOR_VERSION:-v0.85.0}"
CACHE="${ECRL_CACHE:-$HOME/.cache/ecrl}"
export GOPATH="${GOPATH:-$CACHE/go}"
export GOFLAGS="-mod=mod"

mod="github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION"
dir="$(go mod download -json "$mod" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
crd="$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
if [[ -z "$dir" || ! -f "$crd" ]]; then
  printf '{"event":"missing","module":"%s","file":"%s"}\n' "$mod" "$crd" >&2
  exit 1
fi
echo "$crd"
