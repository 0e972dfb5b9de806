"""Registering windows: the one registration path, the pipeline's grid identity, and the
registration watermark."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ledgerflow.errors import ConfigError
from ledgerflow.ledger.base import LedgerBase
from ledgerflow.ledger.models import PIPELINES, RECORDS, Status
from ledgerflow.ledger.sql import _as_utc, _clock, _insert_ignoring_duplicates, _stamp, _utc
from ledgerflow.windows import Grid, Window, split_registered, windows_before

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


class RegistrationMixin(LedgerBase):
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
        target: str | None = None,
    ) -> Registration:
        """The one registration path, for scheduled runs and backfills alike, in one transaction:

        lock the pipeline's identity (made from `grid` on first use; a ledger registered before
        identities existed is adopted only if its last window lies on `grid`), refuse another
        grid, read the database clock (`now` overrides it in tests), let `choose` pick windows
        from the watermark and the cutoff (`now - lag`), refuse one that would overlap a
        registered window with other bounds, insert the rest, and, for the scheduled
        registration only, advance the watermark to the end of the last window chosen.

        `start` (and `end`) are the config's: when `start` lies before the first registered
        window, the windows from it up to where the registered windows run unbroken to the
        watermark are registered too, those not registered yet (`windows_before`: `start` must
        be a grid boundary), without moving the watermark, so moving `start` earlier loads the
        earlier windows with no gap and no overlap, backfilled islands among them or not.

        `target` (`Target.identity()`) is recorded on first use and checked after: another
        target is refused (`check_target`)."""
        async with self._connect() as conn:
            transaction = await conn.begin()
            try:
                identity = await self._lock_identity(conn, pipeline_id, grid, now, target)
                moment = now or await conn.scalar(sa.select(_clock(self.dialect)))
                assert moment is not None
                cutoff = moment - lag
                watermark = _as_utc(identity.registered_until)
                windows = list(choose(watermark, cutoff))
                earlier: list[Window] = []
                # Without a watermark the schedule itself begins at `start`.
                if start is not None and watermark is not None:
                    first = await self._first_start(conn, pipeline_id)
                    if first is not None and start < first:
                        # Up to where the registered windows run unbroken to the watermark, not
                        # only to the first one: a backfilled island before the schedule's first
                        # window would otherwise leave the span between them unregistered.
                        earlier = windows_before(
                            start,
                            await self._unbroken_since(conn, pipeline_id, watermark),
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

    async def _lock_identity(
        self,
        conn: AsyncConnection,
        pipeline_id: str,
        grid: Grid,
        now: datetime | None,
        target: str | None = None,
    ) -> sa.Row[Any]:
        """The pipeline's identity row, locked until the transaction ends, checked against `grid`
        and `target` (recorded here when the row has none yet).

        The first statement writes: on Postgres it locks the row, on SQLite it takes the write
        lock before anything is read, so registrations and re-tiles of a pipeline never
        interleave."""
        mine = PIPELINES.c.pipeline_id == pipeline_id
        row = await lock_pipeline(conn, pipeline_id)
        if row is None:
            watermark = await self._adoptable(conn, pipeline_id, grid)
            stamp = _stamp(self.dialect, now)
            await conn.execute(
                _insert_ignoring_duplicates(self.dialect, PIPELINES, ("pipeline_id",)).values(
                    pipeline_id=pipeline_id,
                    timezone=grid.timezone,
                    granularity=grid.granularity,
                    registered_until=watermark,
                    target=target,
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
        check_target(pipeline_id, row.target, target)
        if target is not None and row.target is None:
            await conn.execute(sa.update(PIPELINES).where(mine).values(target=target))
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

    async def _unbroken_since(
        self, conn: AsyncConnection, pipeline_id: str, watermark: datetime
    ) -> datetime:
        """Where the registered windows that run unbroken up to `watermark` begin (the watermark
        itself when no window ends there). Walked newest first in Python, one pass: asked only
        when `start` moved before the first registered window, a rare step."""
        rows = await conn.execute(
            sa.select(RECORDS.c.window_start_time, RECORDS.c.window_end_time)
            .where(RECORDS.c.pipeline_id == pipeline_id, RECORDS.c.window_start_time < watermark)
            .order_by(RECORDS.c.window_start_time.desc())
        )
        since = watermark
        for start, end in rows:
            if _utc(end) != since:
                break
            since = _utc(start)
        return since

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

    async def target_of(self, pipeline_id: str) -> str | None:
        """Where the pipeline's windows are loaded, as recorded (None before it is recorded)."""
        async with self._connect() as conn:
            value = await conn.scalar(
                sa.select(PIPELINES.c.target).where(PIPELINES.c.pipeline_id == pipeline_id)
            )
        return None if value is None else str(value)

    async def last_window_end(self, pipeline_id: str) -> datetime | None:
        """End of the latest registered window, where registration continues from."""
        async with self._connect() as conn:
            value = await conn.scalar(
                sa.select(sa.func.max(RECORDS.c.window_end_time)).where(
                    RECORDS.c.pipeline_id == pipeline_id
                )
            )
        return _as_utc(value)


def check_target(pipeline_id: str, recorded: str | None, configured: str | None) -> None:
    """ConfigError when the pipeline's windows were loaded into another target than the one
    configured now: a run into the new one would load only the windows not loaded yet, and the
    configured target would hold part of what the ledger calls loaded."""
    if recorded is None or configured is None or recorded == configured:
        return
    raise ConfigError(
        f"pipeline {pipeline_id!r} loaded its windows into {recorded}, but its target is now "
        f"{configured}: the rows loaded so far are not there, so runs into it would leave the "
        "configured target holding only part of what the ledger calls loaded. Put the target "
        "back, or move the pipeline with `ledgerflow retarget -c <config>` (every loaded window "
        "is loaded again into the new target), or with `--rows-moved` if the rows are there "
        "already (you moved them, or it is the same table spelled otherwise): every loaded "
        "window is recounted there, and loaded again only where the counts differ"
    )


async def lock_pipeline(conn: AsyncConnection, pipeline_id: str) -> sa.Row[Any] | None:
    """The pipeline's identity row, locked until the transaction ends (None if it has none).

    A write, not a read: on Postgres it locks the row, on SQLite it takes the write lock before
    anything is read, so registrations, re-tiles and retargets of a pipeline never interleave."""
    return (
        await conn.execute(
            sa.update(PIPELINES)
            .where(PIPELINES.c.pipeline_id == pipeline_id)
            .values(updated_at=PIPELINES.c.updated_at)
            .returning(*PIPELINES.columns)
        )
    ).first()
