"""Faults injected into add-task in this process: failures at every write point, interrupts, crash
leftovers, a full disk, a busy registry and the writer lock.

The SIGKILL matrix (a real process killed at every crash point) is in ``tests/stress/test_crash.py``;
here each fault is raised as an exception at the same named points, which is fast enough to run always.
The add-task faults run on both registries (`registry_hub`: SQLite, and a PostgreSQL copy of the same hub); the
file lock and SQLite's busy timeout are SQLite's own (tests/test_registry_postgres.py has the advisory lock).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sqlite3
import sys
import threading
import time

import pytest
import torch
from sqlalchemy import exc as sa_exc

import snowhub.faults as faults
import snowhub.hub as hub_module
from conftest import FAST
from fixtures.hubkit import (assert_one_line_error, cached_training, file_size_limit, small_dataset, snapshot, sql,
                             task_names)
from snowhub import Hub, SnowhubError, TrainConfig
from snowhub.checks import check_hub
from snowhub.errors import HubLockedError
from snowhub.store import HubLayout, HubWriteError, Registry, writer_lock


def _modules_with_crash_points() -> list[object]:
    """Every loaded snowhub module that calls a crash point: each imports the function by name, so each
    name is patched (found, not listed, so a new module with a crash point is never missed; one not yet
    imported when a test patches shows up as a point never passed in the test below)."""
    return [m for name, m in sorted(sys.modules.items())
            if name.startswith("snowhub.") and name != "snowhub.faults"
            and getattr(m, "crash_point", None) is faults.crash_point]


@pytest.fixture
def cached(monkeypatch):
    """Training replaced by a copy of one real training result (the files written are still real)."""
    monkeypatch.setattr(hub_module, "train_delta", cached_training)


def raise_at(monkeypatch, point: str, error: BaseException, hit: int = 1) -> list[str]:
    """Make crash point `point` raise `error` on its `hit`-th pass; returns the points passed, in order."""
    passed: list[str] = []

    def fake(name, before=None):
        passed.append(name)
        if name == point and passed.count(name) == hit:
            if before is not None:
                before()
            raise error

    for module in _modules_with_crash_points():
        monkeypatch.setattr(module, "crash_point", fake)
    return passed


def leftovers(hub) -> list[str]:
    return sorted(p.relative_to(hub).as_posix() for d in ("tasks", "staging", "source") for p in (hub / d).iterdir()
                  if not p.name.endswith(".safetensors") or p.name.startswith("."))


# -- the fault-injection hook itself ---------------------------------------------------------------------


def test_crash_point_spec_and_hit_counting(monkeypatch):
    kills = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.crash_point("add-task:start")
    assert kills == []  # unset: never fires
    monkeypatch.setenv(faults.ENV, "add-task:start, load-image:3, registry:after-commit=SIGINT")
    monkeypatch.setattr(faults, "_hits", {})
    faults.crash_point("add-task:locked")
    faults.crash_point("add-task:start")
    for _ in range(4):
        faults.crash_point("load-image")
    faults.crash_point("registry:after-commit")
    assert kills == [(os.getpid(), signal.SIGKILL), (os.getpid(), signal.SIGKILL), (os.getpid(), signal.SIGINT)]
    assert set(faults.POINTS) >= {"load-image", "registry:after-commit", "save:mid-write"}


def test_every_crash_point_is_on_the_add_task_path(hub_copy, tmp_path, monkeypatch):
    """Each named point is really passed by one add-task, so the SIGKILL matrix tests what it says."""
    data = small_dataset(tmp_path / "data", per_class=12)
    monkeypatch.setenv(faults.ENV, "no-such-point")  # fault injection on: every point is traced
    passed = raise_at(monkeypatch, "never", RuntimeError())
    monkeypatch.setattr(faults, "crash_point", lambda name, before=None: passed.append(name))
    with Hub.open(hub_copy) as hub:
        hub.add_task("third", data, TrainConfig(**(FAST | {"epochs": 2})))  # which points, not how often
    assert set(passed) == set(faults.POINTS)
    assert passed.count("save:after-rename") == 2 and passed.count("load-image") > 30
    assert passed.count("train-step") >= 3
    order = [p for p in dict.fromkeys(passed) if p not in ("load-image", "train-step")]
    assert order == [p for p in faults.POINTS if p not in ("load-image", "train-step")]


# -- a failure at each write point leaves the hub exactly as it was -------------------------------------

_DISK_FULL = "the registry's disk is full"  # the error each database's driver raises then: _disk_full()


def _disk_full(dialect: str) -> sa_exc.OperationalError:
    if dialect == "sqlite":
        return sa_exc.OperationalError("INSERT INTO task", {}, sqlite3.OperationalError("database or disk is full"))
    import psycopg

    return sa_exc.OperationalError("INSERT INTO task", {}, psycopg.errors.DiskFull(
        'could not extend file "base/16384/16390": No space left on device'))


@pytest.mark.parametrize(("point", "hit", "error", "raised"), [
    ("add-task:locked", 1, RuntimeError("boom"), RuntimeError),
    ("add-task:trained", 1, KeyboardInterrupt(), KeyboardInterrupt),
    ("save:mid-write", 1, OSError(errno.ENOSPC, "No space left on device"), HubWriteError),
    ("save:before-rename", 2, OSError(errno.EIO, "Input/output error"), HubWriteError),
    ("save:after-rename", 1, KeyboardInterrupt(), KeyboardInterrupt),
    ("save:after-rename", 2, RuntimeError("boom"), RuntimeError),
    ("add-task:files-written", 1, KeyboardInterrupt(), KeyboardInterrupt),
    ("registry:before-commit", 1, _DISK_FULL, HubWriteError),
    ("registry:before-commit", 1, KeyboardInterrupt(), KeyboardInterrupt),
], ids=lambda v: v if isinstance(v, str) else None)
def test_failure_at_each_write_point_leaves_the_hub_unchanged(registry_hub, fashion_dir, monkeypatch, cached,
                                                              point, hit, error, raised):
    before = registry_hub.snapshot()
    raise_at(monkeypatch, point, _disk_full(registry_hub.dialect) if error == _DISK_FULL else error, hit)
    with registry_hub.open() as hub:
        with pytest.raises(raised) as caught:
            hub.add_task("third", fashion_dir, TrainConfig(**FAST))
        if isinstance(caught.value, SnowhubError):
            message = str(caught.value)
            on_server = point.startswith("registry:") and registry_hub.dialect == "postgresql"  # else the hub's disk
            advice = "free space on the server" if on_server else "free some disk space"
            assert "\n" not in message and advice in message
        assert [t.name for t in hub.tasks()] == ["imagenet", "fashion", "fashion2"]
    assert registry_hub.snapshot() == before
    assert leftovers(registry_hub.path) == []


def test_an_interrupt_right_after_the_commit_keeps_the_task(registry_hub, fashion_dir, monkeypatch, cached):
    """Ctrl-C between the commit and add-task's return must not delete the files of a registered task."""
    raise_at(monkeypatch, "registry:after-commit", KeyboardInterrupt())
    with registry_hub.open() as hub:
        with pytest.raises(KeyboardInterrupt):
            hub.add_task("third", fashion_dir, TrainConfig(**FAST))
    monkeypatch.undo()
    with registry_hub.open() as hub:
        assert [t.name for t in hub.tasks()] == ["imagenet", "fashion", "fashion2", "third"]
        row = hub.registry.get_task("third")
        artifacts = hub.artifacts(torch.device("cpu"))
        artifacts.delta(row), artifacts.probe(row)  # both files there and verified
    assert check_hub(registry_hub.path, registry_hub.url).ok and leftovers(registry_hub.path) == []


