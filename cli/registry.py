"""``snowhub registry copy --to URL``: move a hub's registry to another database (e.g. SQLite to PostgreSQL)."""

from __future__ import annotations

from typing import Annotated

import typer

from snowhub import Hub
from snowhub_cli import render
from snowhub_cli.options import HubOption, JsonOption, RegistryOption, one_line_errors

app = typer.Typer(help="The hub's registry database: copy it to another database.", no_args_is_help=True)


@app.command()
def copy(
    to: Annotated[str, typer.Option("--to", metavar="URL", help="An empty database, e.g. "
                                    "postgresql+psycopg://user:password@host:5432/db.")],
    hub: HubOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy the hub's registry into an empty database and verify every seal and file hash there.

    The original registry and the hub's files are only read. Afterwards every command reaches the hub with
    --registry URL (or $SNOWHUB_REGISTRY_URL); the weight files stay in the hub directory.
    """
    with one_line_errors():
        report = Hub.copy_registry(hub, to, registry)
        if as_json:
            render.print_json(vars(report))
        else:
            keys = f", {report.keys} trusted key(s)" if report.keys else ""
            render.line(f"copied the registry of {report.hub} ({report.tasks} task(s){keys}) to {report.target_url}: "
                        f"{report.seals} seal(s) and {report.files} file hash(es) verified there; "
                        f"{report.source_url} is unchanged")
            render.line(f"use it with: --registry '{report.target_url}' (the password as you gave it) "
                        f"--hub {report.hub}")
