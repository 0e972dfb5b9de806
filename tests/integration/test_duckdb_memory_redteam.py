"""Red-team cases for the DuckDB target's "auto" memory limit: what a load reserves follows the
columns DuckDB fills (the table's, not only the staged files'), and the rows of the row group
the window joins."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.errors import TargetError, TargetTerminalError
from ledgerflow.ports import Fence
from ledgerflow.windows import Window

from .test_duckdb_resources import START, WIDE, WINDOW, wide_stage


async def test_a_narrow_window_into_a_wide_table_loads_with_the_default_settings(
    tmp_path: Path,
) -> None:
    """INSERT BY NAME fills every column of the table (NULL where the files lack it), and DuckDB
    holds a segment for each: a window of sparse documents staging 5 of a table's 250 columns
    needs the table's memory, not the files'."""
    target = DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb")})
    await target.replace(WINDOW, wide_stage(tmp_path / "seed", 10, WIDE), Fence("p", START, 1))
    narrow = wide_stage(tmp_path / "narrow", 20_000, 5)
    assert await target.replace(WINDOW, narrow, Fence("p", START, 2)) == 20_000
    assert await target.count(WINDOW, "p") == 20_000
    assert target.handle.reserved() == 0


async def test_loads_at_once_under_a_saved_128MB_limit_are_retried_not_failed_for_good(
    tmp_path: Path,
) -> None:
    """An old saved block keeps memory_limit='128MB', which loads at once in one process share:
    a window of 40 columns fits it alone (about 30 MB), so running out of it beside four others
    is the moment, and a retry passes. Only a window the limit cannot hold alone is terminal."""
    target = DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb"), "memory_limit": "128MB"})
    await target.replace(WINDOW, wide_stage(tmp_path / "seed", 10, 40), Fence("p", START, 1))
    starts = [START + timedelta(hours=2 * k) for k in range(5)]
    windows = [Window(s, s + timedelta(hours=2), START.date(), "2h") for s in starts]
    staged = [wide_stage(tmp_path / f"w{k}", 20_000, 40, w.start) for k, w in enumerate(windows)]
    outcomes = await asyncio.gather(
        *(
            target.replace(w, m, Fence("p", w.start, 2))
            for w, m in zip(windows, staged, strict=True)
        ),
        return_exceptions=True,
    )
    terminal = [o for o in outcomes if isinstance(o, TargetTerminalError)]
    assert not terminal, terminal[0]
    for w, m, outcome in zip(windows, staged, outcomes, strict=True):
        if isinstance(outcome, TargetError):  # the retry, alone
            assert await target.replace(w, m, Fence("p", w.start, 3)) == 20_000
        else:
            assert outcome == 20_000
    assert [await target.count(w, "p") for w in windows] == [20_000] * 5
    assert target.handle.reserved() == 0


async def test_a_target_under_duckdbs_default_beside_an_auto_one_on_its_file_gets_the_default(
    tmp_path: Path,
) -> None:
    """Two targets on one file (two tables), one 'auto', one unset (DuckDB's default, 80% of the
    machine's memory): while the 'auto' one holds a cursor, the unset one's load must not run
    under the 64MiB the other set, and be told it ran out of '80% of the machine's memory'."""
    path = str(tmp_path / "w.duckdb")
    auto = DuckDBTarget.parse_obj({"path": path, "table": "small"})
    default = DuckDBTarget.parse_obj({"path": path, "table": "wide", "memory_limit": None})
    held = auto.handle.open()  # e.g. the 'auto' target's count, in progress
    try:
        manifest = wide_stage(tmp_path / "stage", 20_000, WIDE)
        assert await default.replace(WINDOW, manifest, Fence("p", START, 1)) == 20_000
    finally:
        auto.handle.close(held)
    assert await default.count(WINDOW, "p") == 20_000


async def test_a_wide_window_of_40000_rows_after_an_earlier_window_loads_by_default(
    tmp_path: Path,
) -> None:
    """The second window of 250 keyword fields, 40,000 rows: its COMMIT appends to the table's last
    row group and holds all of it ("TransactionContext Error: Failed to commit: failed to pin
    block" under 1 MiB per column, on every retry): the need grows with the rows, up to a row
    group (measured, 250 columns: 40,000 rows need 1.5 MiB per column, 122,880 up to 3)."""
    target = DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb")})
    before = Window(START - timedelta(hours=2), START, START.date(), "2h")
    seed = wide_stage(tmp_path / "seed", 10, WIDE, before.start)
    await target.replace(before, seed, Fence("p", before.start, 1))
    manifest = wide_stage(tmp_path / "stage", 40_000, WIDE)
    assert await target.replace(WINDOW, manifest, Fence("p", START, 1)) == 40_000
    assert target.handle.reserved() == 0
