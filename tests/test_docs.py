"""The command reference in docs/cli.md is generated from the CLI and must match it."""

import html
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_the_cli(tmp_path):
    # What scripts/cli_docs.sh runs (`typer snowhub_cli.main utils docs ...`), in this process: Typer's own
    # command-line app, without a second cold start of Python, torch and snowhub.
    from typer.cli import app as typer_cli

    out = tmp_path / "cli.md"
    result = CliRunner().invoke(typer_cli, ["snowhub_cli.main", "utils", "docs", "--name", "snowhub",
                                            "--title", "snowhub command reference", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert html.unescape(out.read_text()) == (ROOT / "docs" / "cli.md").read_text(), \
        "docs/cli.md is stale: run scripts/cli_docs.sh"
