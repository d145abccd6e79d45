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

log() { echo "build-image.sh: $*" >&2; }
die() {
    echo "build-image.sh: error: $*" >&2
    exit 1
}

# The first URI of a `deb` source for $suite, one-line or deb822 format.
detect_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v s="$suite" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == s) { print $i; exit }
            }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v s="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^#/ || !match($i, /^[A-Za-z-]+:/)) continue
                    key = tolower(substr($i, 1, RLENGTH - 1)); val = substr($i, RLENGTH + 1)
                    gsub(/[ \t]+/, " ", val)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "enabled") enabled = val
                }
                if (index(" " types " ", " deb ") && index(" " suites " ", " " s " ") && enabled !~ /no/) {
                    split(uris, u, " "); print u[1]; exit
                }
            }' "$f"
    done
}

command -v docker >/dev/null 2>&1 || die "docker not found: install docker.io (docker/ci.sh does)"
if ! info_err=$(docker info 2>&1 >/dev/null); then
    die "the Docker daemon is not reachable (start dockerd; docker/ci.sh does): $(printf '%s' "$info_err" | tail -n 1)"
fi

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

if docker image inspect "$base" >/dev/null 2>&1; then
    log "$base exists, not bootstrapping it again"
else
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root: run as root or with sudo"
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: apt-get install debootstrap (docker/ci.sh does)"
    mirror=${CUTOVER_DEBIAN_MIRROR:-$(detect_mirror | head -n 1)}
    [ -n "$mirror" ] || die "no Debian mirror for $suite in /etc/apt/sources.list(.d): set CUTOVER_DEBIAN_MIRROR"
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/cutover-rootfs.XXXXXX")
    rootfs=$work/rootfs
    cleanup() {
        set +e
        # debootstrap killed half-way can leave /proc, /sys, /dev/pts mounted
        # inside: unmount them, and never let rm cross into a mount.
        awk -v p="$rootfs/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r |
            while read -r m; do umount -l "$m"; done
        rm -rf --one-file-system "$work"
    }
    trap cleanup EXIT
    log "debootstrap $suite from $mirror (about a minute)"
    if ! debootstrap --variant=minbase --include=dovecot-imapd,dovecot-core \
        "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
        tail -n 30 "$work/debootstrap.log" >&2
        cp "$work/debootstrap.log" /tmp/cutover-debootstrap.log 2>/dev/null || true
        die "debootstrap failed (full log: /tmp/cutover-debootstrap.log)"
    fi
    [ -x "$rootfs/usr/sbin/dovecot" ] || die "debootstrap finished but $rootfs has no /usr/sbin/dovecot"
    # Downloaded packages and index files are not needed in the image.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    log "importing $base"
    tar -C "$rootfs" --numeric-owner -c . | docker import - "$base" >/dev/null ||
        die "docker import of $rootfs failed"
fi

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
