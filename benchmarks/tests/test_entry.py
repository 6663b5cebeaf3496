"""``python -m benchmarks``: one entry point whose suites each take their own options, and every benchmark
command the docs quote names a suite and options that exist."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import SUITES, main

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Placeholders the docs use in commands, and a value each parses as.
PLACEHOLDERS = {"$seed": "0", "$ds": "fashion", "$exp": "baseline", "NAME": "baseline", "D": "fashion", "S": "0"}


def _quoted_commands() -> list[tuple[str, str]]:
    """``(doc name, the arguments after "python -m benchmarks")`` of every command in code blocks and spans."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"```.*?```", text, flags=re.S)
        lines = [line for block in blocks for line in block.splitlines()]
        spans = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for snippet in lines + [" ".join(s.split()) for s in spans]:
            if (at := snippet.find("python -m benchmarks ")) >= 0:
                command = snippet[at + len("python -m benchmarks "):].split(" #")[0].split(";")[0]
                found.append((doc.name, command.strip()))
    return found


def _parser(suite: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {suite}", exit_on_error=False)
    importlib.import_module(SUITES[suite][0]).add_arguments(parser, suite)
    return parser


def test_help_lists_every_suite_and_an_unknown_suite_is_one_line(capsys):
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and all(f"\n  {suite} " in done.stdout for suite in SUITES), done.stdout
    assert main(["tables"]) == 2
    assert capsys.readouterr().err == f"error: unknown suite 'tables'; choose one of: {', '.join(SUITES)}\n"


@pytest.mark.parametrize("suite", SUITES)
def test_every_suite_has_its_own_help(suite, capsys):
    with pytest.raises(SystemExit) as exit:
        main([suite, "--help"])
    assert exit.value.code == 0 and f"usage: python -m benchmarks {suite}" in capsys.readouterr().out


def test_every_command_the_docs_quote_parses():
    commands = _quoted_commands()
    assert len(commands) > 30  # README, benchmarks, serving, export, registry, distributed
    for doc, command in commands:
        words = [PLACEHOLDERS.get(w, w) for w in shlex.split(command)]
        if words[0].startswith("-") or words[0] == "SUITE":
            continue  # python -m benchmarks --help, python -m benchmarks SUITE --help
        assert words[0] in SUITES, f"{doc}: python -m benchmarks {command}: no suite {words[0]!r}"
        try:
            _, unknown = _parser(words[0]).parse_known_args(words[1:])
        except (argparse.ArgumentError, SystemExit) as exc:  # a bad value or a missing argument (stderr says which)
            pytest.fail(f"{doc}: python -m benchmarks {command}: exit {exc}")
        assert not unknown, f"{doc}: python -m benchmarks {command}: no such option {unknown}"


def test_every_result_the_docs_name_is_kept():
    for doc in DOCS + [REPO / "benchmarks" / "results" / "README.md"]:
        for path in re.findall(r"benchmarks/results/[\w.\-/]*[\w/]", doc.read_text()):
            if "/tmp" not in path:
                assert (REPO / path).exists(), f"{doc.name} names {path}, which is not in the tree"
    readme = (REPO / "benchmarks" / "results" / "README.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", readme):
        assert (REPO / "benchmarks" / "results" / link).exists(), link
