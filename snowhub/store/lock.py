"""The hub's writer lock: one writing snowhub process per hub at a time.

Readers (serving, listing) never take it; SQLite WAL lets them read while a writer works. The lock is an
``fcntl.flock`` on ``hub.lock``, so the kernel releases it when the holder exits, even on a crash; the
file is never deleted (deleting a flock'd file lets two processes "hold" two different files).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from snowhub.errors import HubLockedError, HubNotFoundError
from snowhub.store.files import HubLayout

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


@contextmanager
def writer_lock(layout: HubLayout, wait: bool = True, timeout: float | None = None) -> Iterator[None]:
    """Hold the hub's exclusive writer lock for the ``with`` block.

    ``wait=False``: fail at once if another process holds it. ``wait=True``: block, for at most
    ``timeout`` seconds if given (``None`` = forever). The lock is not re-entrant: taking it again in the
    same process (even the same thread) waits for itself.

    Raises :class:`~snowhub.errors.HubLockedError` when the lock is held elsewhere and we do not (or no
    longer) wait, and :class:`~snowhub.errors.HubNotFoundError` if the hub directory does not exist.
    """
    try:
        fd = os.open(layout.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except (FileNotFoundError, NotADirectoryError):
        raise HubNotFoundError(
            f"no snowhub hub at {layout.root}; create one with `snowhub init --source NAME`"
        ) from None
    try:
        acquired = _try_lock(fd)
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
