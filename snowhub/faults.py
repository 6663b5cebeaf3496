"""Fault injection for the reliability tests: crash (or interrupt) the process at a named point.

``SNOWHUB_FAULT=<point>[:<n>][=<signal>][,...]`` makes the process send itself ``<signal>`` (default
``SIGKILL``) the ``n``-th time (default: the first) it reaches :func:`crash_point` ``(<point>)``. SIGKILL
cannot be caught, so no ``finally`` block, ``atexit`` handler or buffered write runs: the hub sees exactly
what a power cut, the OOM killer or ``kill -9`` would leave behind. ``=SIGINT`` is a Ctrl-C at that exact
point. Unset (always, outside tests) a crash point costs one dictionary lookup.

The points are listed in :data:`POINTS`; ``tests/stress/test_crash.py`` kills add-task at each of them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snowhub.progress import Progress

ENV = "SNOWHUB_FAULT"

POINTS = {
    "add-task:start": "names and options checked, nothing read yet",
    "add-task:data-found": "dataset discovered, before taking the writer lock",
    "add-task:locked": "writer lock taken and leftovers removed, before loading the source",
    "load-image": "after decoding a training/validation image (:N for the N-th image)",
    "train-step": "after a training or validation step (:N for the N-th step)",
    "add-task:trained": "training and probe set done, nothing written",
    "save:mid-write": "a weight file's temporary copy is half written (:2 for the probe file)",
    "save:before-rename": "a weight file's temporary copy is complete and fsynced, not renamed (:2 probe)",
    "save:after-rename": "a weight file was renamed into place, directory not yet fsynced (:2 probe)",
    "add-task:files-written": "delta and probe files in place, registry row not yet written",
    "registry:before-commit": "the sealed registry row is inserted in an open transaction, not committed",
    "registry:after-commit": "the registry row is committed, add-task has not returned",
}

_hits: dict[str, int] = {}


def _targets() -> dict[str, tuple[int, signal.Signals]]:
    targets = {}
    for item in filter(None, (part.strip() for part in os.environ.get(ENV, "").split(","))):
        item, _, sig = item.partition("=")
        name, _, count = item.rpartition(":")
        if not (name and count.isdigit()):
            name, count = item, "1"
        targets[name] = (int(count), signal.Signals[sig] if sig else signal.SIGKILL)
    return targets


def crash_point(name: str, before: Callable[[], None] | None = None) -> None:
    """Signal this process if ``$SNOWHUB_FAULT`` names `name` and this is the chosen hit.

    `before` (e.g. truncating a file to fake a half-finished write) runs just before the signal.
    """
    if ENV not in os.environ:
        return
    target = _targets().get(name)
    if target is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == target[0]:
        if before is not None:
            before()
        os.kill(os.getpid(), target[1])


class _CrashingProgress:
    """A Progress that passes every event on and hits the ``train-step`` crash point on each step."""

    def __init__(self, inner: Progress):
        self._inner = inner

    def start(self, description: str, total: int | None) -> None:
        self._inner.start(description, total)

    def advance(self, steps: int = 1, **info: float | str) -> None:
        self._inner.advance(steps, **info)
        crash_point("train-step")

    def finish(self, message: str | None = None) -> None:
        self._inner.finish(message)


def watch_progress(progress: Progress) -> Progress:
    """`progress` itself, or (only when fault injection is on) a wrapper with the ``train-step`` point."""
    return _CrashingProgress(progress) if ENV in os.environ else progress
