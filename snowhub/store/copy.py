"""Moving a hub's registry to another database (``snowhub registry copy --to URL``), e.g. SQLite to PostgreSQL.

The copy is verbatim: every row keeps its values, its ``created_at`` and its seal, the lifecycle events
(schema 0007) and the keys trusted to sign bundles (schema 0006) included; the copy then records one more
event there, ``registry_copied`` (from where). Seals hash typed values
(:mod:`snowhub.store.integrity`), so each copied seal must hold on the other side as it is; the copy is
verified there (every seal, every record equal to the original, every file's sha256) before it is kept.
The original registry and the hub's files are only read: the original must already be at this snowhub's
schema (it is not migrated) and sound (a record whose seal does not hold, or a file that does not match its
sha256, stops the copy before anything is written). On any failure the new database is emptied again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

from snowhub.errors import IntegrityError
from snowhub.store.files import sha256_file
from snowhub.store.interface import RegistryStore
from snowhub.store.opening import create, discard
from snowhub.store.records import SourceRecord, TaskRecord
from snowhub.store.registry import Registry
from snowhub.store.trust import trusted_keys


@dataclass
class CopyReport:
    """What :func:`copy_registry` copied and verified.

    Attributes:
        hub: the hub directory both registries refer to.
        source_url, target_url: the registries (passwords hidden).
        tasks: tasks copied. seals: seals verified on the other side. files: files whose sha256 was checked.
        events: lifecycle events copied (the ``registry_copied`` one recorded after them not counted).
        keys: keys trusted to sign task bundles (``snowhub trust``) copied.
    """

    hub: str
    source_url: str
    target_url: str
    tasks: int
    seals: int
    files: int
    events: int = 0
    keys: int = 0


def _files(registry: RegistryStore, source: SourceRecord, tasks: list[TaskRecord]) -> int:
    checked = 0
    pairs = [(source.weights_file, source.weights_file_sha256)]
    pairs += [p for t in tasks for p in ((t.weights_file, t.weights_file_sha256), (t.probe_file, t.probe_file_sha256))]
    for relative, expected in pairs:
        path = registry.layout.resolve(relative)
        try:
            actual = sha256_file(path)
        except OSError as error:
            raise IntegrityError(f"{path} cannot be read ({error.strerror}); nothing was copied: run `snowhub "
                                 "doctor`") from None
        if actual != expected:
            raise IntegrityError(f"{path} does not match its recorded sha256; nothing was copied: run "
                                 "`snowhub doctor` (and `snowhub verify-forgetting`)")
        checked += 1
    return checked


def copy_registry(root: Path | None, to: str | URL, source_url: str | URL | None = None) -> CopyReport:
    """Copy the registry of the hub at `root` (at `source_url`, default its ``hub.db``) into the empty database `to`.

    Raises:
        HubVersionError: the original is at an older schema (open it once to upgrade it) or a newer one.
        IntegrityError: a record or file of the original does not verify, or the copy does not (then nothing
            is kept in `to`).
        HubExistsError, NotARegistryError: `to` is not empty. SnowhubError: `to` cannot be reached.
    """
    with Registry.open(root, source_url, migrate=False) as original:
        if problems := original.audit().problems():
            raise IntegrityError(f"{original.location} has records whose seal does not hold ({problems[0]}); nothing "
                                 "was copied: run `snowhub doctor`")
        source, tasks, events, keys = original.source(), original.tasks(), original.raw_events(), original.raw_keys()
        files = _files(original, source, tasks)
        target = create(Registry, original.layout.root, to, adopt=True)
        try:
            target.copy_in(source, tasks, events, keys)
            if problems := target.audit().problems():
                raise IntegrityError(f"the copy in {target.location} does not verify ({problems[0]}); nothing was kept")
            copied_source, copied = target.source(), target.tasks()
            if dataclasses.asdict(copied_source) != dataclasses.asdict(source) or \
                    [dataclasses.asdict(t) for t in copied] != [dataclasses.asdict(t) for t in tasks] or \
                    target.events() != original.events() or trusted_keys(target) != trusted_keys(original):
                raise IntegrityError(f"the copy in {target.location} reads back different records; nothing was kept")
            _files(target, copied_source, copied)
            target.append_event("registry_copied", None, None, {"from": original.url, "to": target.url})
        except BaseException:
            discard(target)
            raise
        report = CopyReport(str(original.layout.root), original.url, target.url, len(copied),
                            1 + len(copied) + len(events) + len(keys), files, len(events), len(keys))
        target.close()
    return report
