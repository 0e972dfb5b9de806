"""The target's fence and window check on the real DuckDB target, and the heartbeat's give-up.

A worker whose lease a newer claim superseded must commit nothing, whatever the interleaving of
the two transactions; a load whose rows fall outside its window must commit nothing either.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ledgerflow.blocks import duckdb_target
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.errors import FencedOut, LeaseLost, RowsOutsideWindow, TargetError
from ledgerflow.ledger import Lease, PipelineRecord
from ledgerflow.ports import Fence, Manifest, StagedFile
from ledgerflow.tasks.common import heartbeat
from ledgerflow.windows import Window

START = datetime(2025, 3, 9, 10, tzinfo=UTC)
WINDOW = Window(START, START + timedelta(hours=2), START.date(), "2h")
NEXT = Window(WINDOW.end, WINDOW.end + timedelta(hours=2), START.date(), "2h")
WAIT = 60  # seconds a test waits for a worker thread to reach a point: generous, a busy machine


def fence(token: int, window: Window = WINDOW) -> Fence:
    return Fence("orders", window.start, token)


def staged(folder: Path, name: str, ids: list[str], stamps: list[datetime | None]) -> Manifest:
    path = folder / f"{name}.parquet"
    table = pa.table(
        {"event_id": ids, "ts": pa.array(stamps, pa.timestamp("us", tz="UTC"))},
    )
    pq.write_table(table, path)
    return Manifest(str(folder), (StagedFile(str(path), len(ids), path.stat().st_size),))


def rows(folder: Path, prefix: str, n: int, window: Window = WINDOW) -> Manifest:
    ids = [f"{prefix}{i}" for i in range(n)]
    return staged(folder, prefix, ids, [window.start + timedelta(seconds=i) for i in range(n)])


def ids_in(target: DuckDBTarget) -> list[str]:
    con = duckdb.connect(target.path)
    try:
        return sorted(r[0] for r in con.execute("SELECT event_id FROM events").fetchall())
    finally:
        con.close()


def recorded_fence(target: DuckDBTarget, window: Window = WINDOW) -> int:
    con = duckdb.connect(target.path)
    try:
        con.execute("SET TimeZone = 'UTC'")
        row = con.execute(
            "SELECT token FROM ledgerflow_fences WHERE window_start = ?", [window.start]
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0])


class Gate:
    """Holds the first worker thread that passes it until the test opens it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()
        self.used = False

    def __call__(self) -> None:
        if self.used:
            return
        self.used = True
        self.reached.set()
        assert self.go.wait(WAIT), "the test never opened the gate"

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, WAIT), "the worker never got here"


def gated(real: Callable[..., Any], gate: Gate) -> Callable[..., Any]:
    def wrapper(*args: Any, **kw: Any) -> Any:
        gate()
        return real(*args, **kw)

    return wrapper


@pytest.fixture
def target(tmp_path: Path) -> DuckDBTarget:
    return DuckDBTarget(path=str(tmp_path / "warehouse.duckdb"), table="events")


async def test_a_stale_fence_commits_nothing_and_a_newer_one_wins(
    target: DuckDBTarget, tmp_path: Path
) -> None:
    newer, older = rows(tmp_path, "new", 30), rows(tmp_path, "old", 20)
    assert await target.replace(WINDOW, newer, fence(5)) == 30
    with pytest.raises(FencedOut, match=r"fence token 4\).*token 5 .*wrote nothing"):
        await target.replace(WINDOW, older, fence(4))
    assert ids_in(target) == sorted(f"new{i}" for i in range(30))
    assert recorded_fence(target) == 5
    # The same claim retrying (an equal token) goes on; a later claim wins.
    assert await target.replace(WINDOW, newer, fence(5)) == 30
    assert await target.replace(WINDOW, older, fence(6)) == 20
    assert ids_in(target) == sorted(f"old{i}" for i in range(20))
    # The fence is per window: another window's first claim is not fenced by this one's 6.
    assert await target.replace(NEXT, rows(tmp_path, "next", 5, NEXT), fence(1, NEXT)) == 5
    # An empty window is fenced too: a stale worker cannot empty it either.
    empty = Manifest(str(tmp_path), ())
    with pytest.raises(FencedOut):
        await target.replace(WINDOW, empty, fence(2))
    assert len(ids_in(target)) == 25


