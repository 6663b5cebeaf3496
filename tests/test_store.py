"""Tests of snowhub.store: registry, migrations, files, lock.

The registry's tests run on both databases (``registry_url``: the hub's own SQLite hub.db, or a fresh database
on a real PostgreSQL server, tests/registry_helpers.py); SQLite's own settings and files are tested on SQLite.
"""

from __future__ import annotations

import dataclasses

import multiprocessing
import os
import signal
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from safetensors import safe_open
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError

from registry_helpers import pg
from snowhub.errors import (
    HubExistsError,
    HubLockedError,
    HubNotFoundError,
    HubVersionError,
    IntegrityError,
    SnowhubError,
    TaskExistsError,
    TaskNotFoundError,
)
from snowhub.store import (
    HubLayout,
    Registry,
    SourceRecord,
    TaskRecord,
    atomic_save_safetensors,
    head_revision,
    load_safetensors_verified,
    sha256_file,
    tensor_digest,
    writer_lock,
)
from snowhub.store.database import current_revision
from snowhub.store.sqlite import open_engine
from snowhub.store.models import Base

# -- helpers -----------------------------------------------------------------------------------------


def make_source(**overrides: object) -> SourceRecord:
    fields: dict[str, object] = dict(
        name="mobilenet_v2",
        weights_origin="torchvision:IMAGENET1K_V2",
        weights_file="source/weights.safetensors",
        weights_file_sha256="a" * 64,
        tensors_sha256="b" * 64,
        parameter_count=3_504_872,
        taps=[{"name": "features.6", "channels": 32}, {"name": "features.13", "channels": 96}],
        preprocessing={"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406]},
        head_classes=["tench", "goldfish"],
        library_versions={"torch": torch.__version__},
    )
    fields.update(overrides)
    return SourceRecord(**fields)


def make_task(name: str, seq: int | None = None, **overrides: object) -> TaskRecord:
    fields: dict[str, object] = dict(
        seq=seq,
        name=name,
        class_names=["cat", "dog"],
        hyperparams={"lr": 0.01, "epochs": 3},
        cp_indices={"features.6": [0, 5, 7]},
        delta_params=12_345,
        cp_params=678,
        val_top1=0.9,
        val_top5=1.0,
        val_loss=0.25,
        train_seconds=12.5,
        train_images_per_s=300.0,
        metrics={"history": [{"epoch": 1, "loss": 0.5}]},
        weights_file=f"tasks/{name}/delta.safetensors",
        weights_file_sha256="c" * 64,
        probe_file=f"tasks/{name}/probe.safetensors",
        probe_file_sha256="d" * 64,
        probe_size=64,
        probe_top1=0.875,
        probe_logits_sha256="e" * 64,
        dataset_fingerprint="f" * 64,
        dataset_summary={"train": 100, "val": 20},
    )
    fields.update(overrides)
    return TaskRecord(**fields)


@pytest.fixture
def hub(tmp_path: Path, registry_url: str | None):
    """A new registry with its source recorded, on SQLite and on PostgreSQL."""
    reg = Registry.create(tmp_path / "hub", registry_url)
    reg.set_source(make_source())
    _place_source_file(reg)
    yield reg
    reg.close()


def _place_source_file(reg: Registry) -> None:
    """The source's weight file, where opening a registry kept outside the hub looks for it."""
    (reg.layout.root / "source" / "weights.safetensors").write_bytes(b"")


def task_view(row: TaskRecord) -> dict[str, object]:
    return dataclasses.asdict(row)


# -- registry ----------------------------------------------------------------------------------------


def test_create_makes_layout_and_reopen_sees_same_rows(tmp_path: Path, registry_url: str | None) -> None:
    root = tmp_path / "hub"
    with Registry.create(root, registry_url) as reg:
        layout = reg.layout
        for directory in (layout.root, layout.source_dir, layout.tasks_dir, layout.staging_dir):
            assert directory.is_dir()
        assert layout.db_path == root.absolute() / "hub.db"
        assert layout.db_path.is_file() == (registry_url is None)  # a PostgreSQL registry keeps no hub.db
        reg.set_source(make_source())
        _place_source_file(reg)
        reg.add_task(make_task("birds"))
        reg.add_task(make_task("cars", class_names=["sedan", "suv", "van"]))
        before_source, before_tasks = reg.source(), reg.tasks()

    with Registry.open(root, registry_url) as reg:
        source = reg.source()
        assert dataclasses.asdict(source) == dataclasses.asdict(before_source)
        assert source.head_classes == ["tench", "goldfish"]
        assert source.taps[1] == {"name": "features.13", "channels": 96}
        after = reg.tasks()
        assert [task_view(t) for t in after] == [task_view(t) for t in before_tasks]
        assert reg.get_task("cars").class_names == ["sedan", "suv", "van"]
        assert reg.get_task("birds").cp_indices == {"features.6": [0, 5, 7]}


def test_created_at_is_aware_utc_and_naive_is_refused(hub: Registry) -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    hub.add_task(make_task("a", created_at=when))
    assert hub.get_task("a").created_at == when
    in_paris = datetime(2024, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    hub.add_task(make_task("c", created_at=in_paris))
    assert hub.get_task("c").created_at == in_paris  # the same instant...
    assert hub.get_task("c").created_at.utcoffset() == timedelta(0)  # ...read back in UTC
    assert hub.source().created_at.tzinfo is not None
    with pytest.raises(Exception, match="naive datetime"):
        hub.add_task(make_task("b", created_at=datetime(2024, 1, 1)))
    assert not hub.has_task("b")


def test_append_order_and_seq(hub: Registry) -> None:
    assert hub.next_seq() == 1 and hub.tasks() == []
    for name in ("zebra", "apple", "mango"):
        hub.add_task(make_task(name))
    assert [(t.seq, t.name) for t in hub.tasks()] == [(1, "zebra"), (2, "apple"), (3, "mango")]
    assert hub.next_seq() == 4
    hub.add_task(make_task("kiwi", seq=hub.next_seq()))
    assert hub.get_task("kiwi").seq == 4
    # A seq prepared before someone else appended is refused, not silently renumbered.
    with pytest.raises(SnowhubError, match="next is 5"):
        hub.add_task(make_task("late", seq=4))
    assert not hub.has_task("late") and hub.next_seq() == 5


def test_duplicate_name_raises_and_leaves_db_unchanged(hub: Registry) -> None:
    hub.add_task(make_task("birds"))
    hub.add_task(make_task("cars"))
    before = [task_view(t) for t in hub.tasks()]
    with pytest.raises(TaskExistsError) as caught:
        hub.add_task(make_task("birds", class_names=["x", "y"], val_top1=0.1))
    message = str(caught.value)
    assert "'birds' already exists" in message and "\n" not in message
    assert not any(word in message.lower() for word in ("insert", "sqlite", "psycopg", "unique", "constraint"))
    assert caught.value.__cause__ is None
    assert [task_view(t) for t in hub.tasks()] == before
    assert hub.next_seq() == 3


def test_get_task_unknown_lists_known_names(hub: Registry) -> None:
    with pytest.raises(TaskNotFoundError, match="no tasks yet"):
        hub.get_task("nope")
    hub.add_task(make_task("birds"))
    hub.add_task(make_task("cars"))
    with pytest.raises(TaskNotFoundError, match="known tasks: birds, cars"):
        hub.get_task("nope")
    assert hub.has_task("cars") and not hub.has_task("nope")


def test_returned_rows_are_detached_snapshots(hub: Registry) -> None:
    hub.add_task(make_task("birds"))
    row = hub.get_task("birds")
    row.val_top1 = 0.0  # changing a returned row must not reach the hub
    assert hub.get_task("birds").val_top1 == 0.9
    assert not hasattr(Registry, "delete_task") and not hasattr(Registry, "update_task")


def test_source_rules(tmp_path: Path, registry_url: str | None) -> None:
    with Registry.create(tmp_path / "hub", registry_url) as reg:
        with pytest.raises(HubNotFoundError, match="never finished"):
            reg.source()
        with pytest.raises(HubNotFoundError, match="no source model"):
            reg.add_task(make_task("early"))
        reg.set_source(make_source())
        with pytest.raises(HubExistsError, match="already has its source"):
            reg.set_source(make_source(name="resnet50"))
        assert reg.source().name == "mobilenet_v2"


def test_incomplete_row_is_refused_with_field_names(hub: Registry) -> None:
    with pytest.raises(ValueError, match="probe_file_sha256"):
        hub.add_task(make_task("x", probe_file_sha256=None))
    assert hub.tasks() == []


def test_create_refuses_existing_hub_and_file(tmp_path: Path) -> None:
    Registry.create(tmp_path / "hub").close()
    with pytest.raises(HubExistsError, match="already exists"):
        Registry.create(tmp_path / "hub")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SnowhubError, match="is a file"):
        Registry.create(a_file)
    assert a_file.read_text() == "x"


def test_open_missing_dir_and_file_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(HubNotFoundError, match=r"no snowhub hub at .*snowhub init --source NAME"):
        Registry.open(tmp_path / "missing")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(HubNotFoundError, match="no snowhub hub"):
        Registry.open(empty_dir)
    assert list(empty_dir.iterdir()) == []  # opening must not create a hub.db
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(HubNotFoundError, match="is a file, not a snowhub hub directory"):
        Registry.open(a_file)


def test_open_engine_does_not_create_a_missing_db(tmp_path: Path) -> None:
    engine = open_engine(tmp_path / "hub.db")
    try:
        with pytest.raises(OperationalError):
            engine.connect()
    finally:
        engine.dispose()
    assert not (tmp_path / "hub.db").exists()


def test_open_garbage_db_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "hub.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SnowhubError, match="not a readable snowhub registry"):
        Registry.open(tmp_path / "hub")


# -- database & migrations ---------------------------------------------------------------------------


def test_wal_mode_and_busy_timeout(tmp_path: Path) -> None:
    Registry.create(tmp_path / "hub").close()
    db_path = tmp_path / "hub" / "hub.db"
    with sqlite3.connect(db_path) as raw:  # a foreign connection sees the persistent mode
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    engine = open_engine(db_path)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
    finally:
        engine.dispose()


def test_migrations_produce_the_orm_schema(hub: Registry) -> None:
    assert hub.revision() == head_revision() == "0007"
    with hub.connection() as conn:
        db = inspect(conn)
        assert set(db.get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
        for name, table in Base.metadata.tables.items():
            columns = {c["name"]: c for c in db.get_columns(name)}
            assert list(columns) == [c.name for c in table.columns], name
            for column in table.columns:
                assert columns[column.name]["nullable"] == column.nullable, (name, column.name)
            assert db.get_pk_constraint(name)["constrained_columns"] == [c.name for c in table.primary_key]
        assert [u["column_names"] for u in db.get_unique_constraints("task")] == [["name", "version"]]
        # Alembic's own diff of the migrated DB against the models must be empty.
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_open_upgrades_an_unmigrated_db(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    root.mkdir()
    (root / "hub.db").touch()  # what a crash right after creating the file leaves
    with Registry.open(root) as reg:
        assert reg.tasks() == []
    engine = open_engine(root / "hub.db")
    try:
        assert current_revision(engine) == head_revision() == "0007"
    finally:
        engine.dispose()


def test_unknown_revision_raises_version_error(hub: Registry, registry_url: str | None) -> None:
    hub.add_task(make_task("birds"))
    hub.close()
    url = registry_url or hub.url  # hub.url hides the password
    pg(url, "UPDATE alembic_version SET version_num = '0999'")  # the database's own driver, behind our back
    with pytest.raises(HubVersionError, match=r"newer snowhub \(schema 0999\); upgrade snowhub"):
        Registry.open(hub.layout.root, registry_url)
    # and the registry was left alone
    assert pg(url, "SELECT version_num FROM alembic_version") == [("0999",)]
    assert pg(url, "SELECT name FROM task") == [("birds",)]


# -- files -------------------------------------------------------------------------------------------


def _tmp_leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_atomic_save_round_trips(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "h": torch.randn(2).half()}
    path = tmp_path / "delta.safetensors"
    sha = atomic_save_safetensors(tensors, path, metadata={"task": "birds"})
    assert sha == sha256_file(path)
    loaded = load_safetensors_verified(path, sha)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) and loaded[k].dtype == tensors[k].dtype for k in tensors)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"task": "birds"}
    assert _tmp_leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"x": torch.zeros(4, 4).t()},  # non-contiguous
        {"x": torch.zeros(4), "y": None},  # not a tensor
    ],
    ids=["non-contiguous", "not-a-tensor"],
)
def test_atomic_save_failure_leaves_no_temp_and_keeps_old_file(tmp_path: Path, bad: dict) -> None:
    path = tmp_path / "delta.safetensors"
    old_sha = atomic_save_safetensors({"x": torch.ones(2)}, path)
    with pytest.raises((ValueError, RuntimeError, TypeError)):
        atomic_save_safetensors(bad, path)
    assert _tmp_leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["delta.safetensors"]
    assert sha256_file(path) == old_sha


