"""Task references, resolved in this one place: ``birds``, ``birds@2``, ``birds@staging``.

* ``birds``: the version alias ``production`` points to when it is set, else the latest version that is not
  retired;
* ``birds@2``: version 2, pinned;
* ``birds@staging``: the version alias ``staging`` points to.

Task and alias names never hold ``@`` (:func:`snowhub.names.check_task_name`, :func:`check_alias_name`), and
an alias starts with a letter, so ``@2`` is always a version and ``@staging`` always an alias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from snowhub.errors import InvalidNameError, TaskNotFoundError
from snowhub.store.events import PRODUCTION, LifecycleState
from snowhub.store.records import TaskRecord

_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
_MAX_LISTED = 20


@dataclass(frozen=True)
class TaskReference:
    """A parsed reference: the task's `name` and at most one of a pinned `version` or an `alias`."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return self.name + (f"@{self.version}" if self.version else f"@{self.alias}" if self.alias else "")


def check_alias_name(alias: str) -> None:
    """Raises InvalidNameError unless `alias` is 1–64 letters, digits, ``_`` or ``-``, starting with a letter."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InvalidNameError(f"invalid alias {alias!r}: use 1-64 letters, digits, '_' or '-', starting with a "
                               "letter (a number after '@' is a version)")


def parse_reference(reference: str) -> TaskReference:
    """``"birds"``, ``"birds@2"`` or ``"birds@staging"`` as a :class:`TaskReference`.

    Raises:
        InvalidNameError: more than one ``@``, nothing after it, a version that is not a positive integer,
            or an alias that is not a valid alias name.
    """
    name, at, rest = str(reference).partition("@")
    if not at:
        return TaskReference(name)
    if not name or "@" in rest or not rest:
        raise InvalidNameError(f"invalid task reference {reference!r}: give NAME, NAME@VERSION or NAME@ALIAS")
    if rest[0].isdigit():
        if not _VERSION.fullmatch(rest):
            raise InvalidNameError(f"invalid version in {reference!r}: versions are 1, 2, …")
        return TaskReference(name, version=int(rest))
    check_alias_name(rest)
    return TaskReference(name, alias=rest)


def _names(names: list[str]) -> str:
    names = list(dict.fromkeys(names))
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", … ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def resolve(records: list[TaskRecord], state: LifecycleState, reference: str | TaskReference,
            retired: bool = False, where: str = "the hub") -> TaskRecord:
    """The task row `reference` names among `records` (every task row, in ``seq`` order) in `state`.

    `retired` True lets a pinned ``NAME@VERSION`` name a retired version (``show``, ``restore``); otherwise
    a retired version is out of service and never resolved.

    Raises:
        InvalidNameError: a malformed reference. TaskNotFoundError: no such task, version or alias, or every
            version retired (one line, naming what there is).
    """
    ref = reference if isinstance(reference, TaskReference) else parse_reference(reference)
    versions = {r.version: r for r in records if r.name == ref.name}
    if not versions:
        if not records:
            raise TaskNotFoundError(f"no task named {ref.name!r}: {where} has no tasks yet; add one with "
                                    "`snowhub add-task`")
        raise TaskNotFoundError(f"no task named {ref.name!r}; known tasks: {_names([r.name for r in records])}")
    listed = ", ".join(str(v) + (" (retired)" if state.is_retired(ref.name, v) else "") for v in sorted(versions))
    if ref.version is not None:
        if ref.version not in versions:
            raise TaskNotFoundError(f"task {ref.name!r} has no version {ref.version}; its versions: {listed}")
        if not retired and state.is_retired(ref.name, ref.version):
            raise TaskNotFoundError(f"{ref} is retired; bring it back with `snowhub restore {ref}`")
        return versions[ref.version]
    aliases = state.aliases_of(ref.name)
    if ref.alias is not None:
        if ref.alias not in aliases:
            known = ", ".join(f"{a} → {v}" for a, v in aliases.items()) or "none"
            raise TaskNotFoundError(f"task {ref.name!r} has no alias {ref.alias!r}; its aliases: {known}")
        return versions[aliases[ref.alias]]
    if PRODUCTION in aliases:
        return versions[aliases[PRODUCTION]]
    active = [v for v in sorted(versions) if not state.is_retired(ref.name, v)]
    if not active:
        raise TaskNotFoundError(f"every version of {ref.name!r} is retired ({listed}); bring one back with "
                                f"`snowhub restore {ref.name}@N`")
    return versions[active[-1]]
