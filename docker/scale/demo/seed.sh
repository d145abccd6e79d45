#!/bin/sh
# The source server of the scale-out demo: fills each user of the passwd file
# who has no Maildir yet with generated mail (INBOX, INBOX.Sent,
# INBOX.Projects, INBOX.Projects.2024; 100 to 240 messages, every tenth one
# about 20 kB), then starts Dovecot as the image does. The mail is written
# before Dovecot listens, so no worker sees a half-filled mailbox.
set -eu
passwd=/etc/cutover/passwd
[ -f "$passwd" ] || exec /usr/local/bin/cutover-dovecot # it says what is missing

# One 1 kB line, written 20 times into every tenth message.
line=$(printf '%0990d' 0 | tr 0 x)

# message USER FOLDER N: the Nth message of USER's FOLDER, on stdout.
message() {
    day=$(($3 % 28 + 1))
    month=$(($3 / 28 % 12))
    set -- "$1" "$2" "$3" "$(echo Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec | cut -d' ' -f$((month + 1)))"
    printf 'From: Partner %d <partner%d@example.net>\n' $(($3 % 7)) $(($3 % 7))
    printf 'To: %s\n' "$1"
    printf 'Subject: %s message %d\n' "$2" "$3"
    printf 'Date: %d %s 2024 %02d:%02d:00 +0000\n' "$day" "$4" $(($3 % 24)) $(($3 % 60))
    printf 'Message-ID: <seed-%s-%d-%s>\n' "$2" "$3" "$1"
    printf 'MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n'
    printf 'Hello,\n\nthis is message %d in %s, generated for the cutover scale-out demo.\n' "$3" "$2"
    if [ $(($3 % 10)) -eq 0 ]; then
        k=0
        while [ $k -lt 20 ]; do
            printf '%s\n' "$line"
            k=$((k + 1))
        done
    fi
}

# fill DIR USER FOLDER COUNT: COUNT messages in the Maildir(++) folder DIR.
fill() {
    mkdir -p "$1/cur" "$1/new" "$1/tmp"
    n=1
    while [ $n -le "$4" ]; do
        # Seen, except every fifth.
        if [ $((n % 5)) -eq 0 ]; then
            message "$2" "$3" $n >"$1/new/$((1700000000 + n)).M${n}P1.seed"
        else
            message "$2" "$3" $n >"$1/cur/$((1700000000 + n)).M${n}P1.seed:2,S"
        fi
        n=$((n + 1))
    done
    seeded=$((seeded + $4))
}

users=0
seeded=0
i=0
while IFS=: read -r login _; do
    case "$login" in '' | '#'* | .* | */*) continue ;; esac
    i=$((i + 1))
    maildir=/srv/mail/$login/Maildir
    [ ! -d "$maildir" ] || continue
    inbox=$((60 + 20 * (i % 8)))
    fill "$maildir.tmp" "$login" INBOX $inbox
    fill "$maildir.tmp/.Sent" "$login" Sent 20
    fill "$maildir.tmp/.Projects" "$login" Projects 10
    fill "$maildir.tmp/.Projects.2024" "$login" Projects.2024 10
    touch "$maildir.tmp/.Sent/maildirfolder" "$maildir.tmp/.Projects/maildirfolder" \
        "$maildir.tmp/.Projects.2024/maildirfolder"
    chown -R 8:8 "$maildir.tmp"
    mv "$maildir.tmp" "$maildir"
    users=$((users + 1))
done <"$passwd"
echo "seed.sh: $seeded messages for $users new user(s) in /srv/mail" >&2
exec /usr/local/bin/cutover-dovecot
