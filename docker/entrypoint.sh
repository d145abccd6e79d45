#!/bin/sh
# Starts Dovecot in the foreground with /etc/dovecot/cutover.conf (which reads
# the mounted /etc/cutover/passwd and /etc/cutover/conf.d/*.conf).
set -eu
passwd=/etc/cutover/passwd
if [ ! -f "$passwd" ]; then
    echo "cutover-dovecot: $passwd is missing: mount a passwd file with lines like alice:{PLAIN}secret" >&2
    exit 64
fi
# Each user's home, owned by the mail user (uid 8) the mail processes run as.
cut -d: -f1 "$passwd" | while IFS= read -r login; do
    case "$login" in '' | '#'* | .* | */*) continue ;; esac
    mkdir -p "/srv/mail/$login"
    chown mail:mail "/srv/mail/$login"
done
exec dovecot -F -c /etc/dovecot/cutover.conf
