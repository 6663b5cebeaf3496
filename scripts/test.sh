#!/usr/bin/env bash
# Sets up from nothing (scripts/bootstrap.sh), then runs the whole test suite: tests/, the stress suite
# tests/stress (a plain `pytest` skips it) and the benchmark harness's checks in benchmarks/tests.
# SNOWHUB_STRESS=1 also makes every skip a failure (tests/conftest.py): a missing dataset fails the run
# instead of quietly skipping what needs it. Every test has a time limit (pytest-timeout, pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
SNOWHUB_STRESS=1 exec .venv/bin/pytest -q "$@"
