"""The ledger: every SQL statement that touches `pipeline_records` lives here.

One code path serves Postgres (asyncpg) and SQLite (aiosqlite). Each operation is one atomic
statement or one transaction. Writes made on behalf of a claimed window are fenced by its lease
token: when the lease was taken away (stale-lock cleanup, an operator), the write touches no row
and `LeaseLost` is raised, so a zombie worker can never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ledgerflow.errors import ConfigError, LeaseLost, LedgerSchemaError, TransientError
from ledgerflow.ledger import migrations
from ledgerflow.ledger.audit import AuditVerdict
from ledgerflow.ledger.models import (
    FENCE_COUNTERS,
    PIPELINES,
    RECORDS,
    SCHEMA_VERSION,
    AuditResult,
    Phase,
    PhaseStatus,
    PipelineRecord,
    SchemaVersion,
    Status,
    UTCDateTime,
)
from ledgerflow.redact import scrub_url, scrub_urls
from ledgerflow.windows import Grid, Window, split_registered, windows_before

COMPONENT = "pipeline_records"
_VERSIONS: sa.Table = SchemaVersion.__table__  # type: ignore[attr-defined]
_TABLES = [RECORDS, PIPELINES, FENCE_COUNTERS, _VERSIONS]
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
    "fence_token",
    "record_first_created_time",
}


class LedgerUnavailable(TransientError):
    """The ledger database could not be reached."""


@dataclass(frozen=True)
class Lease:
    """A claimed window: the row as it was claimed, and the token that fences later writes."""

    record: PipelineRecord
    token: str

    @property
    def fence(self) -> int:
        """The target's fencing number for this claim: greater than every earlier claim's."""
        return self.record.fence_token

    @property
    def id(self) -> int:
        assert self.record.id is not None
        return self.record.id

    @property
    def window(self) -> Window:
        return self.record.window


@dataclass(frozen=True)
class TilingFault:
    """A gap or an overlap between registered windows: `[start, end)` is left out or doubled."""

    kind: str  # "gap" or "overlap"
    start: datetime
    end: datetime

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class LedgerSummary:
    """What an operator needs first: counts, the oldest pending window, the lag, the failures."""

    pipeline_id: str
    counts: dict[str, int]
    oldest_pending: PipelineRecord | None
    newest_completed_end: datetime | None
    in_progress: list[PipelineRecord] = field(default_factory=list)
    failed: list[PipelineRecord] = field(default_factory=list)
    faults: list[TilingFault] = field(default_factory=list)
    """Gaps and overlaps between the first and the last registered window (normally none)."""

    def lag(self, now: datetime) -> timedelta | None:
        """How far the loaded data trails `now`: now minus the end of the newest loaded window."""
        return None if self.newest_completed_end is None else now - self.newest_completed_end


Chooser = Callable[[datetime | None, datetime], Sequence[Window]]
"""Picks the windows to register from (the registration watermark, the eligibility cutoff)."""


@dataclass(frozen=True)
class Registration:
    """What one registration chose and inserted."""

    windows: list[Window]
    new: int
    cutoff: datetime
    watermark: datetime | None
    earlier: list[Window] = field(default_factory=list)
    """Windows chosen because the config's start moved before the first registered window."""


