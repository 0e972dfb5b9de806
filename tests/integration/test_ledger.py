"""The ledger against real databases: SQLite and Postgres, one code path."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from ledgerflow.errors import LeaseLost, LedgerSchemaError
from ledgerflow.ledger import Ledger, Status
from ledgerflow.ledger.models import SCHEMA_VERSION
from ledgerflow.windows import build_record, windows_between

PIPE = "orders"
T0 = datetime(2025, 3, 8, 8, tzinfo=UTC)
FAR = datetime(2100, 1, 1, tzinfo=UTC)


async def register_hours(ledger: Ledger, hours: int, pipeline: str = PIPE, **kw: object) -> int:
    ws = windows_between(T0, T0 + timedelta(hours=hours), "America/Los_Angeles", "2h")
    return await ledger.register(
        [build_record(pipeline, w, "America/Los_Angeles") for w in ws], **kw
    )  # type: ignore[arg-type]


async def test_schema_creation_is_idempotent_and_versioned(ledger: Ledger) -> None:
    await ledger.create_schema()
    await ledger.check_schema()
    async with ledger.engine.begin() as conn:
        await conn.execute(
            sa.text("UPDATE ledgerflow_schema SET version = :v"), {"v": SCHEMA_VERSION + 1}
        )
    with pytest.raises(LedgerSchemaError, match="newer than this ledgerflow"):
        await ledger.check_schema()
    with pytest.raises(LedgerSchemaError, match="upgrade ledgerflow"):
        await ledger.create_schema()


async def test_check_schema_on_an_empty_database_says_what_to_run(ledger_url: str) -> None:
    fresh = Ledger.from_url(ledger_url)
    try:
        with pytest.raises(LedgerSchemaError, match="ledgerflow init"):
            await fresh.check_schema()
    finally:
        await fresh.close()


async def test_register_is_idempotent_and_keeps_instants(ledger: Ledger) -> None:
    # 48h from local midnight crosses the 23h spring-forward day, so 25 windows overlap it.
    assert await register_hours(ledger, 48) == 25
    assert await register_hours(ledger, 72) == 12
    assert await register_hours(ledger, 72) == 0
    rows = await ledger.windows(PIPE)
    assert len(rows) == 37
    assert rows[0].window_start_time == T0
    assert rows[0].window_start_time.tzinfo is not None
    # 2025-03-09 is the spring-forward day in Los Angeles: one window is 1h long.
    short = [r for r in rows if r.window_end_time - r.window_start_time == timedelta(hours=1)]
    assert len(short) == 1 and short[0].key_z == "3600"
    assert await ledger.last_window_end(PIPE) == rows[-1].window_end_time


async def test_a_year_of_windows_registers_in_bulk(ledger: Ledger) -> None:
    ws = windows_between(
        datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), "UTC", "2h"
    )
    assert await ledger.register([build_record(PIPE, w, "UTC") for w in ws]) == 4380
    summary = await ledger.summary(PIPE)
    assert summary.counts[Status.PENDING] == 4380


async def test_two_claims_racing_for_one_window_get_it_once(ledger: Ledger) -> None:
    await register_hours(ledger, 2)
    r1, r2 = await asyncio.gather(
        ledger.claim(PIPE, "run-1", cutoff=FAR), ledger.claim(PIPE, "run-2", cutoff=FAR)
    )
    assert (r1 is None) != (r2 is None)


async def test_16_claimers_racing_over_1000_windows_take_each_exactly_once(ledger: Ledger) -> None:
    ws = windows_between(T0, T0 + timedelta(hours=1000), "UTC", "1h")
    assert await ledger.register([build_record(PIPE, w, "UTC") for w in ws]) == 1000
    taken: dict[int, str] = {}
    doubles: list[int] = []
    busy: set[int] = set()

    async def worker(name: str) -> None:
        while (lease := await ledger.claim(PIPE, name, cutoff=FAR)) is not None:
            if lease.id in taken or lease.id in busy:
                doubles.append(lease.id)
            busy.add(lease.id)
            taken[lease.id] = name
            await asyncio.sleep(0)  # let the others race while this one holds the lease
            await ledger.complete(lease)
            busy.discard(lease.id)

    await asyncio.gather(*(worker(f"w{i}") for i in range(16)))
    assert doubles == []
    assert len(taken) == 1000
    assert len(set(taken.values())) > 1, "the race needs more than one winner to mean anything"
    assert (await ledger.summary(PIPE)).counts[Status.COMPLETED] == 1000


async def test_claim_respects_cutoff_priority_and_order(ledger: Ledger) -> None:
    await register_hours(ledger, 8)
    first = await ledger.claim(PIPE, "r", cutoff=T0 + timedelta(hours=2))
    assert first is not None and first.window.start == T0
    assert await ledger.claim(PIPE, "r", cutoff=T0 + timedelta(hours=2)) is None
    newest = await ledger.claim(PIPE, "r", cutoff=FAR, newest_first=True)
    assert newest is not None and newest.window.start == T0 + timedelta(hours=6)
    # A low-priority backfill does not jump ahead of fresh windows.
    backfill = windows_between(T0 - timedelta(days=2), T0, "America/Los_Angeles", "2h")
    await ledger.register(
        [build_record(PIPE, w, "America/Los_Angeles") for w in backfill], priority=-1
    )
    fresh = await ledger.claim(PIPE, "r", cutoff=FAR)
    assert fresh is not None and fresh.window.start == T0 + timedelta(hours=2)


async def test_claims_are_per_pipeline(ledger: Ledger) -> None:
    await register_hours(ledger, 2, pipeline="other")
    assert await ledger.claim(PIPE, "r", cutoff=FAR) is None
    assert await ledger.claim("other", "r", cutoff=FAR) is not None


async def test_a_lost_lease_raises_and_writes_nothing(ledger: Ledger) -> None:
    await register_hours(ledger, 2)
    lease = await ledger.claim(PIPE, "zombie", cutoff=FAR)
    assert lease is not None
    assert lease.record.pipeline_status == Status.IN_PROGRESS
    released = await ledger.release_stale(
        PIPE, older_than=timedelta(0), max_attempts=3, now=datetime.now(UTC) + timedelta(seconds=1)
    )
    assert [r.id for r in released] == [lease.id]
    taken = await ledger.claim(PIPE, "rescuer", cutoff=FAR)
    assert taken is not None and taken.id == lease.id
    with pytest.raises(LeaseLost, match="'stage' was not written to the ledger"):
        await ledger.update(lease, "stage", {"phase_completed": "SOURCE_TO_STAGE"})
    with pytest.raises(LeaseLost):
        await ledger.complete(lease)
    row = await ledger.get(lease.id)
    assert row is not None
    assert row.phase_completed is None and row.dag_run_id == "rescuer"
    assert row.pipeline_status == Status.IN_PROGRESS and row.retry_attempt == 1


async def test_every_claim_of_a_window_carries_a_greater_fence(ledger: Ledger) -> None:
    """The target's fencing number: strictly greater per claim of a window, whatever revoked the
    lease in between (stale cleanup, an operator's reopen, a reset), drawn from one counter per
    pipeline (it asserted a number per window before, red-team finding #1: a re-tile's re-cut
    window then started again at 1, the number of a worker frozen since before the re-tile)."""
    await register_hours(ledger, 4)
    later = datetime.now(UTC) + timedelta(hours=3)
    seen: list[int] = []
    first = await ledger.claim(PIPE, "a", cutoff=FAR)
    assert first is not None and first.fence == 1
    seen.append(first.fence)
    await ledger.release_stale(PIPE, older_than=timedelta(hours=2), max_attempts=9, now=later)
    second = await ledger.claim(PIPE, "b", cutoff=FAR)
    assert second is not None and second.id == first.id
    seen.append(second.fence)
    await ledger.complete(second)
    await ledger.reopen(PIPE, [second.id], "late data")
    third = await ledger.claim(PIPE, "c", cutoff=FAR)
    assert third is not None and third.id == first.id
    seen.append(third.fence)
    await ledger.fail(third, "boom")
    await ledger.reset_failed(PIPE)
    fourth = await ledger.claim(PIPE, "d", cutoff=FAR)
    assert fourth is not None and fourth.id == first.id
    seen.append(fourth.fence)
    assert seen == [1, 2, 3, 4]
    other = await ledger.claim(PIPE, "e", cutoff=FAR)
    assert other is not None and other.id != first.id and other.fence == 5
    # Nobody but the claim may move it: a fenced write naming it is refused.
    with pytest.raises(ValueError, match="fence_token"):
        await ledger.update(fourth, "forge", {"fence_token": 99})
    assert (await ledger.get(first.id)).fence_token == 4  # type: ignore[union-attr]


async def test_racing_claims_of_one_window_get_distinct_fences(ledger: Ledger) -> None:
    """Claims serialized by the row lock: each release-and-claim round raises the number by one,
    even when many claimers race for the window."""
    await register_hours(ledger, 2)
    later = datetime.now(UTC) + timedelta(hours=3)
    fences = []
    for _ in range(5):
        won = [
            lease
            for lease in await asyncio.gather(
                *(ledger.claim(PIPE, f"r{i}", cutoff=FAR) for i in range(4))
            )
            if lease is not None
        ]
        assert len(won) == 1
        fences.append(won[0].fence)
        await ledger.release_stale(PIPE, older_than=timedelta(hours=2), max_attempts=99, now=later)
    assert fences == [1, 2, 3, 4, 5]


async def test_heartbeat_keeps_a_live_worker_from_being_released(ledger: Ledger) -> None:
    await register_hours(ledger, 2)
    lease = await ledger.claim(PIPE, "r", cutoff=FAR, now=datetime.now(UTC) - timedelta(hours=3))
    assert lease is not None
    await ledger.heartbeat(lease)
    assert await ledger.release_stale(PIPE, older_than=timedelta(hours=2), max_attempts=3) == []


async def test_stale_windows_fail_once_attempts_are_used_up(ledger: Ledger) -> None:
    await register_hours(ledger, 2)
    later = datetime.now(UTC) + timedelta(hours=3)
    for attempt in (1, 2, 3):
        assert await ledger.claim(PIPE, f"r{attempt}", cutoff=FAR) is not None
        [row] = await ledger.release_stale(
            PIPE, older_than=timedelta(hours=2), max_attempts=3, now=later
        )
        assert row.retry_attempt == attempt
        assert row.pipeline_status == (Status.FAILED if attempt == 3 else Status.PENDING)
        assert "stale lock released" in (row.error_message or "")
    reset = await ledger.reset_failed(PIPE)
    assert [r.pipeline_status for r in reset] == [Status.PENDING]
    assert reset[0].retry_attempt == 0


async def test_complete_and_fail_record_the_outcome(ledger: Ledger) -> None:
    await register_hours(ledger, 4)
    a = await ledger.claim(PIPE, "r", cutoff=FAR)
    b = await ledger.claim(PIPE, "r", cutoff=FAR)
    assert a and b
    done = await ledger.complete(
        a, {"source_count": 10, "target_count": 10, "audit_result": "PASS"}
    )
    assert done.pipeline_status == Status.COMPLETED and done.pipeline_end_time is not None
    assert done.lease_token == a.token  # kept for the record; the status fences it
    failed = await ledger.fail(b, "boom: connection refused")
    assert failed.error_message == "boom: connection refused"
    summary = await ledger.summary(PIPE)
    assert summary.counts == {"PENDING": 0, "IN_PROGRESS": 0, "COMPLETED": 1, "FAILED": 1}
    assert [r.id for r in summary.failed] == [b.id]
    assert summary.newest_completed_end == a.window.end
    assert summary.lag(a.window.end + timedelta(hours=5)) == timedelta(hours=5)
    reopened = await ledger.reopen(PIPE, [a.id], "late data: source count 10 -> 12")
    assert reopened[0].pipeline_status == Status.PENDING
    assert reopened[0].error_message and "late data" in reopened[0].error_message


async def test_updates_refuse_unknown_and_identity_columns(ledger: Ledger) -> None:
    await register_hours(ledger, 2)
    lease = await ledger.claim(PIPE, "r", cutoff=FAR)
    assert lease
    with pytest.raises(ValueError, match="window_start_time"):
        await ledger.update(lease, "x", {"window_start_time": T0})


async def test_naive_times_are_refused(ledger: Ledger) -> None:
    # The column type refuses it before any SQL runs; SQLAlchemy wraps its ValueError.
    with pytest.raises(sa.exc.StatementError, match="ledger times must be aware datetimes"):
        await ledger.claim(PIPE, "r", cutoff=datetime(2030, 1, 1))


async def test_retrying_a_failed_audit_forces_its_load_and_keeps_other_forces(
    ledger: Ledger,
) -> None:
    """A failed audit proved the target wrong: equal counts at the retried run (the source
    changed meanwhile) must not skip its load. Other failures keep their force as it was."""
    await register_hours(ledger, 6)  # three 2h windows
    audited, plain, reloaded = [await ledger.claim(PIPE, "r", cutoff=FAR) for _ in range(3)]
    assert audited and plain and reloaded
    await ledger.fail(audited, "audit: source 12, target 11", {"audit_result": "FAIL"})
    await ledger.fail(plain, "boom: connection refused")
    await ledger.fail(reloaded, "boom")
    await ledger.reopen(PIPE, [reloaded.id], "an operator's reload", force=True)
    again = await ledger.claim(PIPE, "r2", cutoff=FAR)
    assert again is not None and again.id == reloaded.id
    await ledger.fail(again, "boom again")  # a forced reload stays forced until it loads
    reset = {r.id: r for r in await ledger.reset_failed(PIPE)}
    assert {i: (r.pipeline_status, r.force_reload) for i, r in reset.items()} == {
        audited.id: (Status.PENDING, True),
        plain.id: (Status.PENDING, False),
        reloaded.id: (Status.PENDING, True),
    }
    assert reset[audited.id].audit_result is None
