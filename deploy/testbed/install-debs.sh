#!/usr/bin/env bash
# Debian packages the project's tools need, installed only where the command is missing (a no-op
# when all are present). Without arguments: what the testbed uses, etcd (etcd-server 3.4, fine
# for Kubernetes <= 1.34) and a real Prometheus. With arguments: those commands, e.g.
# `install-debs.sh shellcheck` (make deploy-lint).
set -euo pipefail
declare -A package=([etcd]=etcd-server [prometheus]=prometheus [shellcheck]=shellcheck)
[[ $# -gt 0 ]] || set -- etcd prometheus
missing=()
for cmd in "$@"; do
  [[ -n "${package[$cmd]:-}" ]] || { echo "install-debs.sh: error: no package known for $cmd" >&2; exit 2; }
  command -v "$cmd" >/dev/null || missing+=("${package[$cmd]}")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
