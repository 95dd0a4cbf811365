#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suite:
#   scripts/test-postgres.sh install   # apt-get install postgresql if missing (root)
#   scripts/test-postgres.sh start     # initdb + start; prints nothing on stdout
#   scripts/test-postgres.sh url       # the URL for HYBRIDNAS_TEST_POSTGRES_URL
#   scripts/test-postgres.sh stop      # stop the server and delete its directory
#
# Typical local use:
#   bash scripts/test-postgres.sh start
#   HYBRIDNAS_TEST_POSTGRES_URL=$(bash scripts/test-postgres.sh url) .venv/bin/python -m pytest -q
#   bash scripts/test-postgres.sh stop
#
# The server lives entirely in $HYBRIDNAS_PG_DIR (default: /tmp/hybridnas-test-postgres-UID):
# data, log and the unix socket. It listens on no TCP port, so it never clashes with another
# PostgreSQL on the machine, and uses trust auth for the superuser `hybridnas`. Durability is
# switched off (fsync, synchronous_commit): the data is thrown away, and it makes tests fast.
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user
# (created by Debian's package; created here if missing).
set -euo pipefail

dir="${HYBRIDNAS_PG_DIR:-${TMPDIR:-/tmp}/hybridnas-test-postgres-$(id -u)}"
port="${HYBRIDNAS_PG_PORT:-54329}"  # names the socket file only; no TCP
db_user=hybridnas

log() { echo "test-postgres: $*" >&2; }

# Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<version>/bin.
bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then echo "$PG_BINDIR"; return; fi
    local newest
    newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$newest" ] && [ -x "$newest/initdb" ]; then echo "$newest"; return; fi
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
    return 1
}

# Run a server command as the unprivileged owner of the cluster, from inside $dir
# (the owner may not be allowed into the caller's working directory).
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        (cd "$dir" && runuser -u postgres -- "$@")
    else
        (cd "$dir" && "$@")
    fi
}

url() {
    echo "postgresql+psycopg://$db_user@/postgres?host=$dir&port=$port"
}

running() {
    local bin
    bin=$(bindir) || return 1
    [ -f "$dir/data/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

install() {
    if bindir >/dev/null; then
        log "PostgreSQL already installed in $(bindir)"
        return
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "PostgreSQL is not installed; install it (Debian/Ubuntu: sudo apt-get install postgresql)"
        exit 1
    fi
    log "installing PostgreSQL with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

start() {
    local bin
    if ! bin=$(bindir); then
        log "PostgreSQL is not installed; run: bash $0 install"
        exit 1
    fi
    if running; then
        log "already running in $dir"
        return
    fi
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
        chown postgres "$dir"
    fi
    chmod 700 "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir/data" -U "$db_user" --auth=trust \
            --encoding=UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-k $dir -p $port -c listen_addresses= -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null \
        || { cat "$dir/server.log" >&2; exit 1; }
    log "started $("$bin/postgres" --version) in $dir"
}

stop() {
    local bin
    if running; then
        bin=$(bindir)
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
        log "stopped"
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    url) url ;;
    *) echo "usage: $0 install|start|stop|url" >&2; exit 2 ;;
esac