# -- what a crash leaves is removed on the next open, and only that --------------------------------------


def _fake_crash_leftovers(hub) -> list[str]:
    """What a writer killed between writing its files and committing leaves (see snowhub.store.recovery)."""
    delta = hub / "tasks" / "0001-fashion.delta.safetensors"
    (hub / "tasks" / "0003-third.delta.safetensors").write_bytes(delta.read_bytes())
    (hub / "tasks" / ".0003-third.probe.safetensors.0123456789abcdef.tmp").write_bytes(b"half a file")
    (hub / "source" / ".efficientnet_lite0.safetensors.fedcba9876543210.tmp").write_bytes(b"")
    (hub / "staging" / "0003.intent.json").write_text(
        '{"seq": 3, "name": "third", "files": ["tasks/0003-third.delta.safetensors",'
        ' "tasks/0003-third.probe.safetensors"]}')
    return ["source/.efficientnet_lite0.safetensors.fedcba9876543210.tmp", "staging/0003.intent.json",
            "tasks/.0003-third.probe.safetensors.0123456789abcdef.tmp", "tasks/0003-third.delta.safetensors"]


def test_the_next_open_removes_crash_leftovers_and_says_so(registry_hub, caplog):
    expected = _fake_crash_leftovers(registry_hub.path)
    report = check_hub(registry_hub.path, registry_hub.url)  # the doctor reports them without touching them
    assert report.ok and len(report.warnings) == 4 and all("leftover" in w for w in report.warnings)
    assert sorted(leftovers(registry_hub.path) + ["tasks/0003-third.delta.safetensors"]) == sorted(expected)
    with caplog.at_level(logging.WARNING, logger="snowhub"), registry_hub.open() as hub:
        assert [t.name for t in hub.tasks()] == ["imagenet", "fashion", "fashion2"]
    assert "removed 4 leftover file(s)" in caplog.text
    assert leftovers(registry_hub.path) == []
    assert not (registry_hub.path / "tasks" / "0003-third.delta.safetensors").exists()
    assert check_hub(registry_hub.path, registry_hub.url).warnings == []


