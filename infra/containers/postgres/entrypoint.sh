#!/bin/sh
# Creates the cluster on the first start, then runs PostgreSQL in the foreground.
set -eu
bin=/usr/lib/postgresql/15/bin
data=/var/lib/orderflow-pg/data
port="${PGPORT:-25432}"
if [ ! -f "$data/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" > "$pwfile"
    "$bin/initdb" -D "$data" -U orderflow --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    "$bin/pg_ctl" -D "$data" -o "-c listen_addresses='' -p $port" -w start >/dev/null
    "$bin/psql" -h /run/postgresql -p "$port" -U orderflow -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE DATABASE orderflow OWNER orderflow" >/dev/null
    "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
fi
exec "$bin/postgres" -D "$data" -c listen_addresses=127.0.0.1 -p "$port" -c unix_socket_directories=/run/postgresql
