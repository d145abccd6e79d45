#!/usr/bin/env bash
# Builds the images of the scale-out setup (docker/compose.scale.yml,
# docker/k8s/) without pulling anything from an image registry:
#   cutover-dovecot:latest   the demo servers (docker/build-image.sh)
#   cutover-postgres:latest  debootstrap bookworm + postgresql, imported as
#                            cutover-postgres:base, + scale/postgres/
#   cutover-worker:latest    debootstrap bookworm + ca-certificates + tini,
#                            imported as cutover-worker:base, + the release
#                            `cutover` (cargo build --release --bins)
# and writes docker/scale.env (a random PostgreSQL password) unless it exists.
#
# Idempotent like build-image.sh: a base is bootstrapped only while it is
# missing, a top image rebuilt only when its inputs (Dockerfile, entrypoint or
# binary, base image) changed. Needs root (debootstrap) and a running Docker
# daemon (docker/ci.sh installs and starts one). About 3 minutes the first
# time plus the cargo build, seconds after that.
#
# Environment: CUTOVER_BIN (a built cutover binary: no cargo build),
# CUTOVER_WORKER_IMAGE (default cutover-worker:latest), CUTOVER_POSTGRES_IMAGE
# (default cutover-postgres:latest), CUTOVER_DEBIAN_MIRROR (default: the
# first bookworm mirror apt uses, as docker/lib.sh finds it).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
worker_image=${CUTOVER_WORKER_IMAGE:-cutover-worker:latest}
postgres_image=${CUTOVER_POSTGRES_IMAGE:-cutover-postgres:latest}
suite=bookworm

# shellcheck source=docker/lib.sh
. "$here/lib.sh"
trap cleanup EXIT

require_docker
# Docker 23+ clients build with BuildKit, which needs the buildx plugin;
# the classic builder works everywhere these images are built.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

# 1. The binary, first: a compile error should not wait for debootstrap.
if [ -n "${CUTOVER_BIN:-}" ]; then
    bin=$CUTOVER_BIN
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found (sudo drops it from PATH): build first and set CUTOVER_BIN=target/release/cutover"
    log "cargo build --release --bins"
    (cd "$root" && cargo build --release --bins) || die "cargo build --release --bins failed"
    bin=${CARGO_TARGET_DIR:-$root/target}/release/cutover
fi
[ -x "$bin" ] || die "$bin is not an executable"

# 2. The demo servers' image.
bash "$here/build-image.sh"

exec 9>"${TMPDIR:-/tmp}/cutover-scale.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

# The package's postinst made a cluster `main` (in /etc/postgresql and
# /var/lib/postgresql); the entrypoint makes its own in the volume instead.
drop_default_cluster() {
    rm -rf "$1"/etc/postgresql/*/main "$1"/var/lib/postgresql/*/main
}

# build IMAGE BASE CONTEXT: docker build of CONTEXT/Dockerfile.offline unless
# IMAGE was built from the same context files and base image.
build() {
    local image=$1 base=$2 context=$3 inputs built out
    inputs=$({
        docker image inspect -f '{{.Id}}' "$base"
        find "$context" -type f -print0 | sort -z | xargs -0 sha256sum | sed "s|$context/||"
    } | sha256sum | cut -c1-16)
    built=$(docker image inspect -f '{{index .Config.Labels "cutover.inputs"}}' "$image" 2>/dev/null || true)
    if [ "$built" = "$inputs" ]; then
        log "$image is up to date"
        return 0
    fi
    log "building $image on $base"
    if ! out=$(docker build -q --label "cutover.inputs=$inputs" -f "$context/Dockerfile.offline" -t "$image" "$context" 2>&1); then
        printf '%s\n' "$out" >&2
        die "docker build of $image failed"
    fi
    log "built $image"
}

# 3. PostgreSQL.
bootstrap cutover-postgres:base postgresql /usr/lib/postgresql drop_default_cluster
build "$postgres_image" cutover-postgres:base "$here/scale/postgres"

# 4. The worker: the Dockerfile and the binary (without its debug info, a
# tenth of the size; symbols stay for backtraces) in a context of their own.
bootstrap cutover-worker:base ca-certificates,tini /usr/bin/tini
work=$(mktemp -d "${TMPDIR:-/var/tmp}/cutover-worker.XXXXXX")
cp "$here/scale/worker/Dockerfile.offline" "$work/"
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug -o "$work/cutover" "$bin"
else
    cp "$bin" "$work/cutover"
fi
build "$worker_image" cutover-worker:base "$work"
cleanup

# 5. The compose file's environment.
env_file=$here/scale.env
if [ -e "$env_file" ]; then
    log "$env_file exists, leaving it as it is"
else
    password=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
    (umask 077 && sed "s/CHANGE-ME/$password/g" "$here/scale/scale.env.example" >"$env_file")
    log "wrote $env_file (a random PostgreSQL password; mode 600, ignored by git)"
fi
if docker compose version >/dev/null 2>&1; then
    log "done: docker compose -f docker/compose.scale.yml up -d --scale worker=4"
elif command -v docker-compose >/dev/null 2>&1; then
    log "done: docker-compose -f docker/compose.scale.yml up -d --scale worker=4"
else
    log "done; no Compose here: apt-get install docker-compose (Compose v1 on bookworm)"
fi
