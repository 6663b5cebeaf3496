"""``snowhub alias set|delete``, ``retire``, ``restore``, ``tag``, ``describe`` and ``history``: a task's life
(:mod:`snowhub.lifecycle`, docs/lifecycle.md). Each change is one sealed, append-only event in the registry."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from snowhub import Hub
from snowhub.store.lifecycle import parse_tag
from snowhub.store.records import EventRecord
from snowhub_cli import render
from snowhub_cli.options import HubOption, JsonOption, RegistryOption, one_line_errors

alias = typer.Typer(help="Names that follow a version of a task: NAME@ALIAS; a bare NAME follows 'production'.",
                    no_args_is_help=True)

TaskArgument = Annotated[str, typer.Argument(help="Task name (without @).")]
AliasArgument = Annotated[str, typer.Argument(help="Alias (letters, digits, '_' or '-', starting with a letter), "
                                                   "e.g. production, staging.")]
ReferenceArgument = Annotated[str, typer.Argument(help="The version: NAME@VERSION (e.g. birds@1).")]


def _done(event: EventRecord, as_json: bool, text: str) -> None:
    if as_json:
        render.print_json(event.to_dict())
    else:
        render.line(text)


@alias.command("set")
def set_alias(name: TaskArgument, alias_name: AliasArgument,
              version: Annotated[int, typer.Argument(help="The version it points to (1, 2, …).", min=1)],
              hub: HubOption = None, registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Point ALIAS of a task at VERSION (moving it if it is set); `NAME@ALIAS` then follows it."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        event = h.set_alias(name, alias_name, version)
        moved = f" (was version {event.payload['previous']})" if event.payload.get("previous") else ""
        _done(event, as_json, f"{name}@{alias_name} → version {event.version}{moved}")


@alias.command("delete")
def delete_alias(name: TaskArgument, alias_name: AliasArgument, hub: HubOption = None,
                 registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Remove ALIAS of a task (a bare NAME falls back to the latest active version when 'production' goes)."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        event = h.delete_alias(name, alias_name)
        _done(event, as_json, f"deleted {name}@{alias_name} (it pointed to version {event.version})")


def retire(reference: ReferenceArgument, hub: HubOption = None, registry: RegistryOption = None,
           as_json: JsonOption = False) -> None:
    """Take a version out of service: not served, not predicted, listed only with `list --all`; its files and
    record stay, and verify-forgetting still checks it."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        event = h.retire(reference)
        _done(event, as_json, f"retired {event.task}@{event.version}; `snowhub restore {event.task}@{event.version}` "
                              "brings it back")


def restore(reference: ReferenceArgument, hub: HubOption = None, registry: RegistryOption = None,
            as_json: JsonOption = False) -> None:
    """Put a retired version back in service."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        event = h.restore(reference)
        _done(event, as_json, f"restored {event.task}@{event.version}")


def tag(name: TaskArgument,
        tags: Annotated[list[str], typer.Argument(help="KEY=VALUE (KEY= removes the tag); several at once.")],
        hub: HubOption = None, registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Tag a task (all its versions), e.g. team=vision; `list --tag team=vision` finds it."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        for text in tags:  # every tag checked before the first is written
            parse_tag(text)
        events = [h.tag(name, text) for text in tags]
        if as_json:
            render.print_json([e.to_dict() for e in events])
        for e in [] if as_json else events:
            value = e.payload["value"]
            render.line(f"{name}: {e.payload['key']}={value}" if value is not None else
                        f"{name}: removed tag {e.payload['key']}")


def describe(name: TaskArgument, description: Annotated[str, typer.Argument(help="The text (quote it).")],
             hub: HubOption = None, registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Set a task's description (shown by `show` and `list --json`)."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        _done(h.describe(name, description), as_json, f"{name}: {description}")


def history(name: Annotated[Optional[str], typer.Argument(help="Only this task's events.")] = None,
            hub: HubOption = None, registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Every event in order: added, version, alias set/deleted, retired, restored, tagged, described, evaluated,
    imported, registry copied; with time, user and host. An event that cannot be trusted is marked (!)."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        events = h.history(name)
        if as_json:
            render.print_json([e.to_dict() for e in events])
            return
        if not events:
            render.line("no events recorded yet (hubs made before schema 0007 record them from the upgrade on)")
        for e in events:
            render.line(f"{e.id:>4}  {e.at:%Y-%m-%d %H:%M:%S} UTC  {e.user}@{e.host}  {describe_event(e)}"
                        + ("  (!)" if e.problem else ""))
        for e in events:
            if e.problem:
                render.problem(f"event {e.id} cannot be trusted: {e.problem}; see `snowhub doctor`", "warning")


def describe_event(e: EventRecord) -> str:
    """One event as a short phrase (``alias_set birds@2 production``)."""
    ref = f"{e.task}@{e.version}" if e.version is not None else (e.task or "")
    p = e.payload
    if e.kind in ("alias_set", "alias_deleted"):
        moved = f" (was {p['previous']})" if p.get("previous") else ""
        return f"{e.kind} {e.task}@{p.get('alias')} → {e.version}{moved}"
    if e.kind == "tagged":
        return f"tagged {ref} {p.get('key')}={'' if p.get('value') is None else p.get('value')}"
    if e.kind == "described":
        return f"described {ref}: {p.get('description', '')[:60]}"
    if e.kind == "evaluated":
        top1 = p.get("top1", p.get("metrics", {}).get("top1") if isinstance(p.get("metrics"), dict) else None)
        return f"evaluated {ref}" + (f" top-1 {top1:.2f} %" if isinstance(top1, (int, float)) else "")
    if e.kind == "registry_copied":
        return f"registry copied from {p.get('from')} to {p.get('to')}"
    return f"{e.kind} {ref}" + (f" (task {p['seq']})" if "seq" in p else "")
