"""Every lock, heartbeat, release and eligibility stamp comes from the database's clock.

Each test skews the Python clock a worker would have used (the ledger, the tasks): a releaser
ahead must not revoke a live lease, a crashed holder ahead must not stay locked for as long as it
was ahead, and a worker ahead must not take windows that are not stable yet.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from ledgerflow.ledger import Ledger, Status
from ledgerflow.windows import build_record, windows_between

PIPE = "clocks"
LA = "America/Los_Angeles"


def skew(monkeypatch: pytest.MonkeyPatch, delta: timedelta) -> None:
    """Make `datetime.now` in the ledger and the tasks run `delta` off the real clock."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + delta

    import ledgerflow.ledger.base as base
    import ledgerflow.ledger.commands as commands
    import ledgerflow.ledger.leases as leases
    import ledgerflow.ledger.phases as phases
    import ledgerflow.ledger.registration as registration
    import ledgerflow.ledger.sql as sql
    import ledgerflow.ledger.status as status
    import ledgerflow.tasks.common as common
    import ledgerflow.windows as windows

    ledger_modules = (base, commands, leases, phases, registration, sql, status)
    for module in (*ledger_modules, common, windows):
        monkeypatch.setattr(module, "datetime", Skewed)


async def register_recent(ledger: Ledger, count: int = 2) -> None:
    end = datetime.now(UTC) - timedelta(days=2)
    ws = windows_between(end - timedelta(hours=2 * count), end, LA, "2h")[:count]
    await ledger.register([build_record(PIPE, w, LA) for w in ws])


@pytest.mark.parametrize("ahead", [timedelta(seconds=40), timedelta(days=1)])
async def test_a_releaser_whose_clock_runs_ahead_cannot_revoke_a_live_lease(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, ahead: timedelta
) -> None:
    await register_recent(ledger)
    lease = await ledger.claim(PIPE, "holder", lag=timedelta(days=1))
    assert lease is not None
    skew(monkeypatch, ahead)  # the releaser runs on another machine, ahead
    assert await ledger.release_stale(PIPE, older_than=timedelta(seconds=30), max_attempts=3) == []
    await ledger.heartbeat(lease)  # the holder is alive and may still write


@pytest.mark.parametrize("ahead", [timedelta(seconds=40), timedelta(days=1)])
async def test_a_crashed_holder_whose_clock_ran_ahead_is_released_on_time(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, ahead: timedelta
) -> None:
    await register_recent(ledger)
    with monkeypatch.context() as holder:
        skew(holder, ahead)
        lease = await ledger.claim(PIPE, "holder", lag=timedelta(days=1))
        assert lease is not None
        await ledger.heartbeat(lease)
    # The holder dies. A second later (by any clock) a one-second threshold releases it.
    await asyncio.sleep(1.5)
    [released] = await ledger.release_stale(PIPE, older_than=timedelta(seconds=1), max_attempts=3)
    assert released.id == lease.id and released.pipeline_status == Status.PENDING


async def test_a_holder_whose_clock_runs_behind_is_not_taken_for_dead(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register_recent(ledger)
    with monkeypatch.context() as holder:
        skew(holder, -timedelta(days=1))
        lease = await ledger.claim(PIPE, "holder", lag=timedelta(days=1))
        assert lease is not None
        await ledger.heartbeat(lease)
        await ledger.update(lease, "progress", {"extracted_count": 1})
    assert await ledger.release_stale(PIPE, older_than=timedelta(hours=2), max_attempts=3) == []


async def test_eligibility_is_judged_by_the_database_clock(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One window that ended an hour ago: with x_time_back 2h it is not stable yet.
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    [window] = windows_between(end - timedelta(minutes=30), end, "UTC", "30m")
    await ledger.register([build_record(PIPE, window, "UTC")])
    skew(monkeypatch, timedelta(days=1))  # a worker a day ahead would think it is old enough
    assert await ledger.claim(PIPE, "ahead", lag=timedelta(hours=2)) is None
    assert await ledger.claim(PIPE, "ahead", lag=timedelta(minutes=30)) is not None


async def test_sqlite_stamps_are_stored_as_the_column_type_writes_them(sqlite_url: str) -> None:
    """The database clock's text on SQLite has the layout UTCDateTime writes, to the
    microsecond, so comparisons and ORDER BY stay time order; and it reads back aware UTC."""
    async with Ledger.from_url(sqlite_url) as ledger:
        await ledger.create_schema()
        await register_recent(ledger, 3)
        before = datetime.now(UTC)
        first = await ledger.claim(PIPE, "a", lag=timedelta(0))
        await asyncio.sleep(0.01)
        second = await ledger.claim(PIPE, "b", lag=timedelta(0))
        after = datetime.now(UTC)
        assert first is not None and second is not None
        async with ledger.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT window_end_time, pipeline_locked_at FROM pipeline_records "
                        "WHERE pipeline_locked_at IS NOT NULL ORDER BY pipeline_locked_at"
                    )
                )
            ).all()
        layout: Callable[[str], Any] = re.compile(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}"
        ).fullmatch
        assert all(layout(end) and layout(locked) for end, locked in rows), rows
        held = [await ledger.get(first.id), await ledger.get(second.id)]
        stamps = [r.pipeline_locked_at for r in held if r is not None]
        assert len(stamps) == 2 and all(s is not None and s.tzinfo is not None for s in stamps)
        slack = timedelta(seconds=1)  # SQLite's clock has millisecond resolution
        assert before - slack <= stamps[0] <= stamps[1] <= after + slack  # type: ignore[operator]
        assert [r[1] for r in rows] == sorted(r[1] for r in rows)
