#!/usr/bin/env bash
# Sets up from nothing (scripts/bootstrap.sh), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/pytest -q "$@"
