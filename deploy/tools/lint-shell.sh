#!/usr/bin/env bash
# Lint every shell script of the repository with shellcheck: each *.sh, and each file without an
# extension that starts with a sh/bash shebang (e.g. .ci/run). Build outputs, the virtual
# environment and caches are skipped. Needs shellcheck (make deploy-lint installs Debian's).
# Usage: deploy/tools/lint-shell.sh [ROOT]   (default: the repository this script is in)
set -euo pipefail
root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
command -v shellcheck >/dev/null ||
  { echo "lint-shell.sh: error: shellcheck not found (bash deploy/testbed/install-debs.sh shellcheck)" >&2; exit 2; }
scripts=()
while IFS= read -r -d '' f; do
  case "$f" in
    *.sh) scripts+=("$f") ;;
    *) head -n1 "$f" 2>/dev/null | grep -qE '^#!.*[/ ](ba)?sh([[:space:]]|$)' && scripts+=("$f") ;;
  esac
done < <(find "$root" \( -name .git -o -name .venv -o -name node_modules -o -name results \
  -o -name runs -o -name build -o -name '*.egg-info' -o -name '.*_cache' -o -name .hypothesis \) \
  -prune -o -type f \( -name '*.sh' -o ! -name '*.*' \) -print0)
[[ ${#scripts[@]} -gt 0 ]] || { echo "lint-shell.sh: error: no shell scripts under $root" >&2; exit 2; }
# -x: follow `source`d files; --severity=style: every finding counts.
shellcheck -x --severity=style "${scripts[@]}"
echo "shellcheck $(shellcheck --version | sed -n 's/^version: //p'): ${#scripts[@]} scripts clean"
