"""One registry on SQLite and on a real PostgreSQL server: the same records, seals, locks and guarantees.

Store tests run on both databases (``registry_url``: None = the hub's own hub.db, or a fresh PostgreSQL
database); the lock, reader and crash tests run where they are new, on PostgreSQL (tests/test_store.py and
tests/stress cover SQLite); the session hub is copied into PostgreSQL with ``snowhub registry copy`` and must
verify there with the same BWT and logits. The server comes from tests/registry_helpers.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import timezone

import pytest
from typer.testing import CliRunner

from fixtures.hubkit import FAST_ARGS, assert_one_line_error, run_cli, small_dataset, snapshot
from registry_helpers import admin, dump, pg
from snowhub.errors import HubLockedError, SnowhubError, TaskExistsError
from snowhub.store import Registry, SourceRecord, TaskRecord
from snowhub.store.database import head_revision
from snowhub_cli.main import app

# -- synthetic records (no training: the registry alone) -----------------------------------------------------


def source_record() -> SourceRecord:
    return SourceRecord(name="efficientnet_lite0", weights_origin="file:/x", weights_file="source/w.safetensors",
                        weights_file_sha256="a" * 64, tensors_sha256="b" * 64, parameter_count=4_652_008,
                        taps=[{"name": "blocks.2", "channels": 24}], preprocessing={"image_size": 224},
                        head_classes=None, library_versions={"torch": "2"})


def task_record(name: str, **changes: object) -> TaskRecord:
    values = dict(seq=None, name=name, class_names=["a", "b"], hyperparams={"lr": 0.1, "image_size": 32, "delta_shape": {"ks": [2]}},
                  cp_indices={"blocks.2": [0, 3]}, delta_params=10, cp_params=2, val_top1=50.0, val_top5=100.0,
                  val_loss=0.693, train_seconds=1.5, train_images_per_s=20.0, metrics={"history": []},
                  weights_file=f"tasks/{name}.delta.safetensors", weights_file_sha256="c" * 64,
                  probe_file=f"tasks/{name}.probe.safetensors", probe_file_sha256="d" * 64, probe_size=4,
                  probe_top1=75.0, probe_logits_sha256="e" * 64, dataset_fingerprint="f" * 64,
                  dataset_summary={"train_images": 8}, probe_environment={"torch": "2"})
    return TaskRecord(**(values | changes))


def new_registry(root, url: str | None) -> Registry:
    """A registry with its source recorded (and the source's file in place, where opening looks for it)."""
    registry = Registry.create(root, url)
    registry.set_source(source_record())
    (registry.layout.root / "source" / "w.safetensors").write_bytes(b"")
    return registry


def execute(registry: Registry, url: str | None, statement: str) -> None:
    """Tamper with the registry behind snowhub's back, with the database's own client library."""
    if url is None:
        db = sqlite3.connect(registry.layout.db_path)
        db.execute(statement)
        db.commit()
        db.close()
    else:
        pg(url, statement)


# -- the store on both databases -----------------------------------------------------------------------------


def test_append_only_order_unique_names_and_atomic_failure(registry_url, tmp_path):
    with new_registry(tmp_path / "hub", registry_url) as registry:
        for name in ("one", "two", "three"):
            registry.add_task(task_record(name, lineage={"hub": "elsewhere", "seq": 7} if name == "two" else None))
        before = [dataclasses.asdict(t) for t in registry.tasks()]
        with pytest.raises(TaskExistsError, match="a task named 'two' already exists"):
            registry.add_task(task_record("two"))
        with pytest.raises(SnowhubError, match="prepared as number 9 but the next is 4"):
            registry.add_task(task_record("four", seq=9))
        assert [dataclasses.asdict(t) for t in registry.tasks()] == before
    with Registry.open(tmp_path / "hub", registry_url) as registry:
        tasks = registry.tasks()
        assert [(t.seq, t.name) for t in tasks] == [(1, "one"), (2, "two"), (3, "three")]
        assert [dataclasses.asdict(t) for t in tasks] == before
        assert tasks[1].lineage == {"hub": "elsewhere", "seq": 7} and tasks[0].lineage is None
        assert all(t.created_at.tzinfo == timezone.utc for t in tasks)
        audit = registry.audit()
        assert audit.problems() == [] and registry.integrity_check() == []
        assert [dataclasses.asdict(t.record) for t in audit.tasks] == before and audit.source.record == registry.source()
        assert registry.dialect_name == ("sqlite" if registry_url is None else "postgresql")


# Every sealed column of a task, and an edit of it in SQL that both databases accept.
_EDITS = {
    "name": "name = name || 'x'", "class_names": """class_names = '["a", "c"]'""",
    "hyperparams": """hyperparams = '{"lr": 0.2, "image_size": 32}'""", "cp_indices": """cp_indices = '{"blocks.2": [0, 4]}'""",
    "delta_params": "delta_params = 11", "cp_params": "cp_params = 3", "val_top1": "val_top1 = 99.0",
    "val_top5": "val_top5 = 99.0", "val_loss": "val_loss = 0.5", "train_seconds": "train_seconds = 2.5",
    "train_images_per_s": "train_images_per_s = 21.0", "metrics": """metrics = '{"history": [1]}'""",
    "weights_file": "weights_file = 'tasks/other'", "weights_file_sha256": "weights_file_sha256 = 'ab'",
    "probe_file": "probe_file = 'tasks/other'", "probe_file_sha256": "probe_file_sha256 = 'ab'",
    "probe_size": "probe_size = 5", "probe_top1": "probe_top1 = 50.0", "probe_logits_sha256": "probe_logits_sha256 = 'ab'",
    "dataset_fingerprint": "dataset_fingerprint = 'ab'", "dataset_summary": """dataset_summary = '{"train_images": 9}'""",
    "probe_environment": "probe_environment = NULL", "lineage": """lineage = '{"seq": 1}'""",
    "created_at": "created_at = '2001-01-01 00:00:00'", "record_sha256": "record_sha256 = NULL",
    "version": "version = 7",
}


def test_tampering_with_any_sealed_field_is_caught(registry_url, tmp_path):
    from snowhub.store.integrity import column_kinds
    from snowhub.store.models import TaskRow

    sealed = {c.key for c in TaskRow.__table__.columns} - {"seq"}
    assert set(_EDITS) == sealed, "a new column needs an edit here"
    assert set(column_kinds("task")) <= sealed
    with new_registry(tmp_path / "hub", registry_url) as registry:
        for i, _ in enumerate([*_EDITS, "untouched"]):
            registry.add_task(task_record(f"t{i}"))
        for i, edit in enumerate(_EDITS.values()):
            execute(registry, registry_url, f"UPDATE task SET {edit} WHERE seq = {i + 1}")
        audit = registry.audit()
        problems = {t.key: t.problem for t in audit.tasks if t.problem}
        assert sorted(problems) == list(range(1, len(_EDITS) + 1)), problems  # every edit, and only those
        assert audit.source.problem is None and all(t.record is not None for t in audit.tasks)
        untrusted = dict((t.seq, p) for t, p in registry.checked_tasks())
        assert untrusted[len(_EDITS) + 1] is None and all(untrusted[s] for s in problems)


# -- the writer lock and readers on PostgreSQL (several processes, as on several machines) -------------------

_HOLD = """
import sys, time
from snowhub.store import Registry, writer_lock
with Registry.open(sys.argv[1], sys.argv[2]) as registry:
    with writer_lock(registry, wait=True, timeout=120):
        print("held", time.monotonic(), flush=True)
        time.sleep(float(sys.argv[3]))
"""

_WAIT = """
import sys, time
from snowhub.errors import HubLockedError
from snowhub.store import Registry, writer_lock
with Registry.open(sys.argv[1], sys.argv[2]) as registry:
    try:
        with writer_lock(registry, wait=False):
            print("free", flush=True)
    except HubLockedError:
        print("blocked", flush=True)
    with writer_lock(registry, wait=True, timeout=120):
        print("held", time.monotonic(), flush=True)
"""


def _python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_writers_are_serialised_by_the_advisory_lock_and_a_killed_writer_releases_it(fresh_database, tmp_path):
    root = tmp_path / "hub"
    new_registry(root, fresh_database).close()
    first = _python(_HOLD, str(root), fresh_database, "600")
    try:
        assert first.stdout.readline().startswith("held"), first.stderr.read()
        with Registry.open(root, fresh_database) as registry:
            holder = f"pid {first.pid} on {socket.gethostname()}"
            assert registry.lock_holder() == holder
            with pytest.raises(HubLockedError, match=f"another snowhub process is writing to {root} \\({holder}\\)"):
                with registry.writer_lock(wait=False):
                    pass
            second = _python(_WAIT, str(root), fresh_database)  # waits for the first
            assert second.stdout.readline() == "blocked\n", second.stderr.read()
            time.sleep(0.5)
            assert second.poll() is None  # still waiting
            killed_at = time.monotonic()
            first.send_signal(signal.SIGKILL)  # the server ends its session: the lock goes with it
            line = second.stdout.readline()
            assert line.startswith("held"), second.stderr.read()
            assert float(line.split()[1]) - killed_at < 10
            assert second.wait(60) == 0
            assert registry.lock_holder() is None
            with registry.writer_lock(wait=False):
                assert registry.lock_holder() == f"pid {os.getpid()} on {socket.gethostname()}"
    finally:
        first.kill()
        first.wait()


_WRITE = """
import sys
sys.path.insert(0, sys.argv[3])
from test_registry_postgres import task_record
from snowhub.store import Registry
with Registry.open(sys.argv[1], sys.argv[2]) as registry:
    for i in range(40):
        registry.add_task(task_record(f"w{i}"))
"""


def test_a_reader_during_writes_never_sees_half_a_task(fresh_database, tmp_path):
    root = tmp_path / "hub"
    new_registry(root, fresh_database).close()
    writer = _python(_WRITE, str(root), fresh_database, os.path.dirname(__file__))
    seen, reads = 0, 0
    with Registry.open(root, fresh_database) as registry:
        while True:
            done = writer.poll() is not None
            tasks = registry.checked_tasks()
            reads += 1
            assert [t.seq for t, _ in tasks] == list(range(1, len(tasks) + 1))
            assert all(problem is None for _, problem in tasks) and len(tasks) >= seen
            seen = len(tasks)
            if done:
                break
    assert writer.returncode == 0, writer.stderr.read()
    assert seen == 40 and reads > 1


# -- the session hub in PostgreSQL: copy, verify, list, predict, crash ---------------------------------------


@pytest.fixture(scope="module")
def pg_hub(trained_hub, tmp_path_factory, postgres_admin_url):
    """A copy of the session hub whose registry was copied into a PostgreSQL database: (dir, url, copy output)."""
    from registry_helpers import database_url

    hub = tmp_path_factory.mktemp("pg") / "hub"
    shutil.copytree(trained_hub, hub)
    name = f"snowhub_hub_{os.getpid()}"
    admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
    url = database_url(postgres_admin_url, name)
    before = snapshot(hub)
    copied = CliRunner().invoke(app, ["registry", "copy", "--to", url, "--hub", str(hub), "--json"])
    assert copied.exit_code == 0, copied.output
    assert snapshot(hub) == before  # the original registry and the files: untouched
    yield hub, url, json.loads(copied.stdout)
    admin(postgres_admin_url,
          f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()",
          f'DROP DATABASE IF EXISTS "{name}"')


def _json(*argv: str) -> dict:
    result = CliRunner().invoke(app, [*argv, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_copied_registry_verifies_with_the_same_bwt_and_logits(pg_hub, fashion_dir):
    hub, url, copied = pg_hub
    assert (copied["tasks"], copied["seals"], copied["files"], copied["events"]) == (2, 5, 5, 2)  # + 2 added events
    on_sqlite = _json("verify-forgetting", "--hub", str(hub), "--device", "cpu")
    on_postgres = _json("verify-forgetting", "--hub", str(hub), "--registry", url, "--device", "cpu")
    assert on_postgres["ok"] and on_postgres["bwt"] == on_sqlite["bwt"] == 0.0
    for a, b in zip(on_sqlite["tasks"], on_postgres["tasks"], strict=True):
        assert (a["name"], a["verdict"]) == (b["name"], b["verdict"]) == (a["name"], "bit-identical")
    listed = _json("list", "--registry", url)  # no --hub: the directory the registry recorded
    assert listed["hub"] == str(hub) and listed == _json("list", "--hub", str(hub))
    image = str(next((fashion_dir / "val" / "Bag").glob("*.png")))
    assert _json("predict", image, "--registry", url, "--device", "cpu") == \
        _json("predict", image, "--hub", str(hub), "--device", "cpu")
    assert _json("doctor", "--registry", url)["ok"]
    before = dump(url)
    again = CliRunner().invoke(app, ["registry", "copy", "--to", url, "--hub", str(hub)])
    assert_one_line_error(again, "already holds a snowhub registry")
    assert dump(url) == before


@pytest.mark.parametrize("fault, committed", [("add-task:files-written", False), ("registry:after-commit", True)])
def test_add_task_killed_at_a_crash_point_on_postgres(pg_hub, tmp_path, fault, committed):
    hub, url, _ = pg_hub
    before = [t["name"] for t in _json("list", "--registry", url)["tasks"]]
    name = f"crash-{fault.split(':')[1]}"
    data = small_dataset(tmp_path / "data", per_class=8)
    killed = run_cli("add-task", name, "--data", str(data), *FAST_ARGS, "--registry", url,
                     env={"SNOWHUB_FAULT": fault})
    assert killed.returncode == -9, killed.stderr
    with Registry.open(None, url) as registry:
        assert registry.lock_holder() is None  # the killed writer's advisory lock went with its connection
    after = _json("list", "--registry", url)  # the next command cleans up what the crash left
    assert [t["name"] for t in after["tasks"]] == before + ([name] if committed else [])
    doctor = _json("doctor", "--registry", url)
    assert doctor["ok"] and doctor["warnings"] == [], doctor


# -- bad input: one line each, nothing written ---------------------------------------------------------------


def test_bad_registry_urls_are_one_line_and_write_nothing(fresh_database, postgres_admin_url, tmp_path, trained_hub):
    from sqlalchemy.engine import make_url

    server = make_url(postgres_admin_url)
    wrong_password = server.set(password="not-the-password").render_as_string(hide_password=False)
    unreachable = server.set(port=1).render_as_string(hide_password=False)
    new = tmp_path / "new"
    for url, says in [(unreachable, "cannot reach the PostgreSQL server 127.0.0.1:1"),
                      (wrong_password, "password authentication failed"),
                      ("mysql://u@h/db", "snowhub keeps registries in SQLite or PostgreSQL"),
                      ("garbage://nope", "not garbage")]:
        for argv in (["init", "--source", "efficientnet_lite0"], ["list"]):
            result = CliRunner().invoke(app, [*argv, "--hub", str(new), "--registry", url])
            line = assert_one_line_error(result, says)
            assert "not-the-password" not in line
    assert not new.exists()
    pg(fresh_database, "CREATE TABLE accounts (id integer)")
    before = dump(fresh_database)
    assert_one_line_error(CliRunner().invoke(app, ["list", "--registry", fresh_database]), "is not a snowhub registry")
    assert_one_line_error(CliRunner().invoke(app, ["init", "--source", "efficientnet_lite0", "--hub", str(new),
                                                   "--registry", fresh_database]), "is not empty (it holds accounts)")
    assert dump(fresh_database) == before and not new.exists()
    pg(fresh_database, "DROP TABLE accounts")
    assert_one_line_error(CliRunner().invoke(app, ["list", "--registry", fresh_database]), "the database is empty")


def test_a_newer_schema_and_files_elsewhere_are_refused(pg_hub, tmp_path):
    hub, url, _ = pg_hub
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for argv in (["list"], ["verify-forgetting", "--device", "cpu"], ["doctor"]):
        assert_one_line_error(CliRunner().invoke(app, [*argv, "--hub", str(elsewhere), "--registry", url]),
                              f"{elsewhere} does not hold the files of the registry")
    assert list(elsewhere.iterdir()) == []
    pg(url, "UPDATE alembic_version SET version_num = '0099_future'")
    try:
        before = dump(url)
        for argv in (["list"], ["doctor"], ["registry", "copy", "--to", url]):
            assert_one_line_error(CliRunner().invoke(app, [*argv, "--registry", url]),
                                  "written by a newer snowhub (schema 0099_future)")
        assert dump(url) == before
    finally:
        pg(url, f"UPDATE alembic_version SET version_num = '{head_revision()}'")


def test_an_older_schema_on_postgres_is_upgraded_by_the_same_migrations(fresh_database, tmp_path):
    from alembic import command
    from sqlalchemy import create_engine

    from snowhub.store.database import _alembic_config

    engine = create_engine(fresh_database)
    config = _alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")  # a registry as schema 0004 left it (no hub table, no lineage)
    engine.dispose()
    (tmp_path / "hub").mkdir()
    with Registry.open(tmp_path / "hub", fresh_database) as registry:
        assert registry.revision() == head_revision() == "0007"
        assert registry.integrity_check() == []  # the migrated schema is the ORM's