def test_open_leaves_the_files_of_a_live_writer_alone(hub_copy):
    _fake_crash_leftovers(hub_copy)
    before = snapshot(hub_copy)
    with writer_lock(HubLayout(hub_copy), wait=False):  # "another process" is writing them right now
        with Hub.open(hub_copy) as hub:
            assert len(hub.tasks()) == 3
        report = check_hub(hub_copy)
        assert report.ok and report.warnings == [f"a writer (pid {os.getpid()}) is at work on this hub; "
                                                  "its files are not final yet"]
    assert snapshot(hub_copy) == before


def test_files_of_a_deleted_record_are_kept_reported_and_never_overwritten(registry_hub, fashion_dir, monkeypatch,
                                                                          cached):
    registry_hub.execute("DELETE FROM task WHERE seq = 2")  # someone removed the last task's row
    files = sorted(p.name for p in (registry_hub.path / "tasks").iterdir())
    with registry_hub.open() as hub:
        assert [t.name for t in hub.tasks()] == ["imagenet", "fashion"]
        with pytest.raises(SnowhubError, match="already exists but no registry record refers to it"):
            hub.add_task("fashion2", fashion_dir, TrainConfig(**FAST))  # would reuse number 2 and its file names
    assert sorted(p.name for p in (registry_hub.path / "tasks").iterdir()) == files
    report = check_hub(registry_hub.path, registry_hub.url)
    assert not report.ok
    assert [p.split(":")[0] for p in report.problems] == ["tasks/0002-fashion2.delta.safetensors",
                                                          "tasks/0002-fashion2.probe.safetensors"]


# -- a full disk: a real write error from the kernel ---------------------------------------------------


def test_a_full_disk_is_a_one_line_error_and_changes_nothing(registry_hub, fashion_dir, monkeypatch, cached):
    before = registry_hub.snapshot()
    with registry_hub.open() as hub:
        # Files may not grow past 64 kB from here on: the delta (600 kB) cannot be written.
        with file_size_limit(64 * 1024), pytest.raises(HubWriteError) as caught:
            hub.add_task("third", fashion_dir, TrainConfig(**FAST))
    message = str(caught.value)
    assert "\n" not in message and "File too large" in message and "free some disk space" in message
    assert registry_hub.snapshot() == before and leftovers(registry_hub.path) == []


# -- concurrency primitives: the writer lock and SQLite's busy timeout ----------------------------------


class _Recorder:
    def __init__(self):
        self.events: list[str] = []

    def start(self, description, total):
        self.events.append(f"start {description}")

    def advance(self, steps=1, **info):
        pass

    def finish(self, message=None):
        self.events.append(f"finish {message}")


def test_a_waiting_writer_says_who_it_waits_for_then_proceeds(tmp_path):
    layout = HubLayout(tmp_path)
    holding, release = threading.Event(), threading.Event()

    def hold():
        with writer_lock(layout, wait=False):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(HubLockedError) as refused:
            with writer_lock(layout, wait=False):
                pass
        assert str(refused.value) == (f"another snowhub process is writing to {tmp_path} (pid {os.getpid()}); "
                                      "wait for it or retry")
        recorder = _Recorder()
        threading.Timer(0.5, release.set).start()
        started = time.monotonic()
        with writer_lock(layout, wait=True, timeout=10, progress=recorder):
            waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(10)
    assert waited >= 0.4
    assert recorder.events[1] == (f"finish waiting: another snowhub process (pid {os.getpid()}) is writing to "
                                  f"{tmp_path}; continuing when it is done (Ctrl-C to give up)")
    assert recorder.events[-1] == "finish None"


def test_a_registry_locked_past_the_busy_timeout_is_a_one_line_error(hub_copy, monkeypatch):
    from sqlalchemy import text

    import snowhub.store.sqlite as sqlite_dialect

    monkeypatch.setattr(sqlite_dialect, "BUSY_TIMEOUT_S", 0.3)
    other = sqlite3.connect(hub_copy / "hub.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a foreign writer sits on SQLite's write lock
    other.execute("UPDATE source SET name = name")
    try:
        with Registry.open(hub_copy) as registry:
            assert [t.name for t in registry.tasks()] == ["fashion", "fashion2"]  # WAL: reads go on
            row = registry.get_task("fashion")
            with pytest.raises(HubLockedError) as caught:
                with registry._writing() as session:
                    session.execute(text("UPDATE task SET name = name"))
            assert str(caught.value).startswith(f"{hub_copy / 'hub.db'} stayed locked by another process")
            assert "database is locked" in str(caught.value) and "\n" not in str(caught.value)
            registry.check_record(row)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert task_names(hub_copy) == ["fashion", "fashion2"]


def test_cli_reports_a_write_failure_as_one_line(registry_hub, fashion_dir, monkeypatch, cached):
    from typer.testing import CliRunner

    from snowhub_cli.main import app

    raise_at(monkeypatch, "save:mid-write", OSError(errno.ENOSPC, "No space left on device"))
    before = registry_hub.snapshot()
    result = CliRunner().invoke(app, ["add-task", "third", "--data", str(fashion_dir), *registry_hub.cli_args,
                                      "--epochs", "1", "--image-size", "32", "--device", "cpu"])
    assert_one_line_error(result, "no space left on device); free some disk space")
    assert registry_hub.snapshot() == before
