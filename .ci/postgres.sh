#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests, on 127.0.0.1 only, with trust authentication.
#   .ci/postgres.sh install     apt-get install Debian's postgresql where no server is installed (as root)
#   .ci/postgres.sh start DIR   initdb a cluster in DIR, start it on a free port, create the database
#                               lmforge_test; prints its URL (postgresql+psycopg://postgres@127.0.0.1:PORT/lmforge_test)
#   .ci/postgres.sh stop DIR    stop that server and remove DIR
# As root the server runs as the postgres user, since PostgreSQL refuses to run as root: DIR's parent must let
# that user in (/tmp does).
set -euo pipefail

usage() { echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2; }
action=${1:-}
case $action in install) [ $# -eq 1 ] || usage ;; start|stop) [ $# -eq 2 ] || usage; dir=$2 ;; *) usage ;; esac

bindir() {  # the newest installed server's programs
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$found" ] && command -v pg_config >/dev/null; then found=$(pg_config --bindir); fi
    if [ -n "$found" ] && [ -x "$found/initdb" ]; then echo "$found"; else return 1; fi
}

as_owner() {  # run a server program as the owner of the cluster
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case $action in
install)
    bindir >/dev/null && exit 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "$0: PostgreSQL is not installed and this is not root on Debian: apt-get install postgresql" >&2
        exit 1
    fi
    echo "$0: installing postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    bindir >/dev/null
    ;;
start)
    bin=$(bindir) || { echo "$0: PostgreSQL is not installed (.ci/postgres.sh install)" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-instructions -E UTF8 >"$dir/initdb.log"
    # loopback only, no unix socket outside DIR; durability off: the data lives as long as the tests
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
        "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=200" >/dev/null \
        || { cat "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres lmforge_test
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/lmforge_test" | tee "$dir/url"
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$(bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
    rm -rf "$dir"
    ;;
esac
