"""Files of a hub: layout, hashing, and crash-safe safetensors I/O.

A hub directory looks like::

    <root>/hub.db      registry (SQLite, WAL)
    <root>/hub.lock    writer lock (flock), holds the writer's pid
    <root>/source/     the frozen source model's weights
    <root>/tasks/      one delta (+ probe) per registered task
    <root>/staging/    scratch space; anything in it is a leftover of an interrupted writer

A writer saves each file under a temporary name (``.<name>.<random>.tmp``), fsyncs it, renames it into
place and fsyncs the directory (:func:`atomic_write`, also used for bundles and ONNX exports); the registry
row that refers to it is committed last. Files that no committed row refers to are leftovers of a crashed writer (see :mod:`snowhub.store.recovery`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from snowhub.errors import HubReadOnlyError, HubWriteError, IntegrityError
from snowhub.faults import crash_point

if TYPE_CHECKING:
    import torch

# torch (and safetensors.torch) are imported inside the functions that need them: importing torch takes
# seconds, and registry-only commands (listing tasks, taking the lock) should not pay for it.

_CHUNK = 1 << 20  # 1 MiB


def write_error(path: Path, exc: BaseException) -> HubWriteError:
    """A one-line, actionable error for a failed write of ``path``."""
    if isinstance(exc, OSError):
        code, reason = exc.errno, exc.strerror or str(exc)
    else:  # safetensors: "Error while serializing: I/O error: No space left on device (os error 28)"
        reason = " ".join(str(exc).split()).rsplit("I/O error: ", 1)[-1]
        found = re.search(r"\(os error (\d+)\)", reason)
        code = int(found.group(1)) if found else None
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return HubReadOnlyError(f"cannot write {path} ({reason}); the hub is read-only, make it writable")
    return HubWriteError(f"cannot write {path} ({reason}); free some disk space (or fix the hub's permissions) "
                         "and retry")


def _is_io_error(exc: BaseException) -> bool:
    # safetensors reports its own write failures as SafetensorError("... I/O error: ... (os error N)").
    return isinstance(exc, OSError) or (type(exc).__name__ == "SafetensorError" and "I/O error" in str(exc))


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks. Raises ``FileNotFoundError`` if missing."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_stamp(path: Path | str) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of `path`: what any rewrite of the file changes, read without
    opening it (to tell whether a file verified earlier may have changed). Raises ``OSError`` if missing."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _field(digest: "hashlib._Hash", data: bytes) -> None:
    # Length-prefix every field so that no two different inputs can hash the same concatenation.
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 over every tensor in sorted key order: key, dtype, shape and raw bytes.

    Bytes are taken from a contiguous CPU copy, so the digest does not depend on device or memory layout,
    and two state dicts (parameters *and* buffers such as BatchNorm running stats) have the same digest
    only if they are bit-identical. Raises ``TypeError`` for a key that is not a str or a value that is
    not a tensor.
    """
    import torch

    digest = hashlib.sha256()
    digest.update(b"snowhub.tensor_digest.v1")
    _field(digest, str(len(tensors)).encode())
    for key in sorted(tensors):
        if not isinstance(key, str):
            raise TypeError(f"tensor_digest keys must be str, got {type(key).__name__}")
        tensor = tensors[key]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor_digest value for {key!r} is {type(tensor).__name__}, not a Tensor")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        _field(digest, key.encode())
        _field(digest, str(tensor.dtype).encode())
        _field(digest, repr(tuple(tensor.shape)).encode())
        # view(uint8) reinterprets the bytes of any dtype (bfloat16 included, which numpy lacks).
        _field(digest, flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; without it a crash can forget the new directory entry.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    # A file, or a directory's files (any depth) and then the directories themselves.
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
    _fsync_dir(path)  # os.open(O_RDONLY) + fsync works for a file as for a directory


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: Path | str, *, directory: bool = False, point: str | None = None) -> Iterator[Path]:
    """Create ``path`` (a file, or with ``directory=True`` a directory) atomically: the one way snowhub
    writes a file that must be either whole or absent.

    The ``with`` body writes to the yielded temporary path ``.<name>.<16 hex>.tmp`` beside ``path``
    (created empty and exclusively: a file, or a directory). When the body returns, the temporary is
    fsynced (a directory: every file in it, then itself), renamed over ``path`` with ``os.replace`` and
    ``path.parent`` is fsynced: after a crash ``path`` is the old file or the new one, never a partial
    one. If the body raises (anything, ``KeyboardInterrupt`` included), the temporary is removed and the
    exception propagates. ``path.parent`` must exist; a directory ``path`` may exist only as an empty
    directory (the rename replaces it).

    Args:
        point: the prefix of the crash points (:mod:`snowhub.faults`) ``<point>:before-rename`` and
            ``<point>:after-rename``; None for none.

    Raises:
        OSError: the temporary could not be created, written, fsynced or renamed; callers turn it into
            their own one-line error (:func:`write_error` for the hub's files).
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    if directory:
        tmp.mkdir()
    else:  # O_EXCL: never clobber someone else's file; mode 0o666 lets the umask decide, as for open().
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync_tree(tmp)
        if point:
            crash_point(f"{point}:before-rename")
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    if point:
        crash_point(f"{point}:after-rename")
    _fsync_dir(path.parent)


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> str:
    """Write ``tensors`` to ``path`` as safetensors with :func:`atomic_write` and return the file's hex
    sha256.

    On any exception the temporary file is removed and the exception is re-raised (safetensors raises
    e.g. for non-contiguous or memory-sharing tensors); a failed write (disk full, read-only, I/O error)
    becomes :class:`HubWriteError`. ``path.parent`` must exist. Crash points: ``save:mid-write``,
    ``save:before-rename``, ``save:after-rename``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    try:
        with atomic_write(path, point="save") as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
            crash_point("save:mid-write", before=lambda: os.truncate(tmp, os.path.getsize(tmp) // 2))
            sha = sha256_file(tmp)
    except BaseException as exc:
        if _is_io_error(exc):
            raise write_error(path, exc) from None
        raise
    return sha


def load_safetensors_verified(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU after checking it against its recorded sha256.

    The file is read once and the same bytes are hashed and parsed, so it cannot change in between.
    Raises :class:`~snowhub.errors.IntegrityError` if the file is missing or its sha256 differs.
    """
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(
            f"{path} is missing from the hub; restore the hub directory from a backup, "
            "then run `snowhub verify-forgetting`"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise IntegrityError(
            f"{path} does not match its recorded sha256 (expected {expected_sha256[:12]}…, "
            f"found {actual[:12]}…); run `snowhub verify-forgetting`"
        )
    return load(data)


@dataclass(frozen=True)
class HubLayout:
    """Where a hub keeps its files. Only ``root`` is given; the other paths derive from it."""

    root: Path
    db_path: Path = field(init=False)
    source_dir: Path = field(init=False)
    tasks_dir: Path = field(init=False)
    staging_dir: Path = field(init=False)
    lock_path: Path = field(init=False)

    def __post_init__(self) -> None:
        # absolute() (not resolve()): keep symlinks the user chose, but stop depending on the cwd.
        root = Path(self.root).expanduser().absolute()
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "db_path", root / "hub.db")
        object.__setattr__(self, "source_dir", root / "source")
        object.__setattr__(self, "tasks_dir", root / "tasks")
        object.__setattr__(self, "staging_dir", root / "staging")
        object.__setattr__(self, "lock_path", root / "hub.lock")

    def relative(self, path: Path) -> str:
        """``path`` (inside the hub) as the POSIX relative string stored in the registry.

        Raises ``ValueError`` if ``path`` is outside the hub directory.
        """
        return Path(path).absolute().relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        """The absolute path of a file recorded in the registry (relative to the hub).

        Raises :class:`~snowhub.errors.IntegrityError` if the recorded path is absolute or leaves the hub
        (``..``), which only a tampered registry can contain.
        """
        rel = PurePosixPath(relative)
        if rel.is_absolute() or ".." in rel.parts:
            raise IntegrityError(
                f"the registry of {self.root} records a path outside the hub ({relative!r}); "
                "restore hub.db from a backup"
            )
        return self.root.joinpath(*rel.parts)
