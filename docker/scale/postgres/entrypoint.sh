#!/bin/sh
# Starts PostgreSQL in the foreground as the postgres user. At the first start
# (an empty $PGDATA) it runs initdb and creates the role $POSTGRES_USER
# (LOGIN, the password from $POSTGRES_PASSWORD or the file named by
# $POSTGRES_PASSWORD_FILE) and the database $POSTGRES_DB owned by it.
# Clients connect over TCP with scram-sha-256, from any address the container
# network lets in; the superuser `postgres` only over the unix socket.
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
user=${POSTGRES_USER:-cutover}
db=${POSTGRES_DB:-cutover}
export PGDATA

die() {
    echo "cutover-postgres: $*" >&2
    exit 64
}
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

install -d -o postgres -g postgres -m 2775 /run/postgresql
mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
        POSTGRES_PASSWORD=$(head -n 1 "$POSTGRES_PASSWORD_FILE")
    fi
    [ -n "${POSTGRES_PASSWORD:-}" ] || die "the data directory is empty: set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) for the role $user"
    export POSTGRES_PASSWORD
    echo "cutover-postgres: first start: initdb in $PGDATA, role $user, database $db" >&2
    as_postgres initdb -D "$PGDATA" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    cat >>"$PGDATA/postgresql.conf" <<'CONF'

# cutover-postgres
listen_addresses = '*'
password_encryption = scram-sha-256
CONF
    cat >"$PGDATA/pg_hba.conf" <<'HBA'
# TYPE  DATABASE  USER  ADDRESS    METHOD
local   all       all              peer
host    all       all   0.0.0.0/0  scram-sha-256
host    all       all   ::/0       scram-sha-256
HBA
    # Unix socket only while the role is made: no client sees a half-made server.
    as_postgres pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    # The password goes through the environment (\getenv), never argv.
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -v user="$user" -v db="$db" -d postgres <<'SQL'
\getenv pw POSTGRES_PASSWORD
CREATE ROLE :"user" LOGIN PASSWORD :'pw';
CREATE DATABASE :"db" OWNER :"user";
SQL
    as_postgres pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
unset POSTGRES_PASSWORD POSTGRES_PASSWORD_FILE
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$PGDATA"