def test_load_verified_detects_one_flipped_byte_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    sha = atomic_save_safetensors({"w": torch.randn(64)}, path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # one bit of one float
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"does not match its recorded sha256.*snowhub verify-forgetting"):
        load_safetensors_verified(path, sha)
    with pytest.raises(IntegrityError, match="is missing"):
        load_safetensors_verified(tmp_path / "gone.safetensors", sha)


def test_tensor_digest_sees_one_element_and_bn_buffers() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = model.state_dict()
    base = tensor_digest(state)
    assert tensor_digest(dict(reversed(list(state.items())))) == base  # key order does not matter

    def changed(key: str, mutate) -> str:
        copy = {k: v.clone() for k, v in state.items()}
        mutate(copy[key])
        return tensor_digest(copy)

    weight = state["0.weight"].flatten()[7].item()
    next_up = torch.nextafter(torch.tensor(weight), torch.tensor(float("inf"))).item()
    assert changed("0.weight", lambda t: t.view(-1).__setitem__(7, next_up)) != base
    assert changed("1.running_mean", lambda t: t.__setitem__(2, 1e-6)) != base
    assert changed("1.running_var", lambda t: t.__setitem__(0, 1.0 + 1e-6)) != base
    assert changed("1.num_batches_tracked", lambda t: t.add_(1)) != base
    # Same bytes under another dtype or shape, or under another key, are a different model.
    assert tensor_digest({"t": torch.zeros(4)}) != tensor_digest({"t": torch.zeros(4, dtype=torch.int32)})
    assert tensor_digest({"t": torch.zeros(2, 3)}) != tensor_digest({"t": torch.zeros(3, 2)})
    assert tensor_digest({("x" + k): v for k, v in state.items()}) != base
    # Memory layout does not matter, only the values.
    square = torch.randn(5, 5)
    assert tensor_digest({"m": square.t()}) == tensor_digest({"m": square.t().contiguous()})
    # -0.0 and 0.0 compare equal but are not bit-identical.
    assert tensor_digest({"z": torch.tensor([0.0])}) != tensor_digest({"z": torch.tensor([-0.0])})


