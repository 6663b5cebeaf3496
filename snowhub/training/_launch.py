"""The launcher of ``snowhub add-task --nproc-per-node N``: PyTorch's elastic agent (the engine behind
``torchrun``, :mod:`torch.distributed.run`) running N workers on this machine, none restarted.

Each worker runs the same command (``python -m snowhub_cli add-task …``) and finds its rank in its
environment, as under ``torchrun``. ``max_restarts=0``: if any worker fails or is killed, the agent stops
the others and the run fails as a whole. A worker started by this launcher (``SNOWHUB_LAUNCHER=1``) reports
a failure as one line in its torchelastic error file and prints nothing; :func:`run_workers` turns the
failures into one :class:`DistributedError` line, the most telling first (a user error, then a worker killed
by a signal, then a crash, then the consequences: a worker the agent stopped with SIGTERM, one that only lost
its peers). In a worker, :func:`this_worker` says where it stands (:class:`Worker`: its rank, whether it writes,
whether its launcher reports its failure) and :meth:`Worker.record_failure` records a failure for the launcher.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from snowhub.errors import ConfigError, DistributedError, SnowhubError

LAUNCHER_ENV = "SNOWHUB_LAUNCHER"
# What a worker writes into its error file (see :func:`write_worker_error`), beside torchelastic's fields.
_KIND = "snowhub_kind"
# A worker that failed only because another one did: its collective lost its peers.
PEER, USER, CRASH, INTERRUPT = "peer", "user", "crash", "interrupt"


def launched() -> bool:
    """Whether this process is a worker of PyTorch's elastic launcher (``torchrun``, ``torch.distributed.run``,
    ``snowhub add-task --nproc-per-node``): the launcher sets ``TORCHELASTIC_RUN_ID`` and ``RANK``."""
    return dist.is_torchelastic_launched() and "RANK" in os.environ


def launch_rank() -> int:
    """This worker's global rank, from the launcher's ``RANK`` (0 outside a launch)."""
    return int(os.environ.get("RANK", "0"))


@dataclass(frozen=True)
class WorkerFailure:
    """Why a worker failed, as recorded for its launcher (:meth:`Worker.record_failure`).

    Attributes:
        kind: ``"user"`` (a :class:`SnowhubError`: bad input, the hub), ``"interrupt"`` (Ctrl-C, SIGTERM),
            ``"peer"`` (a collective lost its peers: another worker failed first) or ``"crash"`` (a bug).
        message: one line saying what happened.
    """

    kind: str
    message: str


@dataclass(frozen=True)
class Worker:
    """This process's place in a launch by PyTorch's elastic launcher (``torchrun``, or the workers of
    ``snowhub add-task --nproc-per-node`` started by :func:`run_workers`).

    Attributes:
        launched: whether a launcher started this process (else it trains alone).
        rank: its global rank (0 when not launched).
        launcher_reports: started by :func:`run_workers`, whose launcher prints this worker's failure in one
            line: the worker itself prints nothing but rank 0's progress.
    """

    launched: bool
    rank: int
    launcher_reports: bool

    @property
    def writes(self) -> bool:
        """Rank 0 (or not launched): the process that shows progress, takes the writer lock and registers."""
        return self.rank == 0

    def record_failure(self, error: BaseException) -> WorkerFailure:
        """Classify `error` (see :class:`WorkerFailure`) and record it as one line in the error file the
        launcher reads (nothing outside a launch)."""
        failure = _failure(error)
        write_worker_error(failure.message, failure.kind)
        return failure


def this_worker() -> Worker:
    """This process as a worker of a launch (from the launcher's environment)."""
    return Worker(launched(), launch_rank(), os.environ.get(LAUNCHER_ENV) == "1")


def _failure(error: BaseException) -> WorkerFailure:
    if isinstance(error, SnowhubError):
        return WorkerFailure(USER, str(error))
    if isinstance(error, KeyboardInterrupt):
        return WorkerFailure(INTERRUPT, "interrupted; nothing was changed in the hub")
    if isinstance(error, (dist.DistError, RuntimeError)):  # gloo reports a lost peer as a RuntimeError
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        peer = isinstance(error, dist.DistError) or "gloo" in str(error).lower()
        return WorkerFailure(PEER if peer else CRASH, first)
    return WorkerFailure(CRASH, f"{type(error).__name__}: {error}")


def worker_device_type(requested: str) -> str:
    """``"cuda"`` or ``"cpu"``: where workers given ``--device requested`` train, decided without starting CUDA
    in the launching process.

    Raises:
        ConfigError: ``cuda:N`` (one GPU for every worker): workers take their ``LOCAL_RANK``'s GPU.
    """
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda:"):
        raise ConfigError(f"`device` {requested} would put every process on one GPU; give `device` cuda (or auto): "
                          "each process takes its own GPU (LOCAL_RANK)")
    return "cuda" if requested == "cuda" else "cpu"


def write_worker_error(message: str, kind: str) -> None:
    """In a worker: record a one-line failure `message` of `kind` (:data:`USER`, :data:`CRASH`, :data:`PEER`,
    :data:`INTERRUPT`) in the error file torchelastic gave it (``TORCHELASTIC_ERROR_FILE``), where the
    launcher (and ``torchrun``'s summary) reads it. Does nothing outside a launch."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"message": message, "timestamp": int(time.time()), _KIND: kind}, fh)
    except OSError:
        pass


def _describe(failures: dict, processes: int) -> str:
    """One line for the failures of a run (global rank → ProcessFailure)."""
    def kind(failure) -> str | None:
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        return data.get(_KIND)

    def killed(rank: int, failure) -> str:
        number = -failure.exitcode
        name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
        return (f"worker rank {rank} of {processes} (pid {failure.pid}) was killed by {name}; the run failed as a "
                "whole and nothing was registered")

    def crashed(rank: int, failure) -> str:
        return (f"worker rank {rank} of {processes} failed: {failure.message}; the run failed as a whole and nothing "
                "was registered")

    # Most telling first. The agent stops the survivors of a failure with SIGTERM, and a survivor blocked in a
    # collective may first report its lost peer: both are consequences, so they come after the causes.
    tiers = [(lambda f: kind(f) in (USER, INTERRUPT), lambda rank, f: f.message),
             (lambda f: kind(f) is None and f.exitcode < 0 and -f.exitcode != signal.SIGTERM, killed),
             (lambda f: kind(f) == CRASH, crashed),
             (lambda f: kind(f) is None and f.exitcode < 0, killed),
             (lambda f: True, crashed)]
    ordered = sorted(failures.items(), key=lambda item: item[1].timestamp)  # stable: first captured first
    for matches, describe in tiers:
        for rank, failure in ordered:
            if matches(failure):
                return describe(rank, failure)
    return "a worker failed; nothing was registered"


@contextmanager
def _quiet_agent() -> Iterator[None]:
    """The agent's own log lines (its start, each failure, shut-downs) off: the launcher says it in one line."""
    import torch.distributed.elastic.agent.server.api  # noqa: F401  (create the loggers, then quieten them)
    import torch.distributed.elastic.multiprocessing.api  # noqa: F401

    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("torch.distributed")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """The agent turns SIGTERM, SIGINT, SIGHUP and SIGQUIT into its own exception for good; put back ours
    afterwards (a notebook or a test runner that launches keeps its Ctrl-C)."""
    numbers = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT]
    saved = [signal.getsignal(n) for n in numbers]
    try:
        yield
    finally:
        for number, handler in zip(numbers, saved):
            if handler is not None:
                signal.signal(number, handler)


def run_workers(command: Sequence[str], processes: int) -> None:
    """Run `command` (a program and its arguments) as `processes` workers on this machine under PyTorch's
    elastic agent, with ``max_restarts=0``; return when all succeeded.

    The workers get the environment of ``torchrun --standalone --nproc-per-node processes`` (``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``, …) plus ``SNOWHUB_LAUNCHER=1``, and
    this process's stdin, stdout and stderr.

    Raises:
        DistributedError: a worker failed or was killed (the others are stopped): one line saying which and why.
        KeyboardInterrupt: the launcher was interrupted (Ctrl-C, SIGTERM); the workers are stopped.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=f"snowhub-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          shutdown_timeout=10)
    saved = os.environ.get(LAUNCHER_ENV)
    os.environ[LAUNCHER_ENV] = "1"
    try:
        with _quiet_agent(), _signal_handlers_kept():
            elastic_launch(config, command[0])(*command[1:])
    except ChildFailedError as exc:
        raise DistributedError(_describe(exc.failures, processes)) from None
    except SignalException:
        raise KeyboardInterrupt from None
    finally:
        if saved is None:
            os.environ.pop(LAUNCHER_ENV, None)
        else:
            os.environ[LAUNCHER_ENV] = saved
