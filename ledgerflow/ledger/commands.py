"""Operator commands: release stale locks, reopen or retry windows, re-tile a pipeline."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ledgerflow.errors import ConfigError
from ledgerflow.ledger.base import LedgerBase
from ledgerflow.ledger.claim_sql import hold_fence_counter
from ledgerflow.ledger.models import (
    PIPELINES,
    RECORDS,
    AuditResult,
    PipelineRecord,
    Status,
    UTCDateTime,
)
from ledgerflow.ledger.registration import lock_pipeline
from ledgerflow.ledger.sql import (
    _ALL_RESET,
    _LOAD_RESET,
    _as_utc,
    _clock,
    _clock_text,
    _row_to_record,
    _stamp,
    _utc,
)
from ledgerflow.windows import Grid


@dataclass(frozen=True)
class Retile:
    """What a re-tile changed."""

    pipeline_id: str
    at: datetime
    old: Grid | None
    new: Grid
    removed: int


@dataclass(frozen=True)
class Retarget:
    """What a retarget changed."""

    pipeline_id: str
    old: str | None
    new: str
    reopened: int
    """COMPLETED windows reopened: forced to load again, or to be recounted (`rows_moved`)."""


class CommandsMixin(LedgerBase):
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
        async with self._autocommitted() as conn:
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
        pending forced reload stays forced: `force_reload` is cleared only by a completed load.
        A window whose audit failed is forced: its audit proved the target wrong, so equal counts
        at the next run (the source changed meanwhile) must not skip its load."""
        audit_failed = sa.case(
            (RECORDS.c.audit_result == AuditResult.FAIL.value, sa.true()),
            else_=RECORDS.c.force_reload,
        )
        return await self._reopened(
            self._reopening(
                pipeline_id,
                [Status.FAILED],
                ids,
                start,
                end,
                None,
                now,
                keep_stage=True,
                force=audit_failed,
            )
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
        return await self._reopened(
            self._reopening(
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
        )

    async def _reopened(self, stmt: sa.UpdateBase) -> list[PipelineRecord]:
        """Run a `_reopening` statement in a transaction of its own; the windows it reopened."""
        async with self._autocommitted() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_row_to_record(r) for r in rows]

    def _reopening(
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
        force: bool | sa.ColumnElement[bool] | None,
    ) -> sa.UpdateBase:
        """The statement that puts windows back to PENDING, returning them: run by `_reopened`, or
        by a caller in its own transaction. `force=None` keeps each window's `force_reload` as it
        is; an expression computes it from the row's values before the update."""
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
        return stmt

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
            current = await lock_pipeline(conn, pipeline_id)
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
            listed = await _first_windows(
                conn,
                mine,
                RECORDS.c.window_start_time >= at,
                RECORDS.c.pipeline_status == Status.PENDING.value,
                RECORDS.c.force_reload.is_(True),
            )
            if listed:
                # The re-cut windows would be registered without the force, and a target whose
                # rows are wrong but whose count is right would then be skipped as a match.
                raise ConfigError(
                    f"cannot re-tile {pipeline_id!r} at {at.isoformat()}: windows from there on "
                    f"wait for a forced reload (`reload`, `rescan` or the `retry` of a failed "
                    f"audit: {listed}, ...), which the re-cut windows would not carry; put the "
                    "config's grid back, run the pipeline so they load, then re-tile at or after "
                    "their end"
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

    async def retarget(
        self,
        pipeline_id: str,
        target: str,
        *,
        rows_moved: bool = False,
        now: datetime | None = None,
    ) -> Retarget:
        """Move the pipeline to `target` (`Target.identity()`): an operator's explicit step after
        changing the config's target.

        Every COMPLETED window goes back to PENDING, extracted again: forced to load into the new
        target, or, with `rows_moved` (the operator moved the rows), recounted there first and
        loaded only where source and target counts differ. PENDING and FAILED windows load into
        the new target when they run. In one transaction with the identity row locked (as
        registrations lock it); a window in progress refuses it, since its worker loads into
        the old target: wait for it, or release it. A claim that commits after this transaction
        is given back by its worker, which reads the recorded target after claiming."""
        mine = RECORDS.c.pipeline_id == pipeline_id
        async with self._begin() as conn:
            current = await lock_pipeline(conn, pipeline_id)
            if current is None:
                raise ConfigError(
                    f"pipeline {pipeline_id!r} has registered no window yet: its first run "
                    "records the configured target, nothing to move"
                )
            old = current.target
            if old == target:
                return Retarget(pipeline_id, old, target, 0)
            # Every claim of the pipeline raises its fence counter row in its own transaction:
            # holding that row's lock from here to the commit, this waits for a claim in
            # flight (then seen IN_PROGRESS below) and makes later claims wait for the commit
            # (then their worker reads the new target and gives the window back). Without it a
            # Postgres claim could commit between the check below and the commit (red team).
            await conn.execute(hold_fence_counter(self.dialect), {"p_pipeline": pipeline_id})
            reopened = await conn.execute(
                self._reopening(
                    pipeline_id,
                    [Status.COMPLETED],
                    None,
                    None,
                    None,
                    f"retargeted from {old} to {target}; ",
                    now,
                    keep_stage=False,
                    force=not rows_moved,
                )
            )
            count = len(reopened.all())
            # After the update, inside the transaction: a window claimed meanwhile is seen here.
            listed = await _first_windows(
                conn, mine, RECORDS.c.pipeline_status == Status.IN_PROGRESS.value
            )
            if listed:
                raise ConfigError(
                    f"cannot retarget {pipeline_id!r}: windows are in progress ({listed}, ...) "
                    "and their workers load into the old target; wait until they end, or "
                    "release them (`ledgerflow release`), then retarget"
                )
            await conn.execute(
                sa.update(PIPELINES)
                .where(PIPELINES.c.pipeline_id == pipeline_id)
                .values(target=target, updated_at=_stamp(self.dialect, now))
            )
        return Retarget(pipeline_id, old, target, count)


async def _first_windows(conn: AsyncConnection, *where: sa.ColumnElement[bool]) -> str:
    """The first three windows matching `where`, as "start (id=N)" for an error; "" if none."""
    rows = (
        await conn.execute(
            sa.select(RECORDS.c.id, RECORDS.c.window_start_time)
            .where(*where)
            .order_by(RECORDS.c.window_start_time)
            .limit(3)
        )
    ).all()
    return ", ".join(f"{_utc(start).isoformat()} (id={i})" for i, start in rows)
