#!/usr/bin/env bash
# Regenerates docs/cli.md from the Typer app, so the reference always matches `snowhub --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/typer snowhub_cli.main utils docs --name snowhub --title "snowhub command reference" --output docs/cli.md >/dev/null
.venv/bin/python - <<'PY'
import html, pathlib
path = pathlib.Path("docs/cli.md")
path.write_text(html.unescape(path.read_text()))
PY
