#!/usr/bin/env bash
# Prepares a Debian machine for the Docker tests
# (CUTOVER_DOCKER_TESTS=1 cargo test -p cutover-harness --test docker):
#   1. installs docker.io and debootstrap when missing,
#   2. starts dockerd when no daemon answers (in the background, logging to
#      $CUTOVER_DOCKERD_LOG, default /tmp/cutover-dockerd.log),
#   3. builds the cutover-dovecot image offline (docker/build-image.sh).
# Safe to run again: each step is skipped when already done. About 2 minutes
# on a fresh machine, a second or two after that.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dockerd_log=${CUTOVER_DOCKERD_LOG:-/tmp/cutover-dockerd.log}
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

log() { echo "ci.sh: $*" >&2; }
die() {
    echo "ci.sh: error: $*" >&2
    exit 1
}
has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

# 1. Packages. `docker` alone is not enough: a client may be installed
# without the daemon.
missing=()
has dockerd || missing+=(docker.io)
has debootstrap || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get update -qq || die "apt-get update failed"
    # No package may start a service: dockerd is started below, by hand.
    policy=/usr/sbin/policy-rc.d
    made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null
        $sudo_cmd chmod +x "$policy"
        made_policy=1
    fi
    status=0
    $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null || status=$?
    [ -z "$made_policy" ] || $sudo_cmd rm -f "$policy"
    [ "$status" -eq 0 ] || die "apt-get install ${missing[*]} failed"
fi
has docker || die "docker.io is installed but there is no docker client on PATH"

# 2. The daemon.
if ! $sudo_cmd docker info >/dev/null 2>&1; then
    dockerd_bin=$(command -v dockerd || echo /usr/sbin/dockerd)
    log "starting dockerd (log: $dockerd_log)"
    # Detached, with no inherited descriptors, so it outlives this script and
    # never holds a caller's pipe open.
    $sudo_cmd setsid "$dockerd_bin" </dev/null >>"$dockerd_log" 2>&1 &
    for _ in $(seq 60); do
        $sudo_cmd docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! $sudo_cmd docker info >/dev/null 2>&1; then
        tail -n 20 "$dockerd_log" >&2 || true
        die "dockerd did not answer within 60 s (log: $dockerd_log)"
    fi
fi
log "docker $($sudo_cmd docker info --format '{{.ServerVersion}}') is running"

# 3. The image.
$sudo_cmd bash "$here/build-image.sh"
