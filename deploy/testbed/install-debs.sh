#!/usr/bin/env bash
# Debian packages the testbed uses: etcd (etcd-server 3.4, fine for Kubernetes <= 1.34) and a
# real Prometheus. Installs only what is missing; a no-op when both are present.
set -euo pipefail
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v prometheus >/dev/null || missing+=(prometheus)
[[ ${#missing[@]} -eq 0 ]] && exit 0
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
