"""``snowhub list`` and ``snowhub show`` on a registry of 1,000 and 10,000 synthetic tasks, SQLite and PostgreSQL.

Each run fills a fresh registry with N sealed task rows (written by the registry itself, one transaction),
then times, in this process (no interpreter start-up), the whole command through the CLI: open the hub,
read every record, check every seal, render. Side by side, the seal checks as ``list`` made them before
(one query per task, ``Registry.check_record``) against the one-query ``Registry.checked_tasks``.

    .venv/bin/python -m benchmarks registry --tasks 1000 10000 [--postgres URL] [--out DIR]

Without ``--postgres`` a throwaway server is started with ``scripts/postgres.sh`` (``$SNOWHUB_TEST_POSTGRES_URL``
is used when set). Prints a Markdown table (median of ``--repeat`` runs, seconds) and writes it to ``--out``
(default ``benchmarks/results/registry-<date>-<time>/``): ``results.json`` (one row per database and task
count; the PostgreSQL URL's password hidden) and ``results.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from benchmarks.environment import describe_environment
from benchmarks.output import command_line, default_out, header, write_results

REPO = Path(__file__).resolve().parents[1]
PER_TASK_UP_TO = 1000
sys.path.insert(0, str(REPO / "tests"))


def _fill(root: Path, url: str | None, n: int) -> None:
    from test_registry_postgres import source_record, task_record

    from snowhub.store import Registry

    registry = Registry.create(root, url)
    registry.set_source(source_record())
    (registry.layout.root / "source" / "w.safetensors").write_bytes(b"")
    with registry._writing() as session:  # one transaction, each row sealed as add_task seals it
        for i in range(1, n + 1):
            registry._seal(session, task_record(f"task{i:05d}", seq=i, metrics={"history": [{"epoch": 1, "val_top1": 50.0}]}))
    registry.close()


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _cli(*argv: str) -> None:
    from snowhub_cli.main import app

    result = CliRunner().invoke(app, list(argv))
    assert result.exit_code == 0, result.output


def measure(name: str, root: Path, url: str | None, n: int, repeat: int) -> dict:
    from snowhub.store import Registry

    hub = ["--hub", str(root)] + (["--registry", url] if url else [])
    started = time.perf_counter()
    _fill(root, url, n)
    fill = time.perf_counter() - started
    row = {"database": name, "tasks": n, "fill_s": fill,
           "list_s": _median(lambda: _cli("list", *hub), repeat),
           "list_json_s": _median(lambda: _cli("list", "--json", *hub), repeat),
           "show_s": _median(lambda: _cli("show", f"task{n // 2:05d}", *hub), repeat)}
    with Registry.open(root, url) as registry:
        tasks = registry.tasks()
        # The old way costs minutes at 10,000 tasks on a loaded server: measured up to --per-task-up-to.
        row["seals_per_task_s"] = (_median(lambda: [registry.check_record(t) for t in tasks], 1)
                                   if n <= PER_TASK_UP_TO else None)
        row["seals_one_query_s"] = _median(registry.checked_tasks, repeat)
    return row


def _database(admin_url: str, name: str) -> str:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def add_arguments(parser: argparse.ArgumentParser, suite: str = "registry") -> None:
    """The ``registry`` suite's options."""
    parser.add_argument("--tasks", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--postgres", default=os.environ.get("SNOWHUB_TEST_POSTGRES_URL"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results/...)")
    parser.add_argument("--per-task-up-to", type=int, default=PER_TASK_UP_TO)


def _measure_all(args: argparse.Namespace) -> list[dict]:
    """Every task count on SQLite and PostgreSQL (a throwaway server unless ``--postgres``)."""
    started_server = None
    if not args.postgres:
        started_server = Path(tempfile.mkdtemp())
        args.postgres = subprocess.run(["bash", str(REPO / "scripts/postgres.sh"), "start", str(started_server)],
                                       check=True, capture_output=True, text=True).stdout.strip()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.tasks:
                rows.append(measure("SQLite", Path(tmp) / f"sqlite-{n}", None, n, args.repeat))
                url = _database(args.postgres, f"snowhub_bench_{n}")
                rows.append(measure("PostgreSQL", Path(tmp) / f"pg-{n}", url, n, args.repeat))
                print(rows[-2], rows[-1], file=sys.stderr, flush=True)
    finally:
        if started_server is not None:
            subprocess.run(["bash", str(REPO / "scripts/postgres.sh"), "stop", str(started_server)])
    return rows


def _table(rows: list[dict]) -> str:
    lines = ["| database | tasks | `list` s | `list --json` s | `show` s | seal checks, 1 query/task s | "
             "seal checks, 1 query s | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        per_task, one_query = r["seals_per_task_s"], r["seals_one_query_s"]  # per_task None: not measured
        per_task_cell = "—" if per_task is None else f"{per_task:.3f}"
        ratio_cell = "—" if per_task is None else f"{per_task / one_query:.1f}×"
        lines.append(f"| {r['database']} | {r['tasks']:,} | {r['list_s']:.3f} | {r['list_json_s']:.3f} | "
                     f"{r['show_s']:.3f} | {per_task_cell} | {one_query:.3f} | {ratio_cell} |")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write the results folder."""
    globals()["PER_TASK_UP_TO"] = args.per_task_up_to
    environment = describe_environment()
    started = time.perf_counter()
    rows = _measure_all(args)
    wall = time.perf_counter() - started
    shown = [make_url(a).render_as_string(hide_password=True) if "://" in a else a for a in args.argv]
    command = command_line("registry", shown)
    table = _table(rows)
    print(f"`{command}`\n\n{table}")
    out = args.out or default_out("registry")
    settings = {"tasks": args.tasks, "repeat": args.repeat, "per_task_up_to": args.per_task_up_to,
                "postgres": make_url(args.postgres).render_as_string(hide_password=True)}
    write_results(out, "registry", command, rows, "\n".join(header("registry", command, environment, wall)) + table,
                  settings=settings, environment=environment, wall_seconds=wall)
    print(f"wrote {out}")
    return 0
