"""``add-task`` on several processes: ``snowhub add-task … --nproc-per-node N`` launches N workers on this
machine; each worker (and each worker of ``torchrun … -m snowhub_cli add-task …``) trains its shard and
rank 0 registers (``docs/distributed.md``).

A worker started by ``--nproc-per-node`` prints nothing but rank 0's progress: its failure goes, as one line,
to the launcher, which prints the one ``error:`` line of the run and the added task. Under ``torchrun``
rank 0 prints the task and every failing rank its own ``error:`` line.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import typer

from snowhub import Hub, TrainConfig
from snowhub.errors import ConfigError
from snowhub.training import Worker, this_worker
from snowhub_cli import render
from snowhub_cli.flags import as_flags
from snowhub_cli.options import one_line_errors
from snowhub_cli.progress import RichProgress

NPROC_HELP = ("Train with this many processes on this machine (PyTorch DistributedDataParallel under its elastic "
              "launcher; one per GPU on a CUDA machine). --batch-size stays the global batch.")


def worker_argv(ctx: typer.Context, skip: tuple[str, ...] = ("nproc_per_node", "as_json")) -> list[str]:
    """The command line of this command as the user gave it (every option set on it, whatever its source),
    less `skip`: what each worker runs after ``python -m snowhub_cli``."""
    argv = [ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in skip or value is None:
            continue
        if param.param_type_name == "argument":
            argv.append(str(value))
            continue
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name == "DEFAULT":
            continue
        if param.is_flag and param.secondary_opts:
            argv.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            argv += [param.opts[0]] if value else []
        else:
            for item in (value if param.multiple else [value]):
                argv += [param.opts[0], str(item)]
    return argv


def launched() -> bool:
    """Whether this process is a worker of a launch (``torchrun``, or ``--nproc-per-node``'s launcher)."""
    return this_worker().launched


@contextmanager
def _worker_errors(worker: Worker) -> Iterator[None]:
    """A worker's failure: one line in its torchelastic error file (read by the launcher), and on stderr unless
    its launcher reports it (started by ``--nproc-per-node``); a crash (a bug) prints its traceback."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        failure = worker.record_failure(exc)
        if failure.kind == "crash":
            traceback.print_exc()
        elif worker.launcher_reports:
            pass
        elif failure.kind == "interrupt":
            render.problem("nothing was changed in the hub", "interrupted")
        elif failure.kind == "peer":
            render.problem(f"rank {worker.rank} lost its peers ({failure.message}); another worker failed, "
                           "see its error")
        else:
            render.problem(as_flags(failure.message))
        raise typer.Exit(130 if failure.kind == "interrupt" else 1) from None


def add_task(ctx: typer.Context, name: str, data: Path, config: TrainConfig, processes: int | None,
             hub: Path | None, as_json: bool, registry: str | None = None, new_version: bool = False) -> None:
    """``add-task`` with ``--nproc-per-node`` (launch the workers), or inside a launched worker; `registry`
    is ``--registry`` and `new_version` ``--new-version`` (the workers get both on their command line,
    :func:`worker_argv`)."""
    worker = this_worker()
    if not worker.launched:
        command = [sys.executable, "-m", "snowhub_cli", *worker_argv(ctx)]
        with one_line_errors(), Hub.open(hub, registry=registry) as h:
            _print(h.add_task_on_workers(name, data, config, processes, command, new_version), as_json)
        return
    with _worker_errors(worker):
        if processes is not None:
            raise ConfigError("--nproc-per-node is for a plain `snowhub add-task`; under torchrun give "
                              "--nproc-per-node to torchrun")
        with Hub.open(hub, clean=worker.writes, registry=registry) as h, \
                (RichProgress(render.err) if worker.writes else nullcontext()) as progress:
            info = h.add_task(name, data, config, progress, distributed=True, new_version=new_version)
        if info is not None and not worker.launcher_reports:
            _print(info, as_json)


def _print(info, as_json: bool) -> None:
    if as_json:
        render.print_json(info.to_dict())
    else:
        render.task_added(info)
