# shellcheck shell=bash
# Helpers shared by deploy/microk8s/{install,uninstall}.sh and deploy/docker/build-images.sh.
# Sourced, never run. The caller sets PROG (its name in messages) and DRY_RUN (0 or 1).

# A step for people (stdout, so it interleaves with the commands it introduces).
step() { printf '==> %s\n' "$*"; }
# Problems go to stderr, one line each: "<prog>: error: ...".
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
# A bad command line: exit 2, as the services do.
usage_error() { printf '%s: error: %s (see --help)\n' "$PROG" "$*" >&2; exit 2; }

# One argument as the shell would need it typed: bare when safe, else single-quoted.
quote() {
  local safe='^[A-Za-z0-9_./:=,@%+-]+$' q="'\\''"
  if [[ $1 =~ $safe ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/$q}"; fi
}
# "+ cmd args" for the command about to run (or, with --dry-run, the one that would run).
show() {
  local out="+" a
  for a in "$@"; do out+=" $(quote "$a")"; done
  printf '%s\n' "$out"
}

# Run a command that changes something: show it, then run it unless DRY_RUN=1.
run() {
  show "$@"
  [[ $DRY_RUN == 1 ]] || "$@"
}
# Same, feeding TEXT to its standard input; a dry run shows TEXT as a here-document.
run_stdin() {
  local text="$1"; shift
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s <<EOF\n%s\nEOF\n' "$(show "$@")" "$text"
  else
    show "$@"
    printf '%s\n' "$text" | "$@"
  fi
}

# The flag's value, or a usage error naming the flag when it is missing.
need_value() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || usage_error "$1 needs a value"; }

# The default image tag: `git describe` of the checkout, else the package version.
default_tag() {
  local root="$1" tag
  tag="$(git -C "$root" describe --tags --always 2>/dev/null || true)"
  [[ -n $tag ]] || tag="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")"
  printf '%s\n' "$tag"
}