def test_layout_paths() -> None:
    layout = HubLayout(Path("/srv/hub"))
    assert layout.db_path == Path("/srv/hub/hub.db") and layout.lock_path == Path("/srv/hub/hub.lock")
    assert layout.staging_dir == Path("/srv/hub/staging")
    assert layout.relative(layout.tasks_dir / "birds" / "delta.safetensors") == "tasks/birds/delta.safetensors"
    assert layout.resolve("tasks/birds/delta.safetensors") == Path("/srv/hub/tasks/birds/delta.safetensors")
    with pytest.raises(IntegrityError, match="outside the hub"):
        layout.resolve("../etc/passwd")


# -- writer lock -------------------------------------------------------------------------------------


def _hold_lock(root: str, locked, release) -> None:
    """Child process: hold the writer lock until told to let go."""
    with writer_lock(HubLayout(Path(root)), wait=False):
        locked.set()
        release.wait(30)


class _Hung(Exception):
    pass


def _raise_hung(signum: int, frame: object) -> None:
    raise _Hung("writer_lock blocked although it was told not to wait that long")


def test_writer_lock_refuses_second_process(tmp_path: Path) -> None:
    layout = HubLayout(tmp_path)
    # fork: the child inherits the imported modules, so it starts in milliseconds; it only runs flock.
    ctx = multiprocessing.get_context("fork")
    locked, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(tmp_path), locked, release))
    # A lock that wrongly blocks would hang the test run; SIGALRM turns that into a failure.
    previous = signal.signal(signal.SIGALRM, _raise_hung)
    signal.alarm(20)
    child.start()
    try:
        assert locked.wait(15), "the child never got the lock"
        with pytest.raises(HubLockedError, match=rf"is writing to .* \(pid {child.pid}\); wait for it or retry"):
            with writer_lock(layout, wait=False):
                pass
        started = time.monotonic()
        with pytest.raises(HubLockedError):
            with writer_lock(layout, timeout=0.3):
                pass
        assert 0.25 <= time.monotonic() - started < 5
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        release.set()
        child.join(30)
    assert child.exitcode == 0
    with writer_lock(layout, wait=False):  # free again once the holder is gone
        assert layout.lock_path.read_text().strip() == str(os.getpid())
    assert layout.lock_path.read_text() == ""


def test_writer_lock_on_missing_hub(tmp_path: Path) -> None:
    with pytest.raises(HubNotFoundError):
        with writer_lock(HubLayout(tmp_path / "missing")):
            pass
