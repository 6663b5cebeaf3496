"""Options every command shares, and the one place user errors become a line and an exit status.

Command modules (``main.py``, and one module per command group) import these, so ``--hub``, ``--registry``,
``--json`` and ``--device`` read and behave the same in every command.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from snowhub import SnowhubError
from snowhub_cli import render
from snowhub_cli.flags import FLAGS, as_flags

HubOption = Annotated[Optional[Path], typer.Option(
    "--hub", help="Hub directory (default: $SNOWHUB_HOME, else ./.snowhub).", show_default=False)]
RegistryOption = Annotated[Optional[str], typer.Option(
    "--registry", metavar="URL", envvar="SNOWHUB_REGISTRY_URL", show_default=False, show_envvar=False,
    help="Registry database (default: $SNOWHUB_REGISTRY_URL, else sqlite:///<hub>/hub.db), e.g. "
         "postgresql+psycopg://user:password@host:5432/db; without --hub, the directory it records.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA if present), cpu, or cuda[:N].")]


class Runtime(str, Enum):
    """``--runtime`` of ``predict`` and ``serve``: what runs the forward passes (:mod:`snowhub.serving.runtime`)."""

    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"


@contextmanager
def one_line_errors(flags: dict[str, str] = FLAGS) -> Iterator[None]:
    """Turn snowhub's errors and Ctrl-C into one line and an exit status, never a traceback; the parameters an
    error names become their flags in `flags` (:func:`snowhub_cli.flags.as_flags`)."""
    try:
        yield
    except SnowhubError as exc:
        render.problem(as_flags(str(exc), flags))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        render.problem("nothing was changed in the hub", "interrupted")
        raise typer.Exit(130) from None
