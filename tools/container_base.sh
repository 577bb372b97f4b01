#!/usr/bin/env bash
# Build and run the app's container image on a machine with no Docker engine and no access to a
# container registry (this project's dev and CI machines): Debian's podman + runc, and a base
# image made locally with debootstrap instead of pulling python:3.11-slim-bookworm.
#
#   tools/container_base.sh base    # debootstrap + podman import -> $BASE_IMAGE (skipped if present)
#   tools/container_base.sh build   # podman build of ./Dockerfile on that base -> $IMAGE
#   tools/container_base.sh all     # both (default)
#
# Env: BASE_IMAGE (localhost/search-base:bookworm), IMAGE (localhost/visual-search:dev),
#      DEBIAN_MIRROR (http://deb.debian.org/debian), CA_BUNDLE (/etc/ssl/certs/ca-certificates.crt)
# Needs root (debootstrap, rootful podman). Installs podman, runc and debootstrap if missing.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/search-base:bookworm}
IMAGE=${IMAGE:-localhost/visual-search:dev}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# runc instead of crun, and lowered limits: the sandbox this runs in refuses the defaults.
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

log() { printf '[container] %s\n' "$*" >&2; }

ensure_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
}

build_base() {
  if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    log "base $BASE_IMAGE exists"
    return
  fi
  local dir
  dir=$(mktemp -d /tmp/search-base.XXXXXX)
  log "debootstrap bookworm (minbase + python3) into $dir"
  # ca-certificates: pip inside the build verifies PyPI against it (plus the host's bundle).
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$dir/rootfs" "$DEBIAN_MIRROR" >"$dir/debootstrap.log" 2>&1 \
    || { tail -20 "$dir/debootstrap.log" >&2; exit 1; }
  rm -rf "$dir/rootfs/var/cache/apt/archives/"*.deb "$dir/rootfs/var/lib/apt/lists/"*
  log "podman import -> $BASE_IMAGE"
  tar -C "$dir/rootfs" -c . | "${PODMAN[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$dir"
}

build_image() {
  local secret=()
  [[ -s "$CA_BUNDLE" ]] && secret=(--secret "id=pip_ca,src=$CA_BUNDLE")
  log "podman build $IMAGE (base $BASE_IMAGE)"
  # --network host: the build's pip reaches the package index the way the host does.
  # --format docker: OCI images drop HEALTHCHECK.
  "${PODMAN[@]}" build "${LIMITS[@]}" --network host --format docker \
    "${secret[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" "$ROOT"
  "${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE" \
    | awk '{printf "[container] image size %.0f MB\n", $1 / 1e6}' >&2
}

main() {
  ensure_tools
  case "${1:-all}" in
    base) build_base ;;
    build) build_image ;;
    all) build_base; build_image ;;
    *) echo "usage: $0 [base|build|all]" >&2; exit 2 ;;
  esac
}

main "$@"
