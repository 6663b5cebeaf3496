"""Fault injection for the reliability tests: crash (or interrupt, stop, fill the disk) at a named point.

``SNOWHUB_FAULT=<point>[:<n>][=<action>][,...]`` makes the process act the ``n``-th time (default: the
first) it reaches :func:`crash_point` ``(<point>)``. ``<action>`` is a signal name (default ``SIGKILL``)
that the process sends itself, or ``FSIZE:<bytes>``:

* ``SIGKILL`` cannot be caught, so no ``finally`` block, ``atexit`` handler or buffered write runs: the
  hub sees exactly what a power cut, the OOM killer or ``kill -9`` would leave behind.
* ``SIGINT`` is a Ctrl-C at that exact point, ``SIGTERM`` a plain ``kill``.
* ``SIGSTOP`` freezes the process right there (it stays a live process holding whatever it holds, e.g.
  the writer lock or an open transaction) until someone sends it ``SIGCONT`` or kills it: the stress
  tests use it to read a hub, start a second writer or kill from outside at a known moment.
* ``FSIZE:<bytes>`` is a disk that fills up at that moment: from then on no file can grow past
  ``<bytes>`` (``RLIMIT_FSIZE``; ``SIGXFSZ`` is ignored, so the write fails with ``EFBIG`` instead of
  killing the process), the way a full disk fails every later write that needs space.

``SNOWHUB_FAULT_TRACE=<file>`` (only while ``SNOWHUB_FAULT`` is set; it may be empty) appends a line
``<point> <n>`` to ``<file>`` every time a crash point is reached, before acting on it: the tests count the
steps of a run with it, and check that a kill landed where they aimed it.

``SNOWHUB_FAULT_RANK=<r>`` (a multi-process training, ``docs/distributed.md``): only the worker whose ``RANK``
(set by ``torch.distributed.run``) is ``<r>`` counts, traces and acts; every other process ignores the fault,
so a test can kill exactly one worker mid-training.

Unset (always, outside tests) a crash point costs one dictionary lookup.

The points are listed in :data:`POINTS`; ``tests/stress/test_crash.py`` kills add-task at each of them.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable

ENV = "SNOWHUB_FAULT"
TRACE_ENV = "SNOWHUB_FAULT_TRACE"
RANK_ENV = "SNOWHUB_FAULT_RANK"
FSIZE = "FSIZE:"

POINTS = {
    "add-task:start": "names and options checked, nothing read yet",
    "add-task:data-found": "dataset discovered, before taking the writer lock",
    "add-task:locked": "writer lock taken and leftovers removed, before loading the source",
    "load-image": "after decoding a training/validation image (:N for the N-th image)",
    "train-step": "after a training, validation or feature-caching step (:N for the N-th step)",
    "add-task:trained": "training and probe set done, nothing written",
    "save:mid-write": "a weight file's temporary copy is half written (:2 for the probe file)",
    "save:before-rename": "a weight file's temporary copy is complete and fsynced, not renamed (:2 probe)",
    "save:after-rename": "a weight file was renamed into place, directory not yet fsynced (:2 probe)",
    "add-task:files-written": "delta and probe files in place, registry row not yet written",
    "registry:before-commit": "the sealed registry row is inserted in an open transaction, not committed",
    "registry:after-commit": "the registry row is committed, add-task has not returned",
}

_hits: dict[str, int] = {}


def _targets() -> dict[str, tuple[int, str]]:
    targets = {}
    for item in filter(None, (part.strip() for part in os.environ.get(ENV, "").split(","))):
        item, _, action = item.partition("=")
        name, _, count = item.rpartition(":")
        if not (name and count.isdigit()):
            name, count = item, "1"
        if action.startswith(FSIZE):
            int(action[len(FSIZE):])  # a typo fails at once, not at the point
        else:
            signal.Signals[action or "SIGKILL"]
        targets[name] = (int(count), action or "SIGKILL")
    return targets


def _act(action: str) -> None:
    if action.startswith(FSIZE):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(action[len(FSIZE):]), hard))
    else:
        os.kill(os.getpid(), signal.Signals[action])


def _trace(name: str, hit: int) -> None:
    path = os.environ.get(TRACE_ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"{name} {hit}\n")
        except OSError:  # e.g. under an FSIZE limit: the trace is a test aid, never a failure
            pass


def crash_point(name: str, before: Callable[[], None] | None = None) -> None:
    """Act if ``$SNOWHUB_FAULT`` names `name` and this is the chosen hit (see the module docstring).

    `before` (e.g. truncating a file to fake a half-finished write) runs just before the action.
    """
    if ENV not in os.environ:
        return
    if RANK_ENV in os.environ and os.environ.get("RANK") != os.environ[RANK_ENV].strip():
        return
    hit = _hits[name] = _hits.get(name, 0) + 1
    _trace(name, hit)
    target = _targets().get(name)
    if target is not None and hit == target[0]:
        if before is not None:
            before()
        _act(target[1])
