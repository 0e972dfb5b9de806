"""Reads: windows, counts, the summary an operator sees first, and tiling faults."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa

from ledgerflow.ledger.base import LedgerBase
from ledgerflow.ledger.models import RECORDS, PipelineRecord, Status, UTCDateTime
from ledgerflow.ledger.sql import _as_utc, _clock, _row_to_record, _utc

# Record ids are a plain INTEGER primary key: 32 bits on Postgres.
MAX_RECORD_ID = 2**31 - 1


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


class StatusMixin(LedgerBase):
    async def get(self, record_id: int) -> PipelineRecord | None:
        """The window with this id, or None: also for an id no record can have (the id column
        is a 32-bit integer on Postgres; a larger value is a driver error, not "no such")."""
        if not 1 <= record_id <= MAX_RECORD_ID:
            return None
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

    async def newest_loaded(self, pipeline_id: str) -> PipelineRecord | None:
        """The newest COMPLETED window that loaded at least one row, if any."""
        stmt = (
            sa.select(RECORDS)
            .where(
                RECORDS.c.pipeline_id == pipeline_id,
                RECORDS.c.pipeline_status == Status.COMPLETED.value,
                RECORDS.c.target_count > 0,
            )
            .order_by(RECORDS.c.window_start_time.desc())
            .limit(1)
        )
        async with self._connect() as conn:
            row = (await conn.execute(stmt)).first()
        return None if row is None else _row_to_record(row)

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


def _before_first(
    start: datetime | None, end: datetime | None, first: datetime | None
) -> list[TilingFault]:
    """The gap from the config's `start` to the first registered window, if start is earlier."""
    if start is None or first is None:
        return []
    lo, hi = _utc(start), first if end is None else min(first, _utc(end))
    return [TilingFault("gap", lo, hi)] if lo < hi else []
