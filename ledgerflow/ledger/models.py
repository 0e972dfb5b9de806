"""The ledger's table: the seed's `pipeline_records`, plus what exactly-once needs.

Added to the seed's columns: `pipeline_id` with a unique `(pipeline_id, window_start_time)` so
registration is idempotent; `lease_token` for fencing ledger writes and `fence_token`, a number
every claim raises, for fencing the target; `priority` so fresh windows go before a
backfill; `error_message`, `extracted_count`, `loaded_count` and `stage_manifest` so an operator
sees why and a re-claimed window can resume; `audit_tolerance_percent` so the audit's verdict can
be explained later. `percentage_difference` is DECIMAL(25,4), wider than the seed's (5,2): with
BIGINT counts and a source of at least one row it is at most (2**63 - 1) * 100, 21 integer digits,
so no pair of counts can overflow it (DECIMAL(9,2) overflowed on Postgres at a target 10**5 times
its source). It is for display; the audit decides on the exact integer counts.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from ledgerflow.clock import as_utc, stored_as_utc
from ledgerflow.windows import Window

SCHEMA_VERSION = 3


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """An aware UTC instant on every backend: TIMESTAMPTZ on Postgres, ISO text on SQLite.

    Naive datetimes are refused on the way in; what comes out is always aware UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"ledger times must be aware datetimes, got naive {value!r}")
        utc = as_utc(value)
        # SQLite keeps text; strip the offset so every stored value sorts as UTC text.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return stored_as_utc(value)


class Status(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class PhaseStatus(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"


class AuditResult(StrEnum):
    """Values of audit_result."""

    PASS = "PASS"  # recounted after the load, within the tolerance
    FAIL = "FAIL"  # recounted after the load, beyond the tolerance: the window is FAILED
    MATCH = "MATCH"  # equal before the load: the transfer was skipped


class Phase(StrEnum):
    """Values of phase_completed, in pipeline order."""

    CLAIMED = "CLAIMED"
    PRE_VALIDATION = "PRE_VALIDATION"
    SOURCE_TO_STAGE = "SOURCE_TO_STAGE"
    STAGE_TO_TARGET = "STAGE_TO_TARGET"
    AUDIT = "AUDIT"


def _ts(**kw: Any) -> Any:
    return Field(default=None, sa_type=UTCDateTime, **kw)


def _status(length: int = 20, default: str = "PENDING") -> Any:
    return Field(default=default, max_length=length, sa_column_kwargs={"server_default": default})


class PipelineRecord(SQLModel):
    """One window of one pipeline, as read from the ledger (a plain model, cheap to build)."""

    @property
    def window(self) -> Window:
        return Window(
            self.window_start_time, self.window_end_time, self.target_day, self.time_interval
        )

    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: str = Field(max_length=100)

    # Time window
    target_day: date
    window_start_time: datetime = Field(sa_type=UTCDateTime)
    window_end_time: datetime = Field(sa_type=UTCDateTime)
    time_interval: str = Field(max_length=10)
    priority: int = Field(default=0, sa_column_kwargs={"server_default": "0"})

    # Locking
    dag_run_id: str | None = Field(default=None, max_length=100)
    pipeline_status: str = _status()
    pipeline_locked_at: datetime | None = _ts()
    lease_token: str | None = Field(default=None, max_length=36)
    # The target's fencing number: drawn by every claim from the pipeline's one counter
    # (`ledgerflow_fence_counters`), so it exceeds every earlier claim's of the pipeline.
    fence_token: int = Field(
        default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"}
    )

    # Source to stage
    source_to_stage_ingestion_start_time: datetime | None = _ts()
    source_to_stage_ingestion_end_time: datetime | None = _ts()
    source_to_stage_ingestion_status: str = _status()

    # Stage to target
    stage_to_target_ingestion_start_time: datetime | None = _ts()
    stage_to_target_ingestion_end_time: datetime | None = _ts()
    stage_to_target_ingestion_status: str = _status()

    # Audit
    audit_start_time: datetime | None = _ts()
    audit_end_time: datetime | None = _ts()
    audit_status: str = _status()
    audit_result: str | None = Field(default=None, max_length=10)
    source_count: int | None = Field(default=None, sa_type=sa.BigInteger)
    target_count: int | None = Field(default=None, sa_type=sa.BigInteger)
    count_difference: int | None = Field(default=None, sa_type=sa.BigInteger)
    percentage_difference: Decimal | None = Field(default=None, sa_type=sa.Numeric(25, 4))
    audit_tolerance_percent: Decimal | None = Field(default=None, sa_type=sa.Numeric(9, 6))

    # Pipeline management
    pipeline_start_time: datetime | None = _ts()
    pipeline_end_time: datetime | None = _ts()
    phase_completed: str | None = Field(default=None, max_length=50)
    retry_attempt: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    record_first_created_time: datetime | None = _ts()
    record_last_updated_time: datetime | None = _ts()
    error_message: str | None = Field(default=None, sa_type=sa.Text)
    extracted_count: int | None = Field(default=None, sa_type=sa.BigInteger)
    loaded_count: int | None = Field(default=None, sa_type=sa.BigInteger)
    stage_manifest: str | None = Field(default=None, sa_type=sa.Text)
    force_reload: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})

    # Business fields (the seed's function_x/y/z)
    key_x: str | None = Field(default=None, sa_type=sa.Text)
    key_y: str | None = Field(default=None, sa_type=sa.Text)
    key_z: str | None = Field(default=None, sa_type=sa.Text)


