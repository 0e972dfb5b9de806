"""The DuckDB target's fence across a re-tile, its upgrade, and one pipeline per table.

After a re-tile a pipeline's windows are cut on two grids: a worker frozen on an old window must
be refused by a newer claim of any window overlapping it, not only by one with the same start.
And two pipelines loading one table would erase each other's rows (a window's load deletes its
whole time range), so the second is refused before it writes anything.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.errors import FencedOut, TableOwnedByAnotherPipeline, TargetError
from ledgerflow.ports import Fence, Manifest
from ledgerflow.windows import Window

from .test_fencing import START, ids_in, pause_before_commit, rows

HOUR = timedelta(hours=1)
WIDE = Window(START, START + 2 * HOUR, START.date(), "2h")  # the grid after the re-tile
EARLY = Window(START, START + HOUR, START.date(), "1h")  # the grid before it
LATE = Window(START + HOUR, START + 2 * HOUR, START.date(), "1h")


def fence(token: int, window: Window, pipeline: str = "orders") -> Fence:
    return Fence(pipeline, window.start, token)


def fence_rows(target: DuckDBTarget) -> list[tuple[object, ...]]:
    con = duckdb.connect(target.path)
    try:
        con.execute("SET TimeZone = 'UTC'")
        return [
            tuple(r)
            for r in con.execute(
                "SELECT pipeline_id, window_start, window_end, token, target_table "
                "FROM ledgerflow_fences ORDER BY pipeline_id, window_start"
            ).fetchall()
        ]
    finally:
        con.close()


@pytest.fixture
def target(tmp_path: Path) -> DuckDBTarget:
    return DuckDBTarget(path=str(tmp_path / "warehouse.duckdb"), table="events")


async def test_a_worker_frozen_on_a_window_a_retile_replaced_is_fenced_out(
    target: DuckDBTarget, tmp_path: Path
) -> None:
    # Claims 1 and 2 took the 1h windows; after the re-tile, claim 3 loads the 2h window.
    assert await target.replace(WIDE, rows(tmp_path, "new", 40, WIDE), fence(3, WIDE)) == 40
    for token, window in ((1, LATE), (2, EARLY), (2, LATE)):
        said = " for the overlapping window" if window.start != WIDE.start else r"\)"
        with pytest.raises(FencedOut, match=rf"token 3 already recorded by the target{said}"):
            await target.replace(window, rows(tmp_path, "old", 5, window), fence(token, window))
    assert ids_in(target) == sorted(f"new{i}" for i in range(40))
    # A window next to it, not overlapping, is not fenced by it.
    after = Window(WIDE.end, WIDE.end + HOUR, START.date(), "1h")
    assert await target.replace(after, rows(tmp_path, "next", 3, after), fence(1, after)) == 3


async def test_a_zombie_inside_its_transaction_cannot_commit_after_an_overlapping_newer_load(
    target: DuckDBTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both loads write fence rows with different keys (their windows start apart), so DuckDB's
    write-write check cannot stop either; the commit's fresh read must."""
    await target.replace(EARLY, rows(tmp_path, "first", 2, EARLY), fence(1, EARLY))  # tables
    gate = pause_before_commit(monkeypatch)
    zombie = asyncio.create_task(
        target.replace(LATE, rows(tmp_path, "zombie", 7, LATE), fence(2, LATE))
    )
    await gate.wait_reached()
    assert await target.replace(WIDE, rows(tmp_path, "newer", 12, WIDE), fence(3, WIDE)) == 12
    gate.go.set()
    with pytest.raises(FencedOut, match=r"token 2\).*token 3 "):
        await zombie
    assert ids_in(target) == sorted(f"newer{i}" for i in range(12))


