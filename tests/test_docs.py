"""The command reference in docs/cli.md is generated from the CLI and must match it."""

import html
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_the_cli(tmp_path):
    typer = Path(sys.executable).with_name("typer")
    out = tmp_path / "cli.md"
    subprocess.run([typer, "snowhub_cli.main", "utils", "docs", "--name", "snowhub",
                    "--title", "snowhub command reference", "--output", out], check=True, capture_output=True)
    assert html.unescape(out.read_text()) == (ROOT / "docs" / "cli.md").read_text(), \
        "docs/cli.md is stale: run scripts/cli_docs.sh"
