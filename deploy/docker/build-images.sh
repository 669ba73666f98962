#!/usr/bin/env bash
# Build the ECRL images (deploy/docker/<image>.Dockerfile) and push them to the box's registry.
# `make images` runs this; `make deploy` runs it through deploy/microk8s/install.sh once the
# registry addon is up. Every command is shown before it runs; --dry-run only shows them.
set -euo pipefail
PROG="build-images.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/microk8s/lib.sh
source "$ROOT/deploy/microk8s/lib.sh"

images() { local f; for f in "$ROOT"/deploy/docker/*.Dockerfile; do basename "$f" .Dockerfile; done; }

usage() {
  cat <<USAGE
Usage: deploy/docker/build-images.sh [OPTIONS] [IMAGE...]

Build deploy/docker/IMAGE.Dockerfile (default: every image) with the repository as context,
tag it REGISTRY/IMAGE:TAG and push it.

Options:
  --registry HOST:PORT  where to push (default: \$REGISTRY, else localhost:32000, MicroK8s'
                        registry addon)
  --tag TAG             image tag (default: \$TAG, else \`git describe --tags --always\`, else
                        the package version in pyproject.toml)
  --builder NAME        docker, buildah or podman (default: \$BUILDER, else the first that
                        works: docker with a reachable daemon, buildah, podman)
  --no-push             build and tag only
  --dry-run             print every command instead of running it (also DRY_RUN=1)
  -h, --help            this help

Images: $(images | xargs)
MicroK8s' containerd cannot build images: without docker, install buildah or podman
(sudo apt-get install buildah). MicroK8s' registry addon serves plain HTTP: docker allows
that for localhost, buildah and podman push with --tls-verify=false. PYTHON_IMAGE=... in the
environment overrides the base image (e.g. pinned by digest).

Examples:
  make images                                  # every image, tag from git, to localhost:32000
  deploy/docker/build-images.sh --tag dev ecrl-policy-server
  DRY_RUN=1 make images TAG=v1                 # show the commands only
USAGE
}

# The builder: as asked, else docker if its daemon answers, else buildah, else podman.
pick_builder() {
  local asked="$1" b
  if [[ -n $asked ]]; then
    [[ $asked =~ ^(docker|buildah|podman)$ ]] ||
      usage_error "--builder: '$asked' is not docker, buildah or podman"
    command -v "$asked" >/dev/null || [[ $DRY_RUN == 1 ]] || die "$asked not found on PATH"
    echo "$asked"
    return
  fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  for b in buildah podman; do
    if command -v "$b" >/dev/null; then echo "$b"; return; fi
  done
  [[ $DRY_RUN == 0 ]] || { echo docker; return; }
  command -v docker >/dev/null &&
    die "docker's daemon does not answer (sudo systemctl start docker; sudo usermod -aG docker \$USER), or install buildah"
  die "no image builder: install docker or buildah (sudo apt-get install buildah)"
}

registry="${REGISTRY:-localhost:32000}"
tag="${TAG:-}"
builder="${BUILDER:-}"
push=1
DRY_RUN="${DRY_RUN:-0}"
[[ $DRY_RUN =~ ^[01]$ ]] || usage_error "DRY_RUN: '$DRY_RUN' is not 0 or 1"
selected=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --registry) need_value "$@"; registry="$2"; shift 2 ;;
    --tag) need_value "$@"; tag="$2"; shift 2 ;;
    --builder) need_value "$@"; builder="$2"; shift 2 ;;
    --no-push) push=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage_error "unknown flag $1" ;;
    *)
      [[ -f "$ROOT/deploy/docker/$1.Dockerfile" ]] ||
        usage_error "unknown image '$1' (one of: $(images | xargs))"
      selected+=("$1"); shift ;;
  esac
done
[[ ${#selected[@]} -gt 0 ]] || mapfile -t selected < <(images)
[[ -n $tag ]] || tag="$(default_tag "$ROOT")"
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || usage_error "--tag: '$tag' is not a valid image tag"
builder="$(pick_builder "$builder")"

build_args=()
[[ -z ${PYTHON_IMAGE:-} ]] || build_args+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
tls=()
[[ $builder == docker ]] || tls=(--tls-verify=false)

if [[ $push == 1 && $DRY_RUN == 0 ]]; then
  host="${registry%%/*}"
  (exec 3<>"/dev/tcp/${host%:*}/${host##*:}") 2>/dev/null ||
    die "registry $registry does not answer (microk8s enable registry; make deploy enables it)"
fi

cd "$ROOT"
step "building ${#selected[@]} image(s) with $builder, tag $tag, registry $registry"
for image in "${selected[@]}"; do
  ref="$registry/$image:$tag"
  run "$builder" build --file "deploy/docker/$image.Dockerfile" --tag "$ref" \
    --label "org.opencontainers.image.version=$tag" ${build_args[@]+"${build_args[@]}"} .
  [[ $push == 0 ]] || run "$builder" push ${tls[@]+"${tls[@]}"} "$ref"
done
step "done: ${selected[*]}"