async def test_an_older_overlapping_load_committing_first_makes_the_newer_one_load_again(
    target: DuckDBTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newer load's snapshot does not hold the rows the older one commits meanwhile, so
    committing would keep them beside its own: it rolls back (retried), and its retry replaces
    them."""
    await target.replace(EARLY, rows(tmp_path, "first", 2, EARLY), fence(1, EARLY))
    gate = pause_before_commit(monkeypatch)
    newer = rows(tmp_path, "newer", 12, WIDE)
    racing = asyncio.create_task(target.replace(WIDE, newer, fence(3, WIDE)))
    await gate.wait_reached()
    assert await target.replace(LATE, rows(tmp_path, "zombie", 7, LATE), fence(2, LATE)) == 7
    gate.go.set()
    with pytest.raises(TargetError, match=r"overlapping window .* load again"):
        await racing
    assert await target.replace(WIDE, newer, fence(3, WIDE)) == 12  # the task's retry
    assert ids_in(target) == sorted(f"newer{i}" for i in range(12))


async def test_a_fence_table_made_before_window_ends_is_upgraded_in_place(
    target: DuckDBTarget, tmp_path: Path
) -> None:
    """The fence table as the previous ledgerflow created it, holding a row and with the data
    table loaded: the first load of this one adds the columns and keeps fencing."""
    await target.replace(EARLY, rows(tmp_path, "v1", 4, EARLY), fence(1, EARLY))
    con = duckdb.connect(target.path)
    try:
        con.execute("DROP TABLE ledgerflow_fences")
        con.execute(
            "CREATE TABLE ledgerflow_fences (pipeline_id VARCHAR NOT NULL, "
            "window_start TIMESTAMPTZ NOT NULL, token BIGINT NOT NULL, "
            "PRIMARY KEY (pipeline_id, window_start))"
        )
        con.execute("INSERT INTO ledgerflow_fences VALUES ('orders', ?, 5)", [EARLY.start])
    finally:
        con.close()
    # The row from before is taken to reach forever: a stale claim of any later window loses.
    with pytest.raises(FencedOut, match=r"token 5 already recorded"):
        await target.replace(LATE, rows(tmp_path, "stale", 3, LATE), fence(4, LATE))
    assert await target.replace(WIDE, rows(tmp_path, "new", 6, WIDE), fence(6, WIDE)) == 6
    assert fence_rows(target) == [("orders", START, WIDE.end, 6, "main.events")]
    assert ids_in(target) == sorted(f"new{i}" for i in range(6))


async def test_a_second_pipeline_is_refused_a_table_another_pipeline_loads(
    target: DuckDBTarget, tmp_path: Path
) -> None:
    await target.replace(WIDE, rows(tmp_path, "a", 10, WIDE), fence(1, WIDE, "a"))
    before = fence_rows(target)
    # The same table under another spelling of its name, any window, even an empty one.
    same = DuckDBTarget(path=target.path, table="main.EVENTS")
    after = Window(WIDE.end, WIDE.end + HOUR, START.date(), "1h")
    for table, window, manifest in (
        (target, WIDE, rows(tmp_path, "b", 3, WIDE)),
        (same, after, rows(tmp_path, "b2", 3, after)),
        (target, after, Manifest(str(tmp_path), ())),
    ):
        with pytest.raises(TableOwnedByAnotherPipeline) as info:
            await table.replace(window, manifest, fence(9, window, "b"))
        message = str(info.value)
        for said in ("'main.events'", "loaded by pipeline 'a'", "pipeline 'b' may not", "another"):
            assert said in message, message
        assert "Nothing was written" in message
    assert ids_in(target) == sorted(f"a{i}" for i in range(10))
    assert fence_rows(target) == before
    # Another table in the same file is free for it.
    other = DuckDBTarget(path=target.path, table="events_b")
    assert await other.replace(WIDE, rows(tmp_path, "b", 3, WIDE), fence(9, WIDE, "b")) == 3


async def test_two_pipelines_taking_one_new_table_at_once_cannot_both_load_it(
    target: DuckDBTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await DuckDBTarget(path=target.path, table="setup").replace(
        WIDE, rows(tmp_path, "s", 1, WIDE), fence(1, WIDE, "s")
    )  # the fence table exists; `events` does not yet
    gate = pause_before_commit(monkeypatch)
    first = asyncio.create_task(
        target.replace(EARLY, rows(tmp_path, "a", 4, EARLY), fence(1, EARLY, "a"))
    )
    await gate.wait_reached()
    assert await target.replace(LATE, rows(tmp_path, "b", 5, LATE), fence(1, LATE, "b")) == 5
    gate.go.set()
    with pytest.raises(TableOwnedByAnotherPipeline, match="loaded by pipeline 'b'"):
        await first
    assert ids_in(target) == sorted(f"b{i}" for i in range(5))