async def test_old_transaction_begun_then_newer_commits_then_old_commits_nothing(
    target: DuckDBTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zombie's transaction is open (BEGIN ran) but paused before its fence; the newer
    claim commits meanwhile; the zombie then resumes and must commit nothing."""
    await target.replace(WINDOW, rows(tmp_path, "first", 10), fence(1))
    gate = Gate()
    monkeypatch.setattr(duckdb_target, "advance_fence", gated(duckdb_target.advance_fence, gate))
    zombie = asyncio.create_task(target.replace(WINDOW, rows(tmp_path, "zombie", 7), fence(2)))
    await gate.wait_reached()
    assert await target.replace(WINDOW, rows(tmp_path, "newer", 12), fence(3)) == 12
    gate.go.set()
    with pytest.raises(FencedOut, match=r"token 2.*token 3"):
        await zombie
    assert ids_in(target) == sorted(f"newer{i}" for i in range(12))


def pause_before_commit(monkeypatch: pytest.MonkeyPatch) -> Gate:
    """A gate the next load reaching `before_commit` (inside its transaction) waits at."""
    gate = Gate()
    real_hit = duckdb_target.failpoints.hit

    def hit(name: str) -> None:
        if name == "before_commit":
            gate()
        real_hit(name)

    monkeypatch.setattr(duckdb_target.failpoints, "hit", hit)
    return gate


async def test_two_transactions_fencing_a_loaded_window_cannot_both_commit(
    target: DuckDBTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window was loaded before (its fence row exists). The zombie fenced first and is
    paused before COMMIT: the newer claim's fence write conflicts with it (it does not wait and
    does not commit); once the zombie is done, the newer claim's retry replaces its rows."""
    await target.replace(WINDOW, rows(tmp_path, "first", 3), fence(1))
    gate = pause_before_commit(monkeypatch)
    zombie = asyncio.create_task(target.replace(WINDOW, rows(tmp_path, "zombie", 7), fence(2)))
    await gate.wait_reached()
    newer = rows(tmp_path, "newer", 12)
    with pytest.raises(TargetError, match="concurrent transaction"):
        await target.replace(WINDOW, newer, fence(3))
    gate.go.set()
    assert await zombie == 7  # nobody newer had reached the target: its token was the highest
    assert await target.replace(WINDOW, newer, fence(3)) == 12  # the newer claim's retry
    assert ids_in(target) == sorted(f"newer{i}" for i in range(12))
    with pytest.raises(FencedOut):
        await target.replace(WINDOW, rows(tmp_path, "zombie", 7), fence(2))


async def test_two_transactions_fencing_a_new_window_cannot_both_commit(
    target: DuckDBTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window's first load ever (no fence row yet): both transactions insert the fence row.
    DuckDB lets the newer claim commit and refuses the zombie's COMMIT (duplicate key), so the
    zombie writes nothing, and its retry is fenced out."""
    await target.replace(NEXT, rows(tmp_path, "other", 2, NEXT), fence(1, NEXT))  # the tables
    gate = pause_before_commit(monkeypatch)
    zombie = asyncio.create_task(target.replace(WINDOW, rows(tmp_path, "zombie", 7), fence(2)))
    await gate.wait_reached()
    assert await target.replace(WINDOW, rows(tmp_path, "newer", 12), fence(3)) == 12
    gate.go.set()
    with pytest.raises(TargetError, match="duplicate key"):
        await zombie
    assert ids_in(target) == sorted([*(f"newer{i}" for i in range(12)), "other0", "other1"])
    with pytest.raises(FencedOut):
        await target.replace(WINDOW, rows(tmp_path, "zombie", 7), fence(2))


@pytest.mark.parametrize(
    ("stamp", "example"),
    [
        (WINDOW.end, "ts=2025-03-09 12:00:00+00"),  # the end is outside: windows are half-open
        (WINDOW.start - timedelta(microseconds=1), "ts=2025-03-09 09:59:59.999999+00"),
        (None, "ts=NULL"),
    ],
)
async def test_a_row_outside_the_window_aborts_the_load(
    target: DuckDBTarget, tmp_path: Path, stamp: datetime | None, example: str
) -> None:
    await target.replace(WINDOW, rows(tmp_path, "kept", 4), fence(1))
    ids = ["in0", "out", "in1"]
    manifest = staged(
        tmp_path, "mixed", ids, [WINDOW.start, stamp, WINDOW.end - timedelta(seconds=1)]
    )
    with pytest.raises(RowsOutsideWindow) as info:
        await target.replace(WINDOW, manifest, fence(1))
    assert f"1 of the 3 loaded rows have a timestamp outside the window [{START.isoformat()}" in (
        str(info.value)
    )
    assert f"for example {example}" in str(info.value) and "rolled back" in str(info.value)
    assert ids_in(target) == [f"kept{i}" for i in range(4)]


async def test_cancelling_the_load_interrupts_the_running_statement(
    target: DuckDBTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost lease cancels the awaiting task; the DuckDB statement running in the worker thread
    is interrupted at once (it would run for hours) and the transaction rolls back."""
    await target.replace(WINDOW, rows(tmp_path, "kept", 4), fence(1))
    started = threading.Event()

    def endless(self: DuckDBTarget, cur: duckdb.DuckDBPyConnection, *args: Any) -> None:
        started.set()
        cur.execute("SELECT count(*) FROM range(1000000000000) t(i) WHERE hash(i) = 42")

    monkeypatch.setattr(DuckDBTarget, "_check_inside", endless)
    load = asyncio.create_task(target.replace(WINDOW, rows(tmp_path, "lost", 9), fence(1)))
    assert await asyncio.to_thread(started.wait, WAIT)
    await asyncio.sleep(0.2)  # inside the statement
    began = time.monotonic()
    load.cancel()
    with pytest.raises(asyncio.CancelledError):
        await load
    # in_thread waits up to 30 s for the thread; an interrupted statement ends long before.
    assert time.monotonic() - began < 25
    monkeypatch.undo()
    assert ids_in(target) == [f"kept{i}" for i in range(4)]


# --- the heartbeat ---------------------------------------------------------------------------


def a_lease() -> Lease:
    record = PipelineRecord.model_construct(
        id=7,
        pipeline_id="orders",
        window_start_time=WINDOW.start,
        window_end_time=WINDOW.end,
        target_day=WINDOW.target_day,
        time_interval="2h",
        fence_token=3,
    )
    return Lease(record, "token")


class Unreachable:
    """A ledger that cannot be reached for the first `failures` beats (or ever)."""

    def __init__(self, failures: int = 10**9) -> None:
        self.failures = failures
        self.beats = 0
        self.fifth_beat = asyncio.Event()

    async def heartbeat(self, lease: Lease) -> None:
        self.beats += 1
        if self.beats >= 5:
            self.fifth_beat.set()
        if self.beats <= self.failures:
            raise ConnectionRefusedError("ledger down")


async def test_a_ledger_unreachable_past_the_limit_stops_the_phase_as_a_lost_lease() -> None:
    ledger = Unreachable()
    began = time.monotonic()
    with pytest.raises(LeaseLost, match=r"unreachable for .*ledger down") as info:
        async with heartbeat(ledger, a_lease(), 0.05, give_up_after=0.3):  # type: ignore[arg-type]
            await asyncio.sleep(WAIT)
    assert time.monotonic() - began < WAIT / 2
    assert ledger.beats >= 2
    assert "target's fence refuses" in str(info.value)


async def test_a_ledger_that_hangs_is_given_up_on_too() -> None:
    class Hanging:
        async def heartbeat(self, lease: Lease) -> None:
            await asyncio.sleep(3600)

    with pytest.raises(LeaseLost, match="unreachable"):
        async with heartbeat(Hanging(), a_lease(), 0.05, give_up_after=0.3):  # type: ignore[arg-type]
            await asyncio.sleep(WAIT)


async def test_missed_beats_within_the_limit_do_not_stop_the_phase() -> None:
    ledger = Unreachable(failures=2)
    async with heartbeat(ledger, a_lease(), 0.05, give_up_after=30):  # type: ignore[arg-type]
        await asyncio.wait_for(ledger.fifth_beat.wait(), WAIT)
    assert ledger.beats >= 5