class PipelineRecordRow(PipelineRecord, table=True):
    """The `pipeline_records` table: PipelineRecord's columns, constraints and indexes."""

    __tablename__ = "pipeline_records"
    __table_args__ = (
        sa.UniqueConstraint("pipeline_id", "window_start_time", name="uq_pipeline_window"),
        sa.Index("idx_pipeline_status", "pipeline_status"),
        sa.Index("idx_time_window", "window_start_time", "window_end_time"),
        sa.Index("idx_phase_completed", "phase_completed"),
        sa.Index("idx_locked_at", "pipeline_locked_at"),
        # The claim's ORDER BY, on PENDING rows only: a claim reads one index entry, however
        # many windows are done. One index per claim order.
        *(
            sa.Index(
                f"idx_claim_{name}",
                "pipeline_id",
                sa.text("priority DESC"),
                sa.text(f"window_start_time {direction}"),
                postgresql_where=sa.text("pipeline_status = 'PENDING'"),
                sqlite_where=sa.text("pipeline_status = 'PENDING'"),
            )
            for name, direction in (("oldest", "ASC"), ("newest", "DESC"))
        ),
        # SQLite never reuses an id (a re-tile deletes windows; without AUTOINCREMENT the next
        # window registered would take a deleted one's id, and `retry --id N` from an older
        # notification would act on another window). Postgres' sequence never does.
        {"sqlite_autoincrement": True},
    )


class PipelineIdentity(SQLModel, table=True):
    """One row per pipeline: the grid its windows are cut on, where they are loaded, and the
    registration watermark.

    Windows cut on two grids leave a gap or an overlap, so a run with another timezone or
    granularity is refused until an operator re-tiles (`ledgerflow retile`). Only the scheduled
    registration advances `registered_until` (the end of the last window it registered); a
    backfill never does, so the schedule never skips what lies between."""

    __tablename__ = "ledgerflow_pipelines"

    pipeline_id: str = Field(primary_key=True, max_length=100)
    timezone: str = Field(max_length=64)
    granularity: str = Field(max_length=10)
    registered_until: datetime | None = _ts()
    # Where the pipeline's windows were loaded (`Target.identity()`): a run whose target names
    # another place is refused until an operator moves the pipeline (`ledgerflow retarget`).
    # NULL until the first registration of a ledger upgraded from version 2 records it.
    target: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class FenceCounter(SQLModel, table=True):
    """One row per pipeline: the last fence number a claim of any of its windows drew.

    One counter per pipeline, not one per window: a re-tile replaces windows with rows cut on
    another grid, and a claim of a re-cut window must still carry a number greater than every
    earlier claim of any window it overlaps. Its own table, not a column of
    `ledgerflow_pipelines`: a claim must draw a number even for a pipeline whose grid is not
    recorded yet (a ledger upgraded from version 1 before its first run), and it creates the row
    when missing."""

    __tablename__ = "ledgerflow_fence_counters"

    pipeline_id: str = Field(primary_key=True, max_length=100)
    fence: int = Field(sa_type=sa.BigInteger)


class SchemaVersion(SQLModel, table=True):
    """One row per ledger component: which schema version the database holds."""

    __tablename__ = "ledgerflow_schema"

    component: str = Field(primary_key=True, max_length=50)
    version: int
    applied_at: datetime = Field(sa_type=UTCDateTime)


RECORDS = PipelineRecordRow.__table__  # type: ignore[attr-defined]
"""The Core table, for the ledger's SQL."""
PIPELINES = PipelineIdentity.__table__  # type: ignore[attr-defined]
"""The pipelines' identities and watermarks, for the ledger's SQL."""
FENCE_COUNTERS = FenceCounter.__table__  # type: ignore[attr-defined]
"""The pipelines' fence counters, for the claim."""
CURRENT_TABLES: tuple[sa.Table, ...] = (RECORDS, PIPELINES, FENCE_COUNTERS)
"""The tables of the current schema version, besides `ledgerflow_schema`."""
