"""The ledger: every SQL statement that touches `pipeline_records` lives here.

One code path serves Postgres (asyncpg) and SQLite (aiosqlite). Each operation is one atomic
statement or one transaction. Writes made on behalf of a claimed window are fenced by its lease
token: when the lease was taken away (stale-lock cleanup, an operator), the write touches no row
and `LeaseLost` is raised, so a zombie worker can never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ledgerflow.errors import LeaseLost, LedgerSchemaError, TransientError
from ledgerflow.ledger import migrations
from ledgerflow.ledger.models import (
    RECORDS,
    SCHEMA_VERSION,
    PipelineRecord,
    SchemaVersion,
    Status,
    UTCDateTime,
)
from ledgerflow.windows import Window

COMPONENT = "pipeline_records"
_VERSIONS: sa.Table = SchemaVersion.__table__  # type: ignore[attr-defined]
_TABLES = [RECORDS, _VERSIONS]
"""Every table the ledger owns, in creation order."""
_SCHEMA_LOCK = 0x1EDF10
"""The Postgres advisory lock key that serialises schema creation and upgrades."""
UPDATABLE = frozenset(c.name for c in RECORDS.columns) - {
    "id",
    "pipeline_id",
    "window_start_time",
    "window_end_time",
    "target_day",
    "time_interval",
    "lease_token",
    "record_first_created_time",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class LedgerUnavailable(TransientError):
    """The ledger database could not be reached."""


@dataclass(frozen=True)
class Lease:
    """A claimed window: the row as it was claimed, and the token that fences later writes."""

    record: PipelineRecord
    token: str

    @property
    def id(self) -> int:
        assert self.record.id is not None
        return self.record.id

    @property
    def window(self) -> Window:
        return self.record.window


@dataclass(frozen=True)
class LedgerSummary:
    """What an operator needs first: counts, the oldest pending window, the lag, the failures."""

    pipeline_id: str
    counts: dict[str, int]
    oldest_pending: PipelineRecord | None
    newest_completed_end: datetime | None
    in_progress: list[PipelineRecord] = field(default_factory=list)
    failed: list[PipelineRecord] = field(default_factory=list)

    def lag(self, now: datetime) -> timedelta | None:
        """How far the loaded data trails `now`: now minus the end of the newest loaded window."""
        return None if self.newest_completed_end is None else now - self.newest_completed_end


def _row_to_record(row: sa.Row[Any]) -> PipelineRecord:
    # The driver and column types already produced typed values; validating again costs more
    # than the claim's round trip.
    return PipelineRecord.model_construct(**row._mapping)


def _insert_ignoring_duplicates(dialect: str, table: sa.Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(
            index_elements=["pipeline_id", "window_start_time"]
        )
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(
            index_elements=["pipeline_id", "window_start_time"]
        )
    raise LedgerSchemaError(
        f"ledger dialect {dialect!r} is not supported; use postgresql or sqlite"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(
    url: str, *, pool_size: int = 5, autocommit: bool = False, pooled: bool = True
) -> AsyncEngine:
    """An async engine for a `postgresql+asyncpg://` or `sqlite+aiosqlite://` URL.

    `autocommit` engines run each statement as its own transaction: for the single-statement
    operations, which then need no BEGIN/COMMIT round trips.
    """
    parsed = sa.engine.make_url(url)
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if not pooled:
        options["poolclass"] = NullPool
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 30}, **options)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() != "asyncpg":
            raise LedgerSchemaError(
                f"ledger URL driver {parsed.get_driver_name()!r} is not async; "
                "use postgresql+asyncpg://user@host/db"
            )
        # No pre-ping: it costs a round trip per checkout. A dropped connection fails one
        # statement, which is transient and retried; recycling keeps idle ones fresh.
        if pooled:
            options.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
        return create_async_engine(url, **options)
    raise LedgerSchemaError(
        f"ledger URL backend {parsed.get_backend_name()!r} is not supported; "
        "allowed: postgresql+asyncpg://... or sqlite+aiosqlite:///path"
    )


class Ledger:
    """Operations on the ledger. Construct with an engine, or `Ledger.from_url(url)`."""

    def __init__(self, engine: AsyncEngine, autocommit: AsyncEngine | None = None) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._autocommit = autocommit or engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    def from_url(cls, url: str, *, pool_size: int = 5, pooled: bool = True) -> Ledger:
        """`pooled=False` opens a connection per operation and keeps none idle."""
        # Two engines: switching one connection's isolation level per checkout costs round trips.
        return cls(
            make_engine(url, pool_size=pool_size, pooled=pooled),
            make_engine(url, pool_size=pool_size, autocommit=True, pooled=pooled),
        )

    async def close(self) -> None:
        await self.engine.dispose()
        await self._autocommit.dispose()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- schema -------------------------------------------------------------------------------

    async def create_schema(self) -> list[int]:
        """Create the schema at this ledgerflow's version, or upgrade an older one in place.

        Safe to run again and from several workers at once: the check and the upgrade run in one
        transaction under a lock (a transaction-scoped advisory lock on Postgres, SQLite's write
        lock), so one migrates and the others find it done. Returns the versions applied (empty
        when the schema was already current or was created fresh).
        """
        async with self._begin() as conn:
            await self._lock_schema(conn)
            found = await self._stored_version(conn)
            if found is None:
                await conn.run_sync(
                    lambda sync: SchemaVersion.metadata.create_all(sync, tables=_TABLES)
                )
                await self._stamp(conn, SCHEMA_VERSION, insert=True)
                return []
            if found > SCHEMA_VERSION:
                raise _version_error(found)
            if found == SCHEMA_VERSION:
                return []
            applied = await conn.run_sync(
                lambda sync: migrations.upgrade(sync, found, SCHEMA_VERSION)
            )
            await self._stamp(conn, SCHEMA_VERSION, insert=False)
            return applied

    async def check_schema(self) -> None:
        """Raise LedgerSchemaError unless the schema exists at this ledgerflow's version."""
        async with self._connect() as conn:
            found = await self._stored_version(conn)
        if found is None:
            raise LedgerSchemaError(
                "the ledger has no ledgerflow schema yet; run `ledgerflow init` "
                "(or Ledger.create_schema()) once"
            )
        if found != SCHEMA_VERSION:
            raise _version_error(found)

    async def _lock_schema(self, conn: AsyncConnection) -> None:
        if self.dialect == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
        else:
            # pysqlite opens no transaction before DDL; take the write lock now, so a second
            # process waits here (busy_timeout) instead of migrating the same tables again.
            await conn.exec_driver_sql("BEGIN IMMEDIATE")

    @staticmethod
    async def _stored_version(conn: AsyncConnection) -> int | None:
        """The stamped version, or None when the ledger has no ledgerflow tables yet."""
        has = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(_VERSIONS.name))
        if not has:
            return None
        found = await conn.scalar(
            sa.select(_VERSIONS.c.version).where(_VERSIONS.c.component == COMPONENT)
        )
        return None if found is None else int(found)

    async def _stamp(self, conn: AsyncConnection, version: int, *, insert: bool) -> None:
        values = {"version": version, "applied_at": utcnow()}
        if insert:
            await conn.execute(
                _insert_ignoring_version(self.dialect, _VERSIONS),
                {"component": COMPONENT, **values},
            )
        else:
            await conn.execute(
                sa.update(_VERSIONS).where(_VERSIONS.c.component == COMPONENT).values(**values)
            )

    # --- registration -------------------------------------------------------------------------

    async def register(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        priority: int = 0,
        now: datetime | None = None,
    ) -> int:
        """Insert windows that are not registered yet; return how many were new. Idempotent."""
        if not records:
            return 0
        stamp = now or utcnow()
        rows = [
            {
                **r,
                "priority": priority,
                "pipeline_status": Status.PENDING.value,
                "record_first_created_time": stamp,
                "record_last_updated_time": stamp,
            }
            for r in records
        ]
        stmt = _insert_ignoring_duplicates(self.dialect, RECORDS).returning(RECORDS.c.id)
        inserted = 0
        async with self._begin() as conn:
            # Bounded batches keep each statement under the drivers' parameter limits.
            for i in range(0, len(rows), 2000):
                result = await conn.execute(stmt, rows[i : i + 2000])
                inserted += len(result.all())
        return inserted

    async def last_window_end(self, pipeline_id: str) -> datetime | None:
        """End of the latest registered window, where registration continues from."""
        async with self._connect() as conn:
            value = await conn.scalar(
                sa.select(sa.func.max(RECORDS.c.window_end_time)).where(
                    RECORDS.c.pipeline_id == pipeline_id
                )
            )
        return _as_utc(value)

    # --- the claim ----------------------------------------------------------------------------

    async def claim(
        self,
        pipeline_id: str,
        run_id: str,
        *,
        cutoff: datetime,
        newest_first: bool = False,
        now: datetime | None = None,
    ) -> Lease | None:
        """Atomically take the next eligible PENDING window, or None when there is none.

        Eligible means `window_end_time <= cutoff`. Higher priority goes first, then the oldest
        (or newest) window. Postgres skips rows another claimer holds (FOR UPDATE SKIP LOCKED);
        SQLite runs the statement under its single write lock.
        """
        stamp = now or utcnow()
        token = str(uuid.uuid4())
        params = {
            "p_pipeline": pipeline_id,
            "p_cutoff": cutoff,
            "p_run": run_id[:100],
            "p_stamp": stamp,
            "p_token": token,
        }
        async with self._single() as conn:
            row = (await conn.execute(_CLAIM[newest_first], params)).first()
        return None if row is None else Lease(_row_to_record(row), token)

    # --- fenced writes ------------------------------------------------------------------------

    async def update(
        self, lease: Lease, action: str, values: Mapping[str, Any], *, now: datetime | None = None
    ) -> PipelineRecord:
        """Write `values` to the leased window; raise LeaseLost (writing nothing) if it is gone.

        Every fenced write also refreshes `pipeline_locked_at`, so progress counts as a heartbeat.
        """
        unknown = set(values) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot update ledger columns {sorted(unknown)}")
        stamp = now or utcnow()
        stmt = (
            sa.update(RECORDS)
            .where(
                RECORDS.c.id == lease.id,
                RECORDS.c.lease_token == lease.token,
                RECORDS.c.pipeline_status == Status.IN_PROGRESS.value,
            )
            .values(**{"pipeline_locked_at": stamp, "record_last_updated_time": stamp, **values})
            .returning(*RECORDS.columns)
        )
        async with self._single() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None:
            raise LeaseLost(lease.id, action)
        return _row_to_record(row)

    async def heartbeat(self, lease: Lease, *, now: datetime | None = None) -> None:
        """Tell stale-lock cleanup this worker is alive."""
        await self.update(lease, "heartbeat", {}, now=now)

    async def complete(
        self, lease: Lease, values: Mapping[str, Any] | None = None, *, now: datetime | None = None
    ) -> PipelineRecord:
        """Mark the window COMPLETED and drop the lease."""
        stamp = now or utcnow()
        return await self.update(
            lease,
            "complete",
            {
                **(values or {}),
                "pipeline_status": Status.COMPLETED.value,
                "pipeline_end_time": stamp,
                "pipeline_locked_at": None,
                "error_message": None,
                "force_reload": False,
            },
            now=stamp,
        )

    async def fail(
        self,
        lease: Lease,
        error: str,
        values: Mapping[str, Any] | None = None,
        *,
        now: datetime | None = None,
    ) -> PipelineRecord:
        """Mark the window FAILED, keeping the error text, and drop the lease."""
        stamp = now or utcnow()
        return await self.update(
            lease,
            "fail",
            {
                **(values or {}),
                "pipeline_status": Status.FAILED.value,
                "pipeline_end_time": stamp,
                "pipeline_locked_at": None,
                "error_message": error[:4000],
            },
            now=stamp,
        )

    # --- operator actions ---------------------------------------------------------------------

    async def release_stale(
        self,
        pipeline_id: str,
        *,
        older_than: timedelta,
        max_attempts: int,
        now: datetime | None = None,
    ) -> list[PipelineRecord]:
        """IN_PROGRESS windows whose lock is older than `older_than` go back to PENDING with
        `retry_attempt + 1`, or to FAILED once `max_attempts` are used up. Their lease is revoked,
        so the stopped worker (if it ever wakes) cannot write."""
        stamp = now or utcnow()
        attempts = RECORDS.c.retry_attempt + 1
        stmt = (
            sa.update(RECORDS)
            .where(
                RECORDS.c.pipeline_id == pipeline_id,
                RECORDS.c.pipeline_status == Status.IN_PROGRESS.value,
                RECORDS.c.pipeline_locked_at < stamp - older_than,
            )
            .values(
                pipeline_status=sa.case(
                    (attempts >= max_attempts, Status.FAILED.value), else_=Status.PENDING.value
                ),
                retry_attempt=attempts,
                lease_token=None,
                pipeline_locked_at=None,
                record_last_updated_time=stamp,
                error_message=sa.func.coalesce(RECORDS.c.error_message, "")
                + f"stale lock released at {stamp.isoformat()} (no heartbeat for {older_than}); ",
            )
            .returning(*RECORDS.columns)
        )
        async with self._single() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_row_to_record(r) for r in rows]

    async def reset_failed(
        self,
        pipeline_id: str,
        *,
        ids: Iterable[int] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        now: datetime | None = None,
    ) -> list[PipelineRecord]:
        """FAILED windows (all, chosen ids, or those starting in `[start, end)`) back to PENDING.

        The stage record is kept: a window that failed while loading resumes at the load."""
        return await self._reopen(
            pipeline_id, [Status.FAILED], ids, start, end, None, now, keep_stage=True
        )

    async def reopen(
        self,
        pipeline_id: str,
        ids: Iterable[int],
        reason: str,
        *,
        force: bool = False,
        now: datetime | None = None,
    ) -> list[PipelineRecord]:
        """COMPLETED or FAILED windows back to PENDING (late data, an operator's reload). The
        stage record is dropped: the window is extracted again. `force` makes the next run load
        it even when source and target counts already match."""
        statuses = [Status.COMPLETED, Status.FAILED]
        return await self._reopen(
            pipeline_id,
            statuses,
            list(ids),
            None,
            None,
            reason,
            now,
            keep_stage=False,
            force=force,
        )

    async def _reopen(
        self,
        pipeline_id: str,
        statuses: Sequence[Status],
        ids: Iterable[int] | None,
        start: datetime | None,
        end: datetime | None,
        reason: str | None,
        now: datetime | None,
        *,
        keep_stage: bool,
        force: bool = False,
    ) -> list[PipelineRecord]:
        stamp = now or utcnow()
        stage: dict[str, Any] = (
            {} if keep_stage else {"phase_completed": None, "stage_manifest": None}
        )
        conditions = [
            RECORDS.c.pipeline_id == pipeline_id,
            RECORDS.c.pipeline_status.in_([s.value for s in statuses]),
        ]
        if ids is not None:
            conditions.append(RECORDS.c.id.in_(list(ids)))
        if start is not None:
            conditions.append(RECORDS.c.window_start_time >= start)
        if end is not None:
            conditions.append(RECORDS.c.window_start_time < end)
        stmt = (
            sa.update(RECORDS)
            .where(*conditions)
            .values(
                pipeline_status=Status.PENDING.value,
                retry_attempt=0,
                lease_token=None,
                pipeline_locked_at=None,
                error_message=reason,
                force_reload=force,
                **stage,
                record_last_updated_time=stamp,
            )
            .returning(*RECORDS.columns)
        )
        async with self._single() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_row_to_record(r) for r in rows]

    # --- reads --------------------------------------------------------------------------------

    async def get(self, record_id: int) -> PipelineRecord | None:
        async with self._connect() as conn:
            row = (await conn.execute(sa.select(RECORDS).where(RECORDS.c.id == record_id))).first()
        return None if row is None else _row_to_record(row)

    async def windows(
        self,
        pipeline_id: str,
        *,
        statuses: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[PipelineRecord]:
        """Windows of a pipeline, filtered by status and by start time in `[start, end)`."""
        stmt = sa.select(RECORDS).where(RECORDS.c.pipeline_id == pipeline_id)
        if statuses:
            stmt = stmt.where(RECORDS.c.pipeline_status.in_(list(statuses)))
        if start is not None:
            stmt = stmt.where(RECORDS.c.window_start_time >= start)
        if end is not None:
            stmt = stmt.where(RECORDS.c.window_start_time < end)
        column = RECORDS.c.window_start_time
        stmt = stmt.order_by(column.desc() if newest_first else column)
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self._connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_row_to_record(r) for r in rows]

    async def summary(self, pipeline_id: str, *, failed_limit: int = 20) -> LedgerSummary:
        """Counts per status, the oldest pending window, the newest loaded one, the failures."""
        mine = RECORDS.c.pipeline_id == pipeline_id
        async with self._connect() as conn:
            counted = await conn.execute(
                sa.select(RECORDS.c.pipeline_status, sa.func.count())
                .where(mine)
                .group_by(RECORDS.c.pipeline_status)
            )
            counts = {str(s): int(n) for s, n in counted.all()}
            newest = await conn.scalar(
                sa.select(sa.func.max(RECORDS.c.window_end_time)).where(
                    mine, RECORDS.c.pipeline_status == Status.COMPLETED.value
                )
            )
        oldest = await self.windows(pipeline_id, statuses=[Status.PENDING.value], limit=1)
        running = await self.windows(pipeline_id, statuses=[Status.IN_PROGRESS.value])
        failed = await self.windows(
            pipeline_id, statuses=[Status.FAILED.value], limit=failed_limit, newest_first=True
        )
        return LedgerSummary(
            pipeline_id=pipeline_id,
            counts={s.value: counts.get(s.value, 0) for s in Status},
            oldest_pending=oldest[0] if oldest else None,
            newest_completed_end=_as_utc(newest),
            in_progress=running,
            failed=failed,
        )

    # --- plumbing -----------------------------------------------------------------------------

    def _begin(self) -> _Guarded:
        return _Guarded(self.engine, begin=True)

    def _connect(self) -> _Guarded:
        return _Guarded(self.engine, begin=False)

    def _single(self) -> _Guarded:
        """A connection in autocommit mode, for one statement (atomic on its own): no
        BEGIN/COMMIT round trips on the hot path."""
        return _Guarded(self._autocommit, begin=False)


