"""Finding and removing what a crashed writer left in a hub.

A writer only creates files while it holds the writer lock, each under a temporary name first
(``.<name>.<16 hex>.tmp``), and an add-task names its files after the ``seq`` it is about to take (one
more than the last committed task). So, with the lock free, these are provably leftovers and are removed:

* temporary files anywhere in ``source/``, ``tasks/`` and ``staging/``, and anything else in ``staging/``;
* task files (``NNNN-name.delta|probe.safetensors``) numbered above the last committed task.

Any other file no registry row refers to is *unexpected* (e.g. a task file whose row was deleted from the
registry): it is reported by ``snowhub doctor`` but never deleted, since it may be the only copy of a task.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from snowhub.errors import HubLockedError, SnowhubError
from snowhub.store.files import HubLayout
from snowhub.store.models import SourceRow, TaskRow

log = logging.getLogger("snowhub")

_TMP = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")
_TASK_FILE = re.compile(r"^(\d{4,})-[A-Za-z0-9][A-Za-z0-9_-]{0,63}\.(?:delta|probe)\.safetensors$")


@dataclass
class Leftovers:
    """Files of a hub that no committed registry row refers to.

    Attributes:
        removable: leftovers of an interrupted writer (see the module docstring); safe to delete.
        unexpected: other unreferenced files; kept and reported.
    """

    removable: list[Path] = field(default_factory=list)
    unexpected: list[Path] = field(default_factory=list)


def find_leftovers(layout: HubLayout, source: SourceRow | None, tasks: Iterable[TaskRow]) -> Leftovers:
    """Sort the unreferenced files of the hub into removable and unexpected (reads directories only)."""
    tasks = list(tasks)
    known: set[Path] = set()
    for row in tasks:
        for relative in (row.weights_file, row.probe_file):
            try:
                known.add(layout.resolve(relative))
            except SnowhubError:
                pass  # a tampered path: reported by verification, not a reason to delete anything
    if source is not None:
        try:
            known.add(layout.resolve(source.weights_file))
        except SnowhubError:
            pass
    last_seq = max((row.seq for row in tasks), default=0)
    found = Leftovers()
    for directory in (layout.source_dir, layout.tasks_dir, layout.staging_dir):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path in known:
                continue
            if path.is_symlink() or not path.is_file():
                found.unexpected.append(path)  # a writer only ever creates regular files
                continue
            numbered = _TASK_FILE.match(path.name)
            if (directory == layout.staging_dir or _TMP.match(path.name)
                    or (directory == layout.tasks_dir and numbered and int(numbered.group(1)) > last_seq)):
                found.removable.append(path)
            else:
                found.unexpected.append(path)
    return found


def remove_leftovers(layout: HubLayout, source: SourceRow | None, tasks: Iterable[TaskRow]) -> list[Path]:
    """Delete the removable leftovers. The caller must hold the writer lock (and pass fresh rows)."""
    removed = []
    for path in find_leftovers(layout, source, tasks).removable:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    if removed:
        log.warning("snowhub: removed %d leftover file(s) of an interrupted add-task or init from %s",
                    len(removed), layout.root)
    return removed


def clean_if_idle(registry: "Registry") -> list[Path]:  # noqa: F821 (imported lazily: circular)
    """Remove leftovers when there are some and no writer is active; never waits, never fails.

    Called on every open, so that a crash is cleaned up by whatever command runs next.
    """
    from snowhub.store.lock import writer_lock

    try:
        if registry.read_only or not find_leftovers(registry.layout, registry.source(), registry.tasks()).removable:
            return []
        with writer_lock(registry.layout, wait=False):
            # Look again under the lock: a writer may have committed (or started) in between.
            return remove_leftovers(registry.layout, registry.source(), registry.tasks())
    except (HubLockedError, SnowhubError, OSError):
        return []  # a writer is active, or the hub cannot be written: the next writer cleans up
