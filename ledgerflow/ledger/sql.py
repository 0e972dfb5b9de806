"""SQL expression helpers shared by the ledger's operations: the database clock, UTC values
read back, rows as records, idempotent inserts, and each phase's columns."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ledgerflow.errors import LedgerSchemaError
from ledgerflow.ledger.models import RECORDS, Phase, PhaseStatus, PipelineRecord, UTCDateTime

UPDATABLE = frozenset(c.name for c in RECORDS.columns) - {
    "id",
    "pipeline_id",
    "window_start_time",
    "window_end_time",
    "target_day",
    "time_interval",
    "lease_token",
    "fence_token",
    "record_first_created_time",
}


def _row_to_record(row: sa.Row[Any]) -> PipelineRecord:
    # The driver and column types already produced typed values; validating again costs more
    # than the claim's round trip.
    return PipelineRecord.model_construct(**row._mapping)


def _insert_ignoring_duplicates(
    dialect: str, table: sa.Table, keys: Sequence[str] = ("pipeline_id", "window_start_time")
) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(keys))
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(keys))
    raise LedgerSchemaError(
        f"ledger dialect {dialect!r} is not supported; use postgresql or sqlite"
    )


def _insert_ignoring_version(dialect: str, table: sa.Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["component"])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=["component"])


_PHASE_COLUMNS = {
    Phase.SOURCE_TO_STAGE: "source_to_stage_ingestion",
    Phase.STAGE_TO_TARGET: "stage_to_target_ingestion",
    Phase.AUDIT: "audit",
}
"""The prefix of each phase's `_status`, `_start_time` and `_end_time` columns."""

_PHASE_ROWS = {Phase.SOURCE_TO_STAGE: "extracted_count", Phase.STAGE_TO_TARGET: "loaded_count"}


def _phase_prefix(phase: Phase) -> str:
    try:
        return _PHASE_COLUMNS[phase]
    except KeyError:
        raise ValueError(
            f"phase {phase.value!r} has no status columns; allowed: "
            f"{[p.value for p in _PHASE_COLUMNS]}"
        ) from None


def _phase_reset(phase: Phase) -> dict[str, Any]:
    """A phase's columns as before it ran."""
    prefix = _PHASE_COLUMNS[phase]
    values: dict[str, Any] = {
        f"{prefix}_status": PhaseStatus.PENDING.value,
        f"{prefix}_start_time": None,
        f"{prefix}_end_time": None,
    }
    if phase in _PHASE_ROWS:
        values[_PHASE_ROWS[phase]] = None
    return values


_AUDIT_RESET = {
    **_phase_reset(Phase.AUDIT),
    "audit_result": None,
    "source_count": None,
    "target_count": None,
    "count_difference": None,
    "percentage_difference": None,
    "audit_tolerance_percent": None,
}
"""A reopened window shows no counts or verdict from the load it is about to replace."""

_LOAD_RESET = {**_phase_reset(Phase.STAGE_TO_TARGET), **_AUDIT_RESET}
"""What `retry` clears: the load and the audit. The stage is kept, so a load can resume."""

_ALL_RESET = {
    **_phase_reset(Phase.SOURCE_TO_STAGE),
    **_LOAD_RESET,
    "phase_completed": None,
    "stage_manifest": None,
}
"""What a reopen clears: the window is extracted again."""


def _clock(dialect: str, back: sa.ColumnElement[Any] | None = None) -> sa.ColumnElement[datetime]:
    """The database's current time, `back` seconds earlier when given, typed as the ledger's times.

    Every stamp the ledger writes or compares comes from here (or an explicit `now=` override),
    so workers whose clocks disagree still agree on lock ages and eligibility. Postgres: the
    statement's start time. SQLite: 'now' (UTC) as text in the layout UTCDateTime stores
    (`YYYY-MM-DD HH:MM:SS.ffffff`), padded from milliseconds to microseconds so that text order
    stays time order when compared with stored values."""
    if dialect == "postgresql":
        now: sa.ColumnElement[Any] = sa.func.statement_timestamp()
        if back is not None:
            zero: list[sa.ColumnElement[Any]] = [sa.literal_column("0")] * 6
            now = now - sa.func.make_interval(*zero, back)
        return sa.type_coerce(now, UTCDateTime())
    shift = [] if back is None else [sa.func.printf("-%.6f seconds", back)]
    text = sa.func.strftime("%Y-%m-%d %H:%M:%f", "now", *shift).op("||")("000")
    return sa.type_coerce(text, UTCDateTime())


def _stamp(dialect: str, now: datetime | None) -> sa.ColumnElement[datetime]:
    """`now` when a caller overrides the clock (tests), else the database's clock."""
    return _clock(dialect) if now is None else sa.literal(now, UTCDateTime())


def _clock_text(dialect: str, now: datetime | None) -> sa.ColumnElement[str]:
    """The database's current time (or `now`) as ISO 8601 UTC text, for messages."""
    if now is not None:
        return sa.literal(now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), sa.String())
    if dialect == "postgresql":
        utc = sa.func.timezone("UTC", sa.func.statement_timestamp())
        return sa.func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS"Z"', type_=sa.String())
    return sa.func.strftime("%Y-%m-%dT%H:%M:%SZ", "now", type_=sa.String())


def _utc(value: datetime | str) -> datetime:
    result = _as_utc(value)
    assert result is not None
    return result


def _as_utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite aggregates bypass the column type
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