@dataclass(frozen=True)
class Retile:
    """What a re-tile changed."""

    pipeline_id: str
    at: datetime
    old: Grid | None
    new: Grid
    removed: int


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
        values = {"version": version, "applied_at": _clock(self.dialect)}
        if insert:
            await conn.execute(
                _insert_ignoring_version(self.dialect, _VERSIONS).values(
                    component=COMPONENT, **values
                )
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
        """Insert windows that are not registered yet; return how many were new. Idempotent.

        Low level: no grid check and no watermark. Pipelines register through
        `register_windows`, which does both."""
        if not records:
            return 0
        async with self._begin() as conn:
            return await self._insert(conn, records, priority, now)

    async def register_windows(
        self,
        pipeline_id: str,
        grid: Grid,
        choose: Chooser,
        build: Callable[[Window], Mapping[str, Any]],
        *,
        lag: timedelta,
        scheduled: bool,
        priority: int = 0,
        dry_run: bool = False,
        now: datetime | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> Registration:
        """The one registration path, for scheduled runs and backfills alike, in one transaction:

        lock the pipeline's identity (made from `grid` on first use; a ledger registered before
        identities existed is adopted only if its last window lies on `grid`), refuse another
        grid, read the database clock (`now` overrides it in tests), let `choose` pick windows
        from the watermark and the cutoff (`now - lag`), refuse one that would overlap a
        registered window with other bounds, insert the rest, and, for the scheduled
        registration only, advance the watermark to the end of the last window chosen.

        `start` (and `end`) are the config's: when `start` lies before the first registered
        window, the windows from it up to that window are registered too (`windows_before`:
        `start` must be a grid boundary), without moving the watermark, so moving `start`
        earlier loads the earlier windows with no gap and no overlap."""
        async with self._connect() as conn:
            transaction = await conn.begin()
            try:
                identity = await self._lock_identity(conn, pipeline_id, grid, now)
                moment = now or await conn.scalar(sa.select(_clock(self.dialect)))
                assert moment is not None
                cutoff = moment - lag
                watermark = _as_utc(identity.registered_until)
                windows = list(choose(watermark, cutoff))
                earlier: list[Window] = []
                # Without a watermark the schedule itself begins at `start`.
                if start is not None and watermark is not None:
                    first = await self._first_start(conn, pipeline_id)
                    if first is not None:
                        earlier = windows_before(
                            start,
                            min(first, watermark),
                            cutoff,
                            end,
                            grid.timezone,
                            grid.granularity,
                        )
                fresh = await self._unregistered(conn, pipeline_id, earlier + windows)
                new = 0
                if fresh and not dry_run:
                    new = await self._insert(conn, [build(w) for w in fresh], priority, moment)
                if scheduled and windows and (watermark is None or windows[-1].end > watermark):
                    watermark = windows[-1].end
                    await conn.execute(
                        sa.update(PIPELINES)
                        .where(PIPELINES.c.pipeline_id == pipeline_id)
                        .values(registered_until=watermark, updated_at=_stamp(self.dialect, now))
                    )
            except BaseException:
                await transaction.rollback()
                raise
            await (transaction.rollback() if dry_run else transaction.commit())
        return Registration(
            earlier + windows, new if not dry_run else len(fresh), cutoff, watermark, earlier
        )

    @staticmethod
    async def _first_start(conn: AsyncConnection, pipeline_id: str) -> datetime | None:
        """Start of the pipeline's first registered window."""
        value = await conn.scalar(
            sa.select(sa.func.min(RECORDS.c.window_start_time)).where(
                RECORDS.c.pipeline_id == pipeline_id
            )
        )
        return _as_utc(value)

    async def _lock_identity(
        self, conn: AsyncConnection, pipeline_id: str, grid: Grid, now: datetime | None
    ) -> sa.Row[Any]:
        """The pipeline's identity row, locked until the transaction ends, checked against `grid`.

        The first statement writes: on Postgres it locks the row, on SQLite it takes the write
        lock before anything is read, so registrations and re-tiles of a pipeline never
        interleave."""
        mine = PIPELINES.c.pipeline_id == pipeline_id
        row = (
            await conn.execute(
                sa.update(PIPELINES)
                .where(mine)
                .values(updated_at=PIPELINES.c.updated_at)
                .returning(*PIPELINES.columns)
            )
        ).first()
        if row is None:
            watermark = await self._adoptable(conn, pipeline_id, grid)
            stamp = _stamp(self.dialect, now)
            await conn.execute(
                _insert_ignoring_duplicates(self.dialect, PIPELINES, ("pipeline_id",)).values(
                    pipeline_id=pipeline_id,
                    timezone=grid.timezone,
                    granularity=grid.granularity,
                    registered_until=watermark,
                    created_at=stamp,
                    updated_at=stamp,
                )
            )
            row = (await conn.execute(sa.select(PIPELINES).where(mine).with_for_update())).first()
            assert row is not None
        stored = Grid(row.timezone, row.granularity)
        if stored != grid:
            raise ConfigError(
                f"pipeline {pipeline_id!r} cuts its windows on another grid ("
                + "; ".join(stored.differences(grid))
                + "): windows on two grids leave a gap or an overlap. Put the config back, or "
                "re-tile from a boundary of both grids with "
                "`ledgerflow retile -c <config> --at <instant>`"
            )
        return row

    async def _adoptable(
        self, conn: AsyncConnection, pipeline_id: str, grid: Grid
    ) -> datetime | None:
        """For a ledger whose windows were registered before identities existed: the watermark
        to adopt (its last window's end), if its last window lies on `grid`; else ConfigError."""
        last = (
            await conn.execute(
                sa.select(
                    RECORDS.c.window_start_time,
                    RECORDS.c.window_end_time,
                    RECORDS.c.time_interval,
                )
                .where(RECORDS.c.pipeline_id == pipeline_id)
                .order_by(RECORDS.c.window_start_time.desc())
                .limit(1)
            )
        ).first()
        if last is None:
            return None
        start, end = _as_utc(last.window_start_time), _as_utc(last.window_end_time)
        assert start is not None and end is not None
        if not grid.holds(start, end):
            was = Grid(grid.timezone, last.time_interval)
            why = "; ".join(was.differences(grid)) or f"timezone is not {grid.timezone!r}?"
            raise ConfigError(
                f"pipeline {pipeline_id!r} has registered windows that are not on the configured "
                f"grid (timezone={grid.timezone!r}, granularity={grid.granularity!r}): its last "
                f"window [{start.isoformat()}, {end.isoformat()}) is not one of its windows "
                f"({why}). Put the config back to the grid that registered them, or re-tile "
                "with `ledgerflow retile -c <config> --at <instant>`"
            )
        return end

    async def _unregistered(
        self, conn: AsyncConnection, pipeline_id: str, windows: Sequence[Window]
    ) -> list[Window]:
        """`windows` minus those already registered; ConfigError if one would overlap."""
        if not windows:
            return []
        lo, hi = windows[0].start, windows[-1].end
        known = await conn.execute(
            sa.select(RECORDS.c.window_start_time, RECORDS.c.window_end_time).where(
                RECORDS.c.pipeline_id == pipeline_id,
                RECORDS.c.window_start_time < hi,
                RECORDS.c.window_end_time > lo,
            )
        )
        registered = [(_utc(a), _utc(b)) for a, b in known.all()]
        fresh, clash = split_registered(windows, registered)
        if clash is not None:
            window, (a, b) = clash
            raise ConfigError(
                f"window [{window.start.isoformat()}, {window.end.isoformat()}) of pipeline "
                f"{pipeline_id!r} overlaps the registered window [{a.isoformat()}, "
                f"{b.isoformat()}), cut on an earlier grid; register only after the re-tile "
                "instant, or choose a range the earlier windows do not cover"
            )
        return fresh

    async def _insert(
        self,
        conn: AsyncConnection,
        records: Sequence[Mapping[str, Any]],
        priority: int,
        now: datetime | None,
    ) -> int:
        # One reading of the database's clock stamps every row of the registration.
        stamp = now or await conn.scalar(sa.select(_clock(self.dialect)))
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
        # Bounded batches keep each statement under the drivers' parameter limits.
        for i in range(0, len(rows), 2000):
            result = await conn.execute(stmt, rows[i : i + 2000])
            inserted += len(result.all())
        return inserted

    async def identity(self, pipeline_id: str) -> tuple[Grid, datetime | None] | None:
        """The pipeline's stored grid and registration watermark, if it has registered yet."""
        async with self._connect() as conn:
            row = (
                await conn.execute(
                    sa.select(PIPELINES).where(PIPELINES.c.pipeline_id == pipeline_id)
                )
            ).first()
        if row is None:
            return None
        return Grid(row.timezone, row.granularity), _as_utc(row.registered_until)

    async def retile(
        self, pipeline_id: str, grid: Grid, at: datetime, *, now: datetime | None = None
    ) -> Retile:
        """Cut the pipeline's windows on `grid` from `at` on (an operator's explicit step).

        `at` must be a boundary of `grid` and the start or end of a registered window that no
        registered window straddles, at or before the registration watermark. PENDING windows
        from `at` on are removed (none of their rows counts as loaded: the new windows replace
        their spans in the target, so no row is loaded twice); any other window from `at` on
        (in progress, loaded or failed) refuses the re-tile. The watermark goes back to `at`,
        so the next scheduled run registers `grid`'s windows from there: no gap, no overlap."""
        at = _utc(at)
        if not grid.has_boundary(at):
            raise ConfigError(
                f"--at={at.isoformat()} is not a window boundary of the new grid "
                f"(timezone={grid.timezone!r}, granularity={grid.granularity!r}); pick one of "
                "its boundaries (see `ledgerflow plan`)"
            )
        mine = RECORDS.c.pipeline_id == pipeline_id
        async with self._begin() as conn:
            current = (
                await conn.execute(
                    sa.update(PIPELINES)
                    .where(PIPELINES.c.pipeline_id == pipeline_id)
                    .values(updated_at=PIPELINES.c.updated_at)
                    .returning(*PIPELINES.columns)
                )
            ).first()
            old = None if current is None else Grid(current.timezone, current.granularity)
            bounds = (
                await conn.execute(
                    sa.select(
                        sa.func.count(),
                        sa.func.max(RECORDS.c.window_end_time),
                        sa.func.sum(
                            sa.case(
                                (
                                    sa.or_(
                                        RECORDS.c.window_start_time == at,
                                        RECORDS.c.window_end_time == at,
                                    ),
                                    1,
                                ),
                                else_=0,
                            )
                        ),
                    ).where(mine)
                )
            ).one()
            registered, last_end, touching = int(bounds[0]), _as_utc(bounds[1]), bounds[2] or 0
            watermark = last_end if current is None else _as_utc(current.registered_until)
            if registered:
                straddling = (
                    await conn.execute(
                        sa.select(RECORDS.c.window_start_time, RECORDS.c.window_end_time)
                        .where(
                            mine, RECORDS.c.window_start_time < at, RECORDS.c.window_end_time > at
                        )
                        .limit(1)
                    )
                ).first()
                if straddling is not None:
                    raise ConfigError(
                        f"--at={at.isoformat()} falls inside the registered window "
                        f"[{_utc(straddling[0]).isoformat()}, {_utc(straddling[1]).isoformat()})"
                        f" of {pipeline_id!r}; re-tile at a boundary both grids share"
                    )
                if not touching:
                    raise ConfigError(
                        f"--at={at.isoformat()} is not the start or end of a registered window "
                        f"of {pipeline_id!r}; re-tile at a boundary both grids share"
                    )
                if watermark is not None and at > watermark:
                    raise ConfigError(
                        f"--at={at.isoformat()} is after the registration watermark "
                        f"{watermark.isoformat()} of {pipeline_id!r} (the end of the last "
                        "scheduled window): re-tiling there would leave a gap; pick an instant "
                        "at or before it"
                    )
            removed = await conn.execute(
                sa.delete(RECORDS).where(
                    mine,
                    RECORDS.c.window_start_time >= at,
                    RECORDS.c.pipeline_status == Status.PENDING.value,
                )
            )
            # Checked after the delete, inside the transaction: a window claimed meanwhile is
            # seen here and refuses the re-tile (the rollback restores what was removed).
            kept = (
                await conn.execute(
                    sa.select(
                        RECORDS.c.window_start_time, RECORDS.c.pipeline_status, sa.func.count()
                    )
                    .where(mine, RECORDS.c.window_start_time >= at)
                    .group_by(RECORDS.c.window_start_time, RECORDS.c.pipeline_status)
                    .order_by(RECORDS.c.window_start_time)
                    .limit(3)
                )
            ).all()
            if kept:
                listed = ", ".join(f"{_utc(s).isoformat()} {status}" for s, status, _ in kept)
                raise ConfigError(
                    f"cannot re-tile {pipeline_id!r} at {at.isoformat()}: windows from there on "
                    f"are already in progress, loaded or failed ({listed}, ...); re-tile at or "
                    "after the end of the last of them"
                )
            values = {
                "timezone": grid.timezone,
                "granularity": grid.granularity,
                "registered_until": at if registered else None,
                "updated_at": _stamp(self.dialect, now),
            }
            if current is None:
                await conn.execute(
                    sa.insert(PIPELINES).values(
                        pipeline_id=pipeline_id, created_at=_stamp(self.dialect, now), **values
                    )
                )
            else:
                await conn.execute(
                    sa.update(PIPELINES)
                    .where(PIPELINES.c.pipeline_id == pipeline_id)
                    .values(**values)
                )
        return Retile(pipeline_id, at, old, grid, removed.rowcount)

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
        lag: timedelta | None = None,
        cutoff: datetime | None = None,
        newest_first: bool = False,
        now: datetime | None = None,
    ) -> Lease | None:
        """Atomically take the next eligible PENDING window, or None when there is none.

        Eligible means `window_end_time <= cutoff`, where the cutoff is the database's clock
        minus `lag` (x_time_back); an explicit `cutoff` (or `now`) overrides the clock. Higher
        priority goes first, then the oldest (or newest) window. Postgres skips rows another
        claimer holds (FOR UPDATE SKIP LOCKED); SQLite runs the statement under its single
        write lock."""
        if lag is None and cutoff is None:
            raise ValueError("claim needs lag (x_time_back) or an explicit cutoff")
        if cutoff is None and now is not None and lag is not None:
            cutoff = now - lag
        token = str(uuid.uuid4())
        params = {
            "p_pipeline": pipeline_id,
            "p_cutoff": cutoff,
            "p_back": (lag or timedelta(0)).total_seconds(),
            "p_run": run_id[:100],
            "p_stamp": now,
            "p_token": token,
        }
        if self.dialect == "postgresql":
            # One statement: it draws the pipeline's next fence number and takes the window.
            async with self._single() as conn:
                row = (await conn.execute(_claim(self.dialect, newest_first), params)).first()
            return None if row is None else Lease(_row_to_record(row), token)
        # SQLite has no writing CTE: two statements in one transaction, under its write lock
        # (taken by the first, an UPDATE), so no other claim draws a number in between.
        async with self._begin() as conn:
            row = (await conn.execute(_claim(self.dialect, newest_first), params)).first()
            if row is None:
                return None
            await conn.execute(
                _record_fence(), {"p_pipeline": pipeline_id, "p_fence": row.fence_token}
            )
        return Lease(_row_to_record(row), token)

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
        stamp = _stamp(self.dialect, now)
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
        stamp = _stamp(self.dialect, now)
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
            now=now,
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
        stamp = _stamp(self.dialect, now)
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
            now=now,
        )

    async def start_phase(
        self, lease: Lease, phase: Phase, *, now: datetime | None = None
    ) -> PipelineRecord:
        """A transfer phase or the audit begins: its status IN_PROGRESS, its start stamped."""
        stamp = _stamp(self.dialect, now)
        prefix = _phase_prefix(phase)
        values = {f"{prefix}_status": PhaseStatus.IN_PROGRESS.value, f"{prefix}_start_time": stamp}
        return await self.update(lease, f"{phase.value} start", values, now=now)

    async def finish_phase(
        self,
        lease: Lease,
        phase: Phase,
        *,
        failed: bool = False,
        rows: int | None = None,
        manifest: str | None = None,
        now: datetime | None = None,
    ) -> PipelineRecord:
        """A transfer phase ended: COMPLETED (and recorded as the window's last phase, so a
        re-claimed window can resume after it) or FAILED. `rows` is what the phase moved
        (extracted_count for SOURCE_TO_STAGE, loaded_count for STAGE_TO_TARGET); `manifest` is
        the stage's manifest (SOURCE_TO_STAGE)."""
        stamp = _stamp(self.dialect, now)
        prefix = _phase_prefix(phase)
        status = PhaseStatus.FAILED if failed else PhaseStatus.COMPLETED
        values: dict[str, Any] = {f"{prefix}_status": status.value, f"{prefix}_end_time": stamp}
        if rows is not None:
            values[_PHASE_ROWS[phase]] = rows
        if manifest is not None:
            values["stage_manifest"] = manifest
        if not failed:
            values["phase_completed"] = phase.value
        return await self.update(lease, f"{phase.value} {status.value.lower()}", values, now=now)

    async def record_counts(
        self, lease: Lease, source: int, target: int, *, now: datetime | None = None
    ) -> PipelineRecord:
        """Pre-validation counted both sides and the window will be transferred."""
        values = {
            "source_count": source,
            "target_count": target,
            "phase_completed": Phase.PRE_VALIDATION.value,
        }
        return await self.update(lease, "pre-validation", values, now=now)

    async def skip_transfer(
        self, lease: Lease, source: int, target: int, *, now: datetime | None = None
    ) -> PipelineRecord:
        """Pre-validation found equal counts: complete the window with audit MATCH and its
        transfer phases SKIPPED."""
        stamp = _stamp(self.dialect, now)
        values = {
            "source_count": source,
            "target_count": target,
            "count_difference": source - target,
            "percentage_difference": 0,
            "audit_tolerance_percent": None,
            "source_to_stage_ingestion_status": PhaseStatus.SKIPPED.value,
            "stage_to_target_ingestion_status": PhaseStatus.SKIPPED.value,
            "audit_status": PhaseStatus.SKIPPED.value,
            "audit_result": AuditResult.MATCH.value,
            "audit_start_time": stamp,
            "audit_end_time": stamp,
            "phase_completed": Phase.PRE_VALIDATION.value,
        }
        return await self.complete(lease, values, now=now)

    async def finish_audit(
        self,
        lease: Lease,
        verdict: AuditVerdict,
        *,
        started: datetime,
        now: datetime | None = None,
    ) -> PipelineRecord:
        """Record the audit's recounts and verdict; complete the window when it passed, fail it
        (with the verdict's explanation as its error) when it did not."""
        stamp = _stamp(self.dialect, now)
        values = {
            "audit_start_time": started,
            "audit_end_time": stamp,
            "audit_status": PhaseStatus.COMPLETED.value,
            "audit_result": verdict.result.value,
            "source_count": verdict.source,
            "target_count": verdict.target,
            "count_difference": verdict.source - verdict.target,
            "percentage_difference": verdict.percentage,
            "audit_tolerance_percent": verdict.tolerance,
            "phase_completed": Phase.AUDIT.value,
        }
        if verdict.passed:
            return await self.complete(lease, values, now=now)
        return await self.fail(lease, str(verdict.mismatch()), values, now=now)

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
        # The lock's age by the database's clock, the one that stamped it: a releaser whose
        # own clock runs ahead must not revoke a live lease, nor one behind keep a dead one.
        oldest = (
            _clock(self.dialect, back=sa.literal(older_than.total_seconds(), sa.Float()))
            if now is None
            else sa.literal(now - older_than, UTCDateTime())
        )
        attempts = RECORDS.c.retry_attempt + 1
        stmt = (
            sa.update(RECORDS)
            .where(
                RECORDS.c.pipeline_id == pipeline_id,
                RECORDS.c.pipeline_status == Status.IN_PROGRESS.value,
                RECORDS.c.pipeline_locked_at < oldest,
            )
            .values(
                pipeline_status=sa.case(
                    (attempts >= max_attempts, Status.FAILED.value), else_=Status.PENDING.value
                ),
                retry_attempt=attempts,
                lease_token=None,
                pipeline_locked_at=None,
                record_last_updated_time=_stamp(self.dialect, now),
                error_message=sa.func.coalesce(RECORDS.c.error_message, "")
                + "stale lock released at "
                + _clock_text(self.dialect, now)
                + f" (no heartbeat for {older_than}); ",
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

        The stage record is kept: a window that failed while loading resumes at the load. A
        pending forced reload stays forced: `force_reload` is cleared only by a completed load."""
        return await self._reopen(
            pipeline_id, [Status.FAILED], ids, start, end, None, now, keep_stage=True, force=None
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
        force: bool | None = False,
    ) -> list[PipelineRecord]:
        """`force=None` keeps each window's `force_reload` as it is."""
        stamp = _stamp(self.dialect, now)
        cleared: dict[str, Any] = dict(_LOAD_RESET if keep_stage else _ALL_RESET)
        if force is not None:
            cleared["force_reload"] = force
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
                pipeline_end_time=None,
                **cleared,
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

    async def count_eligible(
        self, pipeline_id: str, *, lag: timedelta, now: datetime | None = None
    ) -> int:
        """PENDING windows a claim would take now: those ending at or before the cutoff (the
        database's clock, or `now`, minus `lag`), as `claim` decides it."""
        back = sa.literal(lag.total_seconds(), sa.Float())
        cutoff = _clock(self.dialect, back) if now is None else sa.literal(now - lag, UTCDateTime())
        stmt = sa.select(sa.func.count()).where(
            RECORDS.c.pipeline_id == pipeline_id,
            RECORDS.c.pipeline_status == Status.PENDING.value,
            RECORDS.c.window_end_time <= cutoff,
        )
        async with self._connect() as conn:
            return int(await conn.scalar(stmt) or 0)

    async def summary(
        self,
        pipeline_id: str,
        *,
        failed_limit: int = 20,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> LedgerSummary:
        """Counts per status, the oldest pending window, the newest loaded one, the failures.

        `start` (and `end`) are the config's: a span from `start` to the first registered
        window is a gap too (start moved earlier and the next run has not registered it yet,
        or refused to)."""
        mine = RECORDS.c.pipeline_id == pipeline_id
        async with self._connect() as conn:
            first = await self._first_start(conn, pipeline_id)
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
            faults=_before_first(start, end, first) + await self.tiling_faults(pipeline_id),
        )

    async def tiling_faults(self, pipeline_id: str, *, limit: int = 100) -> list[TilingFault]:
        """Gaps and overlaps among the registered windows, oldest first (at most `limit`).

        One pass in SQL: each window is compared with the furthest end of the windows that
        start before it; a later start is a gap, an earlier one an overlap."""
        reach = sa.func.max(RECORDS.c.window_end_time).over(
            order_by=RECORDS.c.window_start_time, rows=(None, -1)
        )
        ordered = (
            sa.select(
                RECORDS.c.window_start_time.label("lo"),
                RECORDS.c.window_end_time.label("hi"),
                reach.label("reach"),
            )
            .where(RECORDS.c.pipeline_id == pipeline_id)
            .subquery()
        )
        stmt = (
            sa.select(ordered.c.lo, ordered.c.hi, ordered.c.reach)
            .where(ordered.c.reach.is_not(None), ordered.c.lo != ordered.c.reach)
            .order_by(ordered.c.lo)
            .limit(limit)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(stmt)).all()
        faults = []
        for lo, hi, reach_ in rows:
            start, end, furthest = _utc(lo), _utc(hi), _utc(reach_)
            if start > furthest:
                faults.append(TilingFault("gap", furthest, start))
            else:
                faults.append(TilingFault("overlap", start, min(end, furthest)))
        return faults

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
            url = scrub_url(self._engine.url.render_as_string(hide_password=True))
            raise LedgerUnavailable(
                f"cannot reach the ledger at {url}: {scrub_urls(str(exc))}"
            ) from exc
        return conn

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)


_PHASE_COLUMNS = {
    Phase.SOURCE_TO_STAGE: "source_to_stage_ingestion",
    Phase.STAGE_TO_TARGET: "stage_to_target_ingestion",
    Phase.AUDIT: "audit",
}
"""The prefix of each phase's `_status`, `_start_time` and `_end_time` columns."""

_PHASE_ROWS = {Phase.SOURCE_TO_STAGE: "extracted_count", Phase.STAGE_TO_TARGET: "loaded_count"}


def _before_first(
    start: datetime | None, end: datetime | None, first: datetime | None
) -> list[TilingFault]:
    """The gap from the config's `start` to the first registered window, if start is earlier."""
    if start is None or first is None:
        return []
    lo, hi = _utc(start), first if end is None else min(first, _utc(end))
    return [TilingFault("gap", lo, hi)] if lo < hi else []


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


def _claim_statement(dialect: str, newest_first: bool) -> sa.Update:
    """The claim, built once per dialect and order with bound parameters (its cache key is
    computed once). The stamp and the cutoff are the database's clock unless the caller
    overrides them (`p_stamp`, `p_cutoff`), so one statement serves both."""
    order = RECORDS.c.window_start_time.desc() if newest_first else RECORDS.c.window_start_time
    cutoff = sa.func.coalesce(
        sa.bindparam("p_cutoff", type_=UTCDateTime()),
        _clock(dialect, back=sa.bindparam("p_back", type_=sa.Float())),
    )
    picking = (
        sa.select(RECORDS.c.id)
        .where(
            RECORDS.c.pipeline_id == sa.bindparam("p_pipeline"),
            # A literal, not a parameter: a prepared (generic) plan can then prove the partial
            # claim index's predicate and use it.
            RECORDS.c.pipeline_status == sa.literal_column("'PENDING'"),
            RECORDS.c.window_end_time <= cutoff,
        )
        .order_by(RECORDS.c.priority.desc(), order)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if dialect == "postgresql":
        # One statement: the pick, then the pipeline's counter raised only if a window was
        # picked (the counter's row lock serializes the claims of one pipeline for this
        # statement only), then the window takes that number.
        chosen = picking.cte("pick")
        pick: Any = sa.select(chosen.c.id).scalar_subquery()
        fence: Any = _next_fence_cte(chosen)
    else:
        pick = picking.scalar_subquery()
        fence = _next_fence_sqlite()
    stamp = sa.func.coalesce(sa.bindparam("p_stamp", type_=UTCDateTime()), _clock(dialect))
    return (
        sa.update(RECORDS)
        .where(RECORDS.c.id == pick)
        .values(
            pipeline_status=Status.IN_PROGRESS.value,
            dag_run_id=sa.bindparam("p_run"),
            pipeline_locked_at=stamp,
            lease_token=sa.bindparam("p_token"),
            # The target's fence: the pipeline's next number, so strictly greater than every
            # earlier claim of any of its windows, including windows a re-tile replaced (a
            # per-window number would start again for a re-cut window). Revocations
            # (release_stale, reopen) need not raise it: until the next claim nobody newer writes
            # the target, so a revoked worker committing meanwhile is the same as one that
            # committed just before losing its lease (the after_load_before_ledger crash the
            # next owner's load replaces), and the next claim's number locks it out.
            fence_token=fence,
            pipeline_start_time=stamp,
            pipeline_end_time=None,
            error_message=None,
            record_last_updated_time=stamp,
        )
        .returning(*RECORDS.columns)
    )


def _next_fence_cte(chosen: sa.CTE) -> Any:
    """Postgres: the pipeline's next fence number, from a writing CTE that raises its counter
    (inserting it at 1) for each row of `chosen` (the picked window, or none)."""
    counter = FENCE_COUNTERS.c
    rows = sa.select(sa.bindparam("p_pipeline", type_=sa.String()), sa.literal(1, sa.BigInteger()))
    bump = (
        postgresql.insert(FENCE_COUNTERS)
        .from_select(["pipeline_id", "fence"], rows.select_from(chosen))
        .on_conflict_do_update(index_elements=["pipeline_id"], set_={"fence": counter.fence + 1})
        .returning(counter.fence)
        .cte("fence_bump")
    )
    return sa.select(bump.c.fence).scalar_subquery()


def _next_fence_sqlite() -> Any:
    """SQLite: the pipeline's counter plus one, read under the claim's write lock;
    `_record_fence` stores it in the same transaction."""
    last = (
        sa.select(FENCE_COUNTERS.c.fence)
        .where(FENCE_COUNTERS.c.pipeline_id == sa.bindparam("p_pipeline"))
        .scalar_subquery()
    )
    return sa.func.coalesce(last, 0) + 1


def _record_fence() -> Any:
    """SQLite: store the number the claim just drew as the pipeline's last."""
    return (
        sqlite.insert(FENCE_COUNTERS)
        .values(pipeline_id=sa.bindparam("p_pipeline"), fence=sa.bindparam("p_fence"))
        .on_conflict_do_update(
            index_elements=["pipeline_id"],
            set_={"fence": sa.func.max(FENCE_COUNTERS.c.fence, sa.bindparam("p_fence"))},
        )
    )


_CLAIMS: dict[tuple[str, bool], sa.Update] = {}


def _claim(dialect: str, newest_first: bool) -> sa.Update:
    key = (dialect, newest_first)
    if key not in _CLAIMS:
        _CLAIMS[key] = _claim_statement(dialect, newest_first)
    return _CLAIMS[key]


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