class _Guarded:
    """A connection (optionally inside a transaction) whose connect errors are translated."""

    def __init__(self, engine: AsyncEngine, *, begin: bool) -> None:
        self._engine = engine
        self._begin = begin
        self._cm: Any = None

    async def __aenter__(self) -> AsyncConnection:
        self._cm = self._engine.begin() if self._begin else self._engine.connect()
        try:
            conn: AsyncConnection = await self._cm.__aenter__()
        except (OSError, OperationalError, DBAPIError) as exc:
            url = self._engine.url.render_as_string(hide_password=True)
            raise LedgerUnavailable(f"cannot reach the ledger at {url}: {exc}") from exc
        return conn

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)


def _claim_statement(newest_first: bool) -> sa.Update:
    """The claim, built once per order with bound parameters (its cache key is computed once)."""
    order = RECORDS.c.window_start_time.desc() if newest_first else RECORDS.c.window_start_time
    pick = (
        sa.select(RECORDS.c.id)
        .where(
            RECORDS.c.pipeline_id == sa.bindparam("p_pipeline"),
            # A literal, not a parameter: a prepared (generic) plan can then prove the partial
            # claim index's predicate and use it.
            RECORDS.c.pipeline_status == sa.literal_column("'PENDING'"),
            RECORDS.c.window_end_time <= sa.bindparam("p_cutoff", type_=UTCDateTime()),
        )
        .order_by(RECORDS.c.priority.desc(), order)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    stamp = sa.bindparam("p_stamp", type_=UTCDateTime())
    return (
        sa.update(RECORDS)
        .where(RECORDS.c.id == pick)
        .values(
            pipeline_status=Status.IN_PROGRESS.value,
            dag_run_id=sa.bindparam("p_run"),
            pipeline_locked_at=stamp,
            lease_token=sa.bindparam("p_token"),
            pipeline_start_time=stamp,
            pipeline_end_time=None,
            error_message=None,
            record_last_updated_time=stamp,
        )
        .returning(*RECORDS.columns)
    )


_CLAIM = {False: _claim_statement(False), True: _claim_statement(True)}


def _insert_ignoring_version(dialect: str, table: sa.Table) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["component"])
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=["component"])


def _version_error(found: int | None) -> LedgerSchemaError:
    if found is not None and found > SCHEMA_VERSION:
        return LedgerSchemaError(
            f"the ledger's schema is version {found}, newer than this ledgerflow understands "
            f"({SCHEMA_VERSION}); upgrade ledgerflow"
        )
    return LedgerSchemaError(
        f"the ledger's schema is version {found}, this ledgerflow needs {SCHEMA_VERSION}; "
        "run `ledgerflow init` to migrate"
    )


def _as_utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite aggregates bypass the column type
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
