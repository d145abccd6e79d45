# Shared by build-image.sh and scale.sh (sourced, not run): building base
# images offline with debootstrap from the Debian mirror apt already uses.
# The caller sets `suite` and runs `trap cleanup EXIT` so an interrupted
# bootstrap leaves nothing behind.

work="" # the current temporary directory, removed by cleanup

log() { echo "${0##*/}: $*" >&2; }
die() {
    echo "${0##*/}: error: $*" >&2
    exit 1
}

# Docker's client, and a daemon it reaches.
require_docker() {
    local info_err
    command -v docker >/dev/null 2>&1 || die "docker not found: install docker.io (docker/ci.sh does)"
    if ! info_err=$(docker info 2>&1 >/dev/null); then
        die "the Docker daemon is not reachable (start dockerd; docker/ci.sh does): $(printf '%s' "$info_err" | tail -n 1)"
    fi
}

cleanup() {
    [ -n "$work" ] || return 0
    set +e
    # debootstrap killed half-way can leave /proc, /sys, /dev/pts mounted
    # inside: unmount them, and never let rm cross into a mount.
    awk -v p="$work/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "$m"; done
    rm -rf --one-file-system "$work"
    work=""
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

# bootstrap IMAGE PACKAGES FILE [HOOK]: debootstraps a minimal bookworm with
# PACKAGES (comma-separated), checks FILE exists in it, runs HOOK ROOTFS and
# imports it as IMAGE; nothing while IMAGE exists.
bootstrap() {
    local image=$1 packages=$2 check=$3 hook=${4:-} mirror rootfs
    if docker image inspect "$image" >/dev/null 2>&1; then
        log "$image exists, not bootstrapping it again"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root: run as root or with sudo"
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: apt-get install debootstrap (docker/ci.sh does)"
    mirror=${CUTOVER_DEBIAN_MIRROR:-$(detect_mirror | head -n 1)}
    [ -n "$mirror" ] || die "no Debian mirror for $suite in /etc/apt/sources.list(.d): set CUTOVER_DEBIAN_MIRROR"
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/cutover-rootfs.XXXXXX")
    rootfs=$work/rootfs
    log "debootstrap $suite with $packages from $mirror (a minute or two)"
    if ! debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
        tail -n 30 "$work/debootstrap.log" >&2
        cp "$work/debootstrap.log" /tmp/cutover-debootstrap.log 2>/dev/null || true
        die "debootstrap failed (full log: /tmp/cutover-debootstrap.log)"
    fi
    [ -e "$rootfs$check" ] || die "debootstrap finished but $rootfs has no $check"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    [ -z "$hook" ] || "$hook" "$rootfs"
    log "importing $image"
    tar -C "$rootfs" --numeric-owner -c . | docker import - "$image" >/dev/null || die "docker import of $rootfs failed"
    cleanup
}

