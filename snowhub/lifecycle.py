"""The :class:`~snowhub.Hub` methods of a task's life: references, aliases, retiring, tags, descriptions, history.

A mixin of the facade (``docs/lifecycle.md``): each method is one sealed, append-only event in the registry
(:mod:`snowhub.store.lifecycle`), checked against the state the earlier events give, in one transaction.
None of them takes the hub's writer lock (an alias can move while a task trains).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from snowhub.store.lifecycle import parse_tag
from snowhub.store.records import EventRecord, TaskRecord

if TYPE_CHECKING:
    from snowhub.store import RegistryStore


class LifecycleMethods:
    """What :class:`snowhub.Hub` adds for a task's life (it provides ``self.registry``)."""

    registry: RegistryStore

    def resolve(self, reference: str, retired: bool = False) -> TaskRecord:
        """The task row `reference` names now: ``birds`` (the version alias ``production`` points to if set,
        else the latest version not retired), ``birds@2`` (pinned) or ``birds@staging`` (an alias).
        `retired` True lets ``NAME@VERSION`` name a retired version.

        Raises:
            InvalidNameError: a malformed reference. TaskNotFoundError: no such task, version or alias, a
            retired version, or every version retired. IntegrityError: the lifecycle events were tampered with.
        """
        return self.registry.resolve(reference, retired)

    def set_alias(self, name: str, alias: str, version: int) -> EventRecord:
        """Point `alias` (e.g. ``production``, ``staging``) of task `name` at `version`, moving it if it is set.

        Raises:
            InvalidNameError: `alias` not 1-64 letters, digits, ``_`` or ``-`` starting with a letter, or `name`
            holding ``@``. TaskNotFoundError: no such task or version, or the version is retired.
            HubReadOnlyError: the registry cannot be written.
        """
        return self.registry.set_alias(name, alias, int(version))

    def delete_alias(self, name: str, alias: str) -> EventRecord:
        """Remove `alias` of task `name` (TaskNotFoundError when it is not set)."""
        return self.registry.delete_alias(name, alias)

    def retire(self, reference: str) -> EventRecord:
        """Take ``NAME@VERSION`` out of service: not served, not predicted, listed only with ``all``; its row and
        files stay, and :meth:`verify_forgetting` still checks it.

        Raises:
            InvalidNameError: no version given. TaskNotFoundError: no such version. ConfigError: retired
            already, or an alias points to it.
        """
        return self.registry.retire(reference)

    def restore(self, reference: str) -> EventRecord:
        """Put the retired ``NAME@VERSION`` back in service (ConfigError when it is not retired)."""
        return self.registry.restore(reference)

    def tag(self, name: str, tag: str) -> EventRecord:
        """Set ``KEY=VALUE`` on task `name` (all its versions); ``KEY=`` removes the tag.

        Raises:
            ConfigError: `tag` without ``=``, or a bad key or value. TaskNotFoundError, InvalidNameError.
        """
        return self.registry.tag(name, tag)

    def describe(self, name: str, description: str) -> EventRecord:
        """Set the description of task `name` (ConfigError over 4,000 characters; TaskNotFoundError)."""
        return self.registry.describe(name, description)

    def history(self, name: str | None = None) -> list[EventRecord]:
        """Every event in the order it was recorded (of task `name` only, if given): added, version, alias
        set or deleted, retired, restored, tagged, described, evaluated, imported, registry copied; each with
        its time, user and host, and ``problem`` set on one that cannot be trusted (see ``doctor``).

        Raises:
            TaskNotFoundError: `name` given, but no task of that name.
        """
        name = None if name is None else name.partition("@")[0]  # a task's history is every version's
        if name is not None and not self.registry.has_task(name):
            self.registry.resolve(name)  # raises, naming the known tasks
        return self.registry.events(name)


def matches_tags(tags: dict[str, str], wanted: list[str]) -> bool:
    """Whether `tags` hold every ``KEY=VALUE`` in `wanted` (ConfigError for one without ``=``)."""
    return all(tags.get(key) == value for key, value in map(parse_tag, wanted))
