"""Leases: the atomic claim of a window, and the fenced writes made under it (a write whose lease
was taken away touches no row and raises `LeaseLost`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ledgerflow.errors import LeaseLost
from ledgerflow.ledger.base import LedgerBase
from ledgerflow.ledger.claim_sql import _claim, _record_fence
from ledgerflow.ledger.models import RECORDS, PipelineRecord, Status
from ledgerflow.ledger.sql import UPDATABLE, _row_to_record, _stamp
from ledgerflow.windows import Window


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


class LeasesMixin(LedgerBase):
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
            async with self._autocommitted() as conn:
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
        async with self._autocommitted() as conn:
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

    async def give_back(
        self, lease: Lease, reason: str, *, now: datetime | None = None
    ) -> PipelineRecord:
        """Return a window this worker claimed but must not load to PENDING, as if never
        claimed: no attempt is counted, and `reason` says why."""
        return await self.update(
            lease,
            "give back",
            {
                "pipeline_status": Status.PENDING.value,
                "pipeline_locked_at": None,
                "error_message": reason[:4000],
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
