"""The one results layout every suite writes: ``results.json`` (a common envelope) and ``results.md``.

``results.json``::

    {"schema": 1, "suite": "export", "command": "python -m benchmarks export ...",
     "wall_seconds": 183.2, "environment": {...}, "settings": {...}, "rows": [{...}, ...], "summary": {...}}

* ``environment``: :func:`benchmarks.environment.describe_environment` (machine, packages, git commit, load
  average at the start and ``load_average_end``), plus ``code`` where the suite measured a frozen copy
  (:mod:`benchmarks.snapshot`);
* ``settings``: what the suite was asked to do (its options or its configuration);
* ``rows``: one measurement per row (a job, a process count, a database, ...), the suite's own keys;
* ``summary``: what the suite derives from the rows (ratios, the analysis of the ``methods`` suite).

``results.md`` is the suite's Markdown report; the figures, where a suite draws any, lie beside it.
"""

from __future__ import annotations

import json
import os
import shlex
from datetime import datetime
from pathlib import Path

SCHEMA = 1
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
ENVELOPE = ("schema", "suite", "command", "wall_seconds", "environment", "settings", "rows", "summary")


def command_line(suite: str, argv: list[str]) -> str:
    """The command as a user types it: ``python -m benchmarks SUITE ARGS`` (shell-quoted)."""
    return " ".join(["python -m benchmarks", suite, *map(shlex.quote, argv)])


def default_out(suite: str) -> Path:
    """``benchmarks/results/<suite>-<date>-<time>``: where a run goes unless ``--out`` says otherwise."""
    return RESULTS / f"{suite}-{datetime.now():%Y%m%d-%H%M%S}"


def write_results(out: Path, suite: str, command: str, rows: list[dict], markdown: str, *,
                  settings: dict, environment: dict, summary: dict | None = None,
                  wall_seconds: float | None = None) -> list[Path]:
    """Write ``out/results.json`` (the envelope above) and ``out/results.md`` (`markdown`); return both paths.

    ``environment`` gains ``load_average_end`` (the 1/5/15-minute load average now) unless it has one.

    Raises:
        OSError: `out` cannot be created or written.
    """
    out.mkdir(parents=True, exist_ok=True)
    environment = {"load_average_end": os.getloadavg()} | environment
    envelope = {"schema": SCHEMA, "suite": suite, "command": command, "wall_seconds": wall_seconds,
                "environment": environment, "settings": settings, "rows": rows, "summary": summary or {}}
    js, md = out / "results.json", out / "results.md"
    js.write_text(json.dumps(envelope, indent=1, default=str) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    return [js, md]


def read_results(run: Path, suite: str | None = None) -> dict:
    """The envelope of ``run/results.json``.

    Raises:
        SystemExit: the file is missing, is not a results envelope, or is another suite's (`suite` given).
    """
    path = run / "results.json"
    try:
        envelope = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: cannot read results ({exc})") from None
    if not isinstance(envelope, dict) or envelope.get("schema") != SCHEMA:
        raise SystemExit(f"{path}: not a results.json of python -m benchmarks (schema {SCHEMA})")
    if suite is not None and envelope["suite"] != suite:
        raise SystemExit(f"{path}: results of suite {envelope['suite']!r}, not {suite!r}")
    return envelope


def header(suite: str, command: str, environment: dict, wall_seconds: float | None = None) -> list[str]:
    """The first lines of a suite's ``results.md``: title, command, machine, product commit."""
    gpu = environment.get("gpu") or {}
    torch_version = environment.get("packages", {}).get("torch")
    wall = "" if wall_seconds is None else f" — {wall_seconds / 60:.1f} min wall time"
    load = environment.get("load_average_start")
    # A suite run in a snapshot measures the snapshot's commit, not the repository's HEAD when it reports.
    product = (environment.get("code") or {}).get("commit") or environment.get("git_commit")
    return [f"# snowhub benchmark: {suite}", "", f"`{command}`{wall}.", "",
            f"Machine: {environment.get('cpu')} ({environment.get('cpu_count')} cores), GPU "
            f"{gpu.get('name', 'none')}; torch {torch_version}; product {product}"
            + ("" if load is None else f"; 1-minute load average at the start {load[0]:.1f}") + ".", ""]
