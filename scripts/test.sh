#!/usr/bin/env bash
# Sets up from nothing (scripts/bootstrap.sh), then runs the whole test suite, the stress suite included
# (about 2 + 2 minutes on an idle 2-core machine; a plain `pytest` skips tests/stress).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
SNOWHUB_STRESS=1 exec .venv/bin/pytest -q "$@"
