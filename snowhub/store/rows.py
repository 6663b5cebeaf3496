"""Records to ORM rows and raw rows back to records: the only place the two meet."""

from __future__ import annotations

from sqlalchemy import inspect

from snowhub.store.integrity import decoded
from snowhub.store.models import Base, SourceRow, TaskRow
from snowhub.store.records import SourceRecord, TaskRecord, field_names


def require_complete(row: Base) -> None:
    """Refuse a row with a required field left as None (a bug in the caller, not a user error)."""
    missing = [
        column.key
        for column in inspect(type(row)).columns
        if not column.nullable and column.default is None and getattr(row, column.key) is None
    ]
    if missing:
        raise ValueError(f"{type(row).__name__} is missing required fields: {', '.join(missing)}")


def record_from_raw(table: str, row: dict[str, object]) -> SourceRecord | TaskRecord:
    """A record from a raw row (``ValueError`` if a JSON or timestamp column does not parse)."""
    record_type = SourceRecord if table == "source" else TaskRecord
    values = decoded(table, row)
    return record_type(**{name: values.get(name) for name in field_names(record_type)})


def to_row(record: SourceRecord | TaskRecord) -> SourceRow | TaskRow:
    row_type = SourceRow if isinstance(record, SourceRecord) else TaskRow
    values = {name: getattr(record, name) for name in field_names(type(record))}
    return row_type(**{k: v for k, v in values.items() if k not in ("created_at", "record_sha256") or v is not None})


def table_key(record: SourceRecord | TaskRecord) -> tuple[str, int]:
    return ("source", 1) if isinstance(record, SourceRecord) else ("task", record.seq)
