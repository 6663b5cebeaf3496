#!/usr/bin/env bash
# Sets up from nothing (scripts/bootstrap.sh), then runs the whole test suite: tests/, the stress suite
# tests/stress (a plain `pytest` skips it) and the benchmark harness's checks in benchmarks/tests.
# SNOWHUB_STRESS=1 also makes every skip a failure (tests/conftest.py): a missing dataset fails the run
# instead of quietly skipping what needs it. Every test has a time limit (pytest-timeout, pyproject.toml).
# The registry tests run on SQLite and on a real PostgreSQL server: scripts/postgres.sh installs PostgreSQL
# if it is missing, starts a throwaway cluster for the run ($SNOWHUB_TEST_POSTGRES_URL) and stops it after.
# The web page tests drive Debian's headless Chromium: scripts/chromium.sh installs it if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SNOWHUB_CONTINUAL=1 bash scripts/bootstrap.sh  # with Avalanche: benchmarks/tests runs the continual suite's smoke
bash scripts/chromium.sh || echo "warning: scripts/chromium.sh could not install Chromium; the web page tests will fail" >&2
if [[ -z "${SNOWHUB_TEST_POSTGRES_URL:-}" ]]; then
  pg_dir="$(mktemp -d)"
  trap 'bash scripts/postgres.sh stop "$pg_dir"' EXIT
  if url="$(bash scripts/postgres.sh start "$pg_dir")"; then
    export SNOWHUB_TEST_POSTGRES_URL="$url"
  else
    echo "warning: scripts/postgres.sh could not start PostgreSQL; the tests that need it will fail" >&2
  fi
fi
# Two passes. First every file not marked `serial` runs on $SNOWHUB_TEST_WORKERS pytest-xdist workers (default
# 2; one file per worker at a time, so module fixtures are made once), each with one compute thread: two
# workers of two threads on a 2-core machine spin against each other. Then the `serial` files (latency and
# liveness measurements that a neighbour's training would distort) run alone, with the machine's threads.
# A pass that selects no test (paths given that hold none of its files) is not a failure.
workers="${SNOWHUB_TEST_WORKERS:-2}"
status=0
run_pass() { "$@" || { local rc=$?; [[ $rc -eq 5 ]] || status=$rc; }; }
run_pass env SNOWHUB_STRESS=1 OMP_NUM_THREADS=1 .venv/bin/pytest -q -n "$workers" --dist loadfile -m "not serial" "$@"
run_pass env SNOWHUB_STRESS=1 .venv/bin/pytest -q -m serial "$@"
exit "$status"
