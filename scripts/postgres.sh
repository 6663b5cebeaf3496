#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: `postgres.sh start DIR` prints its URL, `postgres.sh stop DIR` ends it.
#
#   start DIR  find initdb/pg_ctl (PATH, then /usr/lib/postgresql/*/bin); if missing and we are root, install
#              Debian's `postgresql` package; initdb a cluster in DIR (user snowhub, password snowhub,
#              scram-sha-256 over TCP), start it on a free port of 127.0.0.1 and print
#              postgresql+psycopg://snowhub:snowhub@127.0.0.1:PORT/postgres on stdout (diagnostics on stderr).
#              PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user.
#   stop DIR   stop that server (immediately: it is throwaway) and remove DIR.
#
# scripts/test.sh runs the suite between the two; the tests themselves call `start` when no server is given
# ($SNOWHUB_TEST_POSTGRES_URL unset), so a plain `pytest` gets one too.
set -euo pipefail
cmd="${1:-}"; dir="${2:-}"
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

find_bin() {
  local name="$1" found
  if found="$(command -v "$name" 2>/dev/null)"; then echo "$found"; return 0; fi
  found="$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1 || true)"
  [[ -n "$found" ]] && { echo "$found"; return 0; }
  return 1
}

as_owner() {  # run a PostgreSQL binary as the cluster's owner
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

case "$cmd" in
start)
  if ! find_bin initdb >/dev/null || ! find_bin pg_ctl >/dev/null; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
      echo "postgres.sh: initdb/pg_ctl not found; installing Debian's postgresql package" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; }
    fi
  fi
  initdb="$(find_bin initdb)" || { echo "postgres.sh: no initdb (install the postgresql package)" >&2; exit 1; }
  pg_ctl="$(find_bin pg_ctl)" || { echo "postgres.sh: no pg_ctl (install the postgresql package)" >&2; exit 1; }
  if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  mkdir -p "$dir"  # give a directory of its own (mktemp -d): its owner changes to postgres under root
  [[ "$(id -u)" == 0 ]] && chown postgres "$dir"
  chmod 700 "$dir"
  printf 'snowhub\n' > "$dir/pw"
  [[ "$(id -u)" == 0 ]] && chown postgres "$dir/pw"
  as_owner "$initdb" -D "$dir/data" -U snowhub --pwfile="$dir/pw" --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || as_owner "$initdb" -D "$dir/data" -U snowhub --pwfile="$dir/pw" --auth-local=trust \
         --auth-host=scram-sha-256 -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  # fsync off: a throwaway cluster; the tests kill clients, never this server.
  as_owner "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >&2 || { cat "$dir/server.log" >&2; exit 1; }
  echo "postgresql+psycopg://snowhub:snowhub@127.0.0.1:$port/postgres"
  ;;
stop)
  if [[ -d "$dir/data" ]]; then
    pg_ctl="$(find_bin pg_ctl)" && as_owner "$pg_ctl" -D "$dir/data" -m immediate -w stop >&2 || true
  fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
