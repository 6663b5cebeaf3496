"""Finding and removing what a crashed writer left in a hub.

A writer only creates files while it holds the writer lock, each under a temporary name first
(``.<name>.<16 hex>.tmp``). Before an add-task writes its task files it records an *intent*
(``staging/NNNN.intent.json``: the ``seq`` it is about to commit and the files it will create), and it
removes the intent once the registry row is committed. So, with the lock free, these are provably
leftovers and are removed:

* temporary files in ``source/``, ``tasks/`` and ``staging/``, and anything else in ``staging/``;
* the files listed by an intent whose ``seq`` was never committed (and stale intents themselves).

Any other file that no registry row refers to is *unexpected* -- e.g. a task file whose row was deleted
from the registry: it is reported by ``snowhub doctor`` but never deleted, since it may be the only copy
of a task.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from snowhub.errors import HubLockedError, SnowhubError
from snowhub.store.files import HubLayout, atomic_write, write_error
from snowhub.store.lock import writer_lock
from snowhub.store.records import SourceRecord, TaskRecord

if TYPE_CHECKING:
    from snowhub.store.interface import RegistryStore
    from snowhub.store.registry import Registry

log = logging.getLogger("snowhub")

_TMP = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")
_INTENT = re.compile(r"^(\d+)\.intent\.json$")


@dataclass
class Leftovers:
    """Files of a hub that no committed registry row refers to.

    Attributes:
        removable: leftovers of an interrupted writer (see the module docstring); safe to delete.
        unexpected: other unreferenced files; kept and reported.
    """

    removable: list[Path] = field(default_factory=list)
    unexpected: list[Path] = field(default_factory=list)


def _intent_path(layout: HubLayout, seq: int) -> Path:
    return layout.staging_dir / f"{seq:04d}.intent.json"


def write_intent(layout: HubLayout, seq: int, name: str, files: Iterable[Path]) -> None:
    """Record, durably, that task `seq` is about to create `files` (call under the writer lock)."""
    path, files = _intent_path(layout, seq), list(files)
    for file in files:
        if file.exists():  # not a leftover (those were removed): perhaps the files of a deleted record
            raise SnowhubError(f"{file} already exists but no registry record refers to it; nothing was "
                               "changed: run `snowhub doctor` and restore hub.db from a backup if it is a task's")
    payload = {"seq": seq, "name": name, "files": [layout.relative(f) for f in files]}
    try:
        layout.staging_dir.mkdir(exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(payload), encoding="utf-8")
    except OSError as exc:
        raise write_error(path, exc) from None


def clear_intent(layout: HubLayout, seq: int) -> None:
    """Drop the intent of task `seq` once its row is committed (best effort: a stale one is harmless)."""
    try:
        _intent_path(layout, seq).unlink(missing_ok=True)
    except OSError:
        pass


def _intent_files(layout: HubLayout, path: Path) -> list[Path]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        files = [layout.resolve(str(f)) for f in payload["files"]]
    except (OSError, ValueError, KeyError, TypeError, SnowhubError):
        return []
    return [f for f in files if f.parent == layout.tasks_dir]  # an intent never names other places


def find_leftovers(layout: HubLayout, source: SourceRecord | None, tasks: Iterable[TaskRecord]) -> Leftovers:
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
    committed = {row.seq for row in tasks}
    abandoned: set[Path] = set()  # files of add-tasks that never committed
    if layout.staging_dir.is_dir():
        for path in layout.staging_dir.iterdir():
            numbered = _INTENT.match(path.name)
            if numbered and int(numbered.group(1)) not in committed and path.is_file():
                abandoned |= set(_intent_files(layout, path))
    found = Leftovers()
    for directory in (layout.source_dir, layout.tasks_dir, layout.staging_dir):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path in known:
                continue
            if path.is_symlink() or not path.is_file():
                found.unexpected.append(path)  # a writer only ever creates regular files
            elif directory == layout.staging_dir or _TMP.match(path.name) or path in abandoned:
                found.removable.append(path)
            else:
                found.unexpected.append(path)
    # Files first, intents last: a crash half-way through cleaning leaves the intent to finish the job.
    found.removable.sort(key=lambda p: p.parent == layout.staging_dir and bool(_INTENT.match(p.name)))
    return found


def remove_leftovers(layout: HubLayout, source: SourceRecord | None, tasks: Iterable[TaskRecord]) -> list[Path]:
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


def _may_have_leftovers(layout: HubLayout) -> bool:
    """Whether a directory listing shows anything removable could exist: a staging entry or a temporary file.

    Removable leftovers are only ever those (an abandoned intent lives in ``staging/`` too).
    """
    if layout.staging_dir.is_dir() and any(layout.staging_dir.iterdir()):
        return True
    return any(_TMP.match(p.name) for d in (layout.source_dir, layout.tasks_dir) if d.is_dir() for p in d.iterdir())


def clean_if_idle(registry: RegistryStore) -> list[Path]:
    """Remove leftovers when there are some and no writer is active; never waits, never fails.

    Called on every open, so that a crash is cleaned up by whatever command runs next.
    """
    try:
        if registry.read_only or not _may_have_leftovers(registry.layout):
            return []  # the common case, without reading every record
        if not find_leftovers(registry.layout, registry.source(), registry.tasks()).removable:
            return []
        with writer_lock(registry, wait=False):
            # Look again under the lock: a writer may have committed (or started) in between.
            return remove_leftovers(registry.layout, registry.source(), registry.tasks())
    except (HubLockedError, SnowhubError, OSError):
        return []  # a writer is active, or the hub cannot be written: the next writer cleans up


def remove_new_hub(layout: HubLayout, created_dir: bool, registry: Registry | None = None) -> None:
    """Undo a failed ``init``: remove exactly what it created (the registry with SQLite's side files, the
    lock, the hub's directories and, if `created_dir`, the hub directory itself when left empty).

    With the new `registry` (closed here) a registry outside the hub directory is emptied too.
    """
    if registry is not None:
        from snowhub.store.opening import discard

        try:
            discard(registry)
        except SnowhubError:
            pass  # the server went away: its tables stay, and a second `init` says so
    for path in (layout.db_path, Path(f"{layout.db_path}-wal"), Path(f"{layout.db_path}-shm"), layout.lock_path):
        path.unlink(missing_ok=True)
    for directory in (layout.staging_dir, layout.tasks_dir, layout.source_dir):
        for child in directory.glob("*") if directory.is_dir() else []:
            child.unlink()
        if directory.is_dir():
            directory.rmdir()
    if created_dir and layout.root.is_dir() and not any(layout.root.iterdir()):
        layout.root.rmdir()
