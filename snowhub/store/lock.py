"""The hub's writer lock: one writing snowhub process per hub at a time.

Readers (serving, listing) never take it; the registry's own transactions let them read while a writer
works. Which lock depends on where the registry lives (:meth:`snowhub.store.Registry.writer_lock`): with
SQLite it is an ``fcntl.flock`` on ``hub.lock`` (:func:`file_lock`), so the kernel releases it when the
holder exits, even on a crash; the file is never deleted (deleting a flock'd file lets two processes "hold"
two different files). With PostgreSQL it is an advisory lock on the server (:mod:`snowhub.store.postgresql`),
which serialises writers on every machine.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from snowhub.errors import HubLockedError, HubNotFoundError, HubReadOnlyError
from snowhub.store.files import HubLayout

if TYPE_CHECKING:
    from snowhub.progress import Progress

_POLL_S = 0.05


def _holder(fd: int) -> str:
    raw = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    # Empty while the holder is between flock() and writing its pid, or after it released.
    return f"pid {raw}" if raw.isdigit() else "pid unknown"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_holder(target: Any) -> str | None:
    """Who holds the writer lock of `target` (a Registry, or a HubLayout: its file lock) right now, or None.

    ``"pid N"`` for the file lock, ``"pid N on HOST"`` for PostgreSQL's advisory lock. Never waits.
    """
    if isinstance(target, HubLayout):
        return file_lock_holder(target)
    return target.lock_holder()


def writer_lock(target: Any, wait: bool = True, timeout: float | None = None,
                progress: Progress | None = None):
    """Hold the writer lock of `target` for the ``with`` block (see :func:`file_lock` for the arguments).

    `target` is the hub's open :class:`~snowhub.store.Registry` (the lock its database calls for: the
    file lock with SQLite, an advisory lock with PostgreSQL), or a :class:`HubLayout` (the file lock only).
    """
    if isinstance(target, HubLayout):
        return file_lock(target, wait, timeout, progress)
    return target.writer_lock(wait, timeout, progress)


def file_lock_holder(layout: HubLayout) -> str | None:
    """Who holds the hub's file lock right now (``"pid N"``), or None if nobody does. Never waits."""
    try:
        fd = os.open(layout.lock_path, os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody ever wrote, or the hub is not readable (reported elsewhere)
    try:
        if _try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _holder(fd)
    finally:
        os.close(fd)


@contextmanager
def file_lock(layout: HubLayout, wait: bool = True, timeout: float | None = None,
              progress: Progress | None = None) -> Iterator[None]:
    """Hold the hub's exclusive file lock (``hub.lock``) for the ``with`` block.

    ``wait=False``: fail at once if another process holds it. ``wait=True``: block, for at most
    ``timeout`` seconds if given (``None`` = forever); if it has to wait, `progress` (when given) prints
    who holds the lock and shows a "waiting" phase until it is ours. The lock is not re-entrant: taking it
    again in the same process (even the same thread) waits for itself.

    Raises :class:`~snowhub.errors.HubLockedError` when the lock is held elsewhere and we do not (or no
    longer) wait, :class:`~snowhub.errors.HubNotFoundError` if the hub directory does not exist, and
    :class:`~snowhub.errors.HubReadOnlyError` if the hub cannot be written.
    """
    try:
        fd = os.open(layout.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except (FileNotFoundError, NotADirectoryError):
        raise HubNotFoundError(
            f"no snowhub hub at {layout.root}; create one with `snowhub init --source NAME`"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise HubReadOnlyError(
            f"the hub at {layout.root} is read-only ({exc.strerror}); make it writable to change it"
        ) from None
    try:
        acquired = _try_lock(fd)
        if not acquired and wait and progress is not None:
            progress.start("waiting for the writer lock", None)
            progress.finish(f"waiting: another snowhub process ({_holder(fd)}) is writing to {layout.root}; "
                            "continuing when it is done (Ctrl-C to give up)")
            progress.start("waiting for the writer lock", None)
        waited = not acquired and wait and progress is not None
        if not acquired and wait:
            if timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
                acquired = True
            else:
                deadline = time.monotonic() + timeout
                while not (acquired := _try_lock(fd)):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    time.sleep(min(_POLL_S, remaining))
        if waited:
            progress.finish()
        if not acquired:
            raise HubLockedError(
                f"another snowhub process is writing to {layout.root} ({_holder(fd)}); wait for it or retry"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            # Clear our pid while still holding the lock, so we never erase the next holder's.
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
