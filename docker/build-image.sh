#!/usr/bin/env bash
# Builds the cutover-dovecot image without pulling anything from an image
# registry:
#   1. debootstrap a Debian bookworm root file system with dovecot-imapd and
#      dovecot-core from the Debian mirror apt already uses here,
#   2. `docker import` it as cutover-dovecot:base,
#   3. `docker build -f Dockerfile.offline` (config + entrypoint) on top.
#
# Idempotent: step 1–2 are skipped while the base image exists, step 3 while
# the image was built from the current Dockerfile.offline, dovecot.conf and
# entrypoint.sh (a label holds their hash). Needs root (debootstrap) and a
# running Docker daemon (docker/ci.sh installs and starts one).
#
# Environment: CUTOVER_DOVECOT_IMAGE (default cutover-dovecot:latest),
# CUTOVER_DEBIAN_MIRROR (default: the first bookworm mirror in
# /etc/apt/sources.list and /etc/apt/sources.list.d).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
image=${CUTOVER_DOVECOT_IMAGE:-cutover-dovecot:latest}
base=cutover-dovecot:base # the FROM of Dockerfile.offline
suite=bookworm

# shellcheck source=docker/lib.sh
. "$here/lib.sh"
trap cleanup EXIT

require_docker

# One build at a time (parallel test processes); a waiter then finds it done.
exec 9>"${TMPDIR:-/tmp}/cutover-build-image.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

inputs=$(cat "$here/Dockerfile.offline" "$here/dovecot.conf" "$here/entrypoint.sh" | sha256sum | cut -c1-16)
built=$(docker image inspect -f '{{index .Config.Labels "cutover.inputs"}}' "$image" 2>/dev/null || true)
if [ "$built" = "$inputs" ]; then
    log "$image is up to date"
    exit 0
fi

bootstrap "$base" dovecot-imapd,dovecot-core /usr/sbin/dovecot

# Docker 23+ clients build with BuildKit, which needs the buildx plugin;
# the classic builder works everywhere this image is built.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
log "building $image on $base"
if ! out=$(docker build -q --label "cutover.inputs=$inputs" -f "$here/Dockerfile.offline" -t "$image" "$here" 2>&1); then
    printf '%s\n' "$out" >&2
    die "docker build -f $here/Dockerfile.offline failed"
fi
log "built $image"
