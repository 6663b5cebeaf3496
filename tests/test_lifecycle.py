"""A task's life (issue 26, docs/lifecycle.md): versions, references, aliases, retiring, tags, descriptions and
history, end to end through the command line on copies of the session hub on SQLite and PostgreSQL; two
processes moving one alias at once; an edited or deleted event caught; bad input refused in one line with
nothing written."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3

import pytest
from typer.testing import CliRunner

from fixtures.hubkit import FAST_ARGS, assert_one_line_error, cached_training
from registry_helpers import pg
from snowhub.errors import IntegrityError
from snowhub.store import Registry
from snowhub.store.references import TaskReference, parse_reference
from snowhub_cli.main import app
from test_registry_postgres import new_registry, task_record


def _cli(hub, *args: str, ok: bool = True):
    result = CliRunner().invoke(app, [*map(str, args), *hub.cli_args])
    if ok:
        assert result.exit_code == 0, result.stderr
    return result


def _json(hub, *args: str):
    return json.loads(_cli(hub, *args, "--json").stdout)


def _refused(hub, contains: str, *args: str) -> None:
    """One error line, and nothing in the hub or its registry changed."""
    before = hub.snapshot()
    assert_one_line_error(_cli(hub, *args, ok=False), contains)
    assert hub.snapshot() == before


def test_a_tasks_whole_life_through_the_command_line(registry_hub, fashion_dir, monkeypatch):
    import snowhub.hub as hub_module

    monkeypatch.setattr(hub_module, "train_delta", cached_training)  # the real delta of a real (short) training
    hub = registry_hub
    first = _json(hub, "show", "fashion@1")
    _refused(hub, "already exists", "add-task", "fashion", "--data", fashion_dir, *FAST_ARGS)
    _refused(hub, "no task named 'birds' to add a version to", "add-task", "birds", "--data", fashion_dir,
             "--new-version", *FAST_ARGS)
    added = _json(hub, "add-task", "fashion", "--data", fashion_dir, "--new-version", *FAST_ARGS)
    assert (added["name"], added["version"], added["seq"]) == ("fashion", 2, 3)
    assert {k: v for k, v in _json(hub, "show", "fashion@1").items() if k != "versions"} == \
        {k: v for k, v in first.items() if k != "versions"}  # version 1 stays as it was
    assert _json(hub, "show", "fashion")["version"] == 2  # a bare name: the latest active version

    _cli(hub, "alias", "set", "fashion", "production", "1")
    assert _json(hub, "show", "fashion")["version"] == 1 and _json(hub, "show", "fashion@2")["version"] == 2
    _cli(hub, "alias", "set", "fashion", "staging", "2")
    assert _json(hub, "show", "fashion@staging")["version"] == 2
    _refused(hub, "alias 'production' of 'fashion' points to version 1", "retire", "fashion@1")
    _cli(hub, "alias", "set", "fashion", "production", "2")
    _cli(hub, "retire", "fashion@1")
    _refused(hub, "fashion@1 is retired already", "retire", "fashion@1")
    _refused(hub, "fashion@1 is retired", "alias", "set", "fashion", "canary", "1")
    _refused(hub, "has no version 7", "alias", "set", "fashion", "canary", "7")
    _refused(hub, "without '@'", "alias", "set", "fashion@2", "canary", "2")
    _refused(hub, "invalid alias 'can@ry'", "alias", "set", "fashion", "can@ry", "2")
    _refused(hub, "invalid task name", "add-task", "fa@shion", "--data", fashion_dir, *FAST_ARGS)
    _refused(hub, "give the version to retire", "retire", "fashion")
    assert [(t["name"], t["version"]) for t in _json(hub, "list")["tasks"]] == \
        [("imagenet", 1), ("fashion2", 1), ("fashion", 2)]
    listed = {(t["name"], t["version"]): t for t in _json(hub, "list", "--all")["tasks"]}
    assert listed["fashion", 1]["retired"] and listed["fashion", 2]["aliases"] == ["production", "staging"]
    checked = _json(hub, "verify-forgetting", "--device", "cpu")  # a retired version is still checked
    assert [(t["name"], t["version"], t["verdict"]) for t in checked["tasks"]] == \
        [("fashion", 1, "bit-identical"), ("fashion2", 1, "bit-identical"), ("fashion", 2, "bit-identical")]

    _cli(hub, "tag", "fashion", "team=vision", "stage=beta")
    _refused(hub, "has no '='", "tag", "fashion2", "team")
    _cli(hub, "describe", "fashion", "Fashion-MNIST, three classes")
    assert [(t["name"], t["version"]) for t in _json(hub, "list", "--tag", "team=vision")["tasks"]] == [("fashion", 2)]
    shown = _json(hub, "show", "fashion")
    assert shown["tags"] == {"stage": "beta", "team": "vision"} and shown["description"].startswith("Fashion-MNIST")
    assert [(v["version"], v["retired"]) for v in shown["versions"]] == [(1, True), (2, False)]
    _cli(hub, "restore", "fashion@1")
    _refused(hub, "is not retired", "restore", "fashion@1")

    events = _json(hub, "history", "fashion")
    assert [e["kind"] for e in events] == ["added", "version", "alias_set", "alias_set", "alias_set", "retired",
                                           "tagged", "tagged", "described", "restored"]
    assert all(e["user"] and e["host"] and e["at"] for e in events)
    if hub.url is not None:  # the copy into PostgreSQL carried the events and recorded itself
        assert _json(hub, "history")[-1]["kind"] == "restored"
        assert "registry_copied" in [e["kind"] for e in _json(hub, "history")]
    assert json.loads(_cli(hub, "doctor", "--json").stdout)["ok"]

    hub.execute("UPDATE task_event SET payload = replace(payload, '\"production\"', '\"canary\"') "
                "WHERE kind = 'alias_set' AND version = 2")  # an edited event, behind snowhub's back
    doctor = CliRunner().invoke(app, ["doctor", "--json", *hub.cli_args])
    assert doctor.exit_code == 2
    assert any("(alias_set): the record was changed" in p for p in json.loads(doctor.stdout)["problems"])
    assert_one_line_error(_cli(hub, "show", "fashion", ok=False), "cannot be trusted")


def _move(url: str | None, root: str, version: int, times: int, start) -> None:
    """One of two processes: point alias production of 'a' at `version`, `times` times."""
    start.wait()
    with Registry.open(root, url) as registry:
        for _ in range(times):
            registry.set_alias("a", "production", version)


def test_two_processes_moving_one_alias_are_both_recorded_and_the_last_wins(registry_url, tmp_path):
    with new_registry(tmp_path / "hub", registry_url) as registry:
        registry.add_task(task_record("a"))
        registry.add_task(task_record("a"), new_version=True)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    workers = [context.Process(target=_move, args=(registry_url, str(tmp_path / "hub"), v, 10, start)) for v in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(240)
        assert worker.exitcode == 0
    with Registry.open(tmp_path / "hub", registry_url) as registry:
        moves = [e for e in registry.events() if e.kind == "alias_set"]
        assert sorted(e.version for e in moves) == [1] * 10 + [2] * 10  # every move recorded
        assert [e.id for e in registry.events()] == list(range(1, 23)) and not registry.audit().problems()
        assert registry.resolve("a").version == moves[-1].version  # the last one wins


def test_an_edited_or_deleted_event_is_caught(registry_url, tmp_path):
    with new_registry(tmp_path / "hub", registry_url) as registry:
        registry.add_task(task_record("a"))
        registry.set_alias("a", "production", 1)
        registry.tag("a", "team=vision")
        registry.add_task(task_record("b"))
        assert registry.audit().event_problems() == []

    def tamper(statement: str) -> None:
        if registry_url is None:
            with sqlite3.connect(tmp_path / "hub" / "hub.db") as db:
                db.execute(statement)
            db.close()
        else:
            pg(registry_url, statement)

    tamper("DELETE FROM task_event WHERE id = 4")  # the newest event: the chain still holds, the task row tells
    with Registry.open(tmp_path / "hub", registry_url) as registry:
        assert registry.audit().event_problems() == [
            "task 2 'b': the event that added it is gone (a task_event row was deleted)"]
    tamper("DELETE FROM task_event WHERE id = 2")
    with Registry.open(tmp_path / "hub", registry_url) as registry:
        assert registry.audit().event_problems()[0] == \
            "event 3 (tagged): event 2 before it is gone (ids must run without a gap)"
        with pytest.raises(IntegrityError, match="event 3 .* cannot be trusted"):
            registry.resolve("a")
    tamper("UPDATE task_event SET id = 2, previous_sha256 = NULL WHERE id = 3")  # renumbered to hide the gap
    with Registry.open(tmp_path / "hub", registry_url) as registry:
        assert "event 2 (tagged): the record was changed" in registry.audit().event_problems()[0]


def test_references_parse_one_way():
    assert parse_reference("birds") == TaskReference("birds")
    assert parse_reference("birds@2") == TaskReference("birds", version=2)
    assert parse_reference("birds@staging") == TaskReference("birds", alias="staging")
    for bad in ("birds@", "birds@0", "birds@1@2", "@2", "birds@2x", "birds@st@ging"):
        with pytest.raises(Exception, match="invalid"):
            parse_reference(bad)
