"""The DuckDB target's memory settings: applied to the load, and a load larger than the memory
limit still lands whole (DuckDB spills to temp_directory)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ledgerflow.blocks.duckdb_common import DuckDBHandle, Resources
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.ports import Fence, Manifest, StagedFile
from ledgerflow.windows import Window

START = datetime(2025, 3, 9, tzinfo=UTC)
WINDOW = Window(START, START + timedelta(hours=2), START.date(), "2h")


def stage(folder: Path, rows: int, text_bytes: int) -> Manifest:
    """`rows` rows in the window, each carrying `text_bytes` of incompressible-looking text, in
    parts of 50,000 rows."""
    folder.mkdir(parents=True)
    files = []
    step = 7_200_000_000 // rows
    for lo in range(0, rows, 50_000):
        hi = min(rows, lo + 50_000)
        table = pa.table(
            {
                "_id": pa.array([f"d{i:08d}" for i in range(lo, hi)]),
                "ts": pa.array(
                    [START + timedelta(microseconds=i * step) for i in range(lo, hi)],
                    pa.timestamp("us", tz="UTC"),
                ),
                "document": pa.array(
                    [(f"{i:08d}" * (text_bytes // 8 + 1))[:text_bytes] for i in range(lo, hi)]
                ),
            }
        )
        path = folder / f"part-{lo:08d}.parquet"
        pq.write_table(table, path, compression="none")
        files.append(StagedFile(str(path), hi - lo, path.stat().st_size))
    return Manifest(str(folder), tuple(files))


async def test_a_load_larger_than_the_memory_limit_lands_whole(tmp_path: Path) -> None:
    # About 120 MB of text into a database held to 32 MiB and one thread: it has to spill.
    manifest = stage(tmp_path / "stage", 200_000, 600)
    spill = tmp_path / "spill"
    target = DuckDBTarget.parse_obj(
        {
            "path": str(tmp_path / "w.duckdb"),
            "memory_limit": "32MiB",
            "threads": 1,
            "temp_directory": str(spill),
        }
    )
    loaded = await target.replace(WINDOW, manifest, Fence("p", WINDOW.start, 1))
    assert loaded == 200_000
    assert await target.count(WINDOW) == 200_000
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        row = con.execute("SELECT count(DISTINCT _id), min(length(document)) FROM events")
        assert row.fetchone() == (200_000, 600)


def test_the_block_settings_are_the_databases_while_it_runs(tmp_path: Path) -> None:
    target = DuckDBTarget.parse_obj(
        {
            "path": str(tmp_path / "w.duckdb"),
            "memory_limit": "100MiB",
            "threads": 1,
            "temp_directory": str(tmp_path / "spill"),
        }
    )
    handle = target.handle
    cur = handle.open()
    try:
        got = cur.execute(
            "SELECT current_setting('memory_limit'), current_setting('threads'), "
            "current_setting('temp_directory')"
        ).fetchone()
    finally:
        handle.close(cur)
    assert got == ("100.0 MiB", 1, str(tmp_path / "spill"))


def test_the_defaults_bound_the_load_and_leave_the_temp_directory_to_duckdb(
    tmp_path: Path,
) -> None:
    target = DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb")})
    cur = target.handle.open()
    try:
        got = cur.execute(
            "SELECT current_setting('memory_limit'), current_setting('threads'), "
            "current_setting('temp_directory')"
        ).fetchone()
    finally:
        target.handle.close(cur)
    assert got == ("122.0 MiB", 1, str(tmp_path / "w.duckdb.tmp"))  # 128MB, one thread


def test_a_second_operation_on_an_open_file_takes_its_own_blocks_limits(tmp_path: Path) -> None:
    """Blocks sharing a file in one process: each operation runs under its block's settings."""
    path = str(tmp_path / "w.duckdb")
    first = DuckDBHandle(path, read_only=False, resources=Resources("64MiB", 1))
    second = DuckDBHandle(path, read_only=False, resources=Resources("128MiB", 2))
    a = first.open()
    try:
        b = second.open()
        try:
            got = b.execute(
                "SELECT current_setting('memory_limit'), current_setting('threads')"
            ).fetchone()
        finally:
            second.close(b)
    finally:
        first.close(a)
    assert got == ("128.0 MiB", 2)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"memory_limit": "80%"}, "not a memory size; allowed: a number and a unit"),
        ({"memory_limit": "lots"}, "not a memory size"),
        ({"memory_limit": "4MB"}, "below 32MiB"),
        ({"threads": 0}, "threads=0 must be between 1 and 1024"),
        ({"temp_directory": "  "}, "names no folder"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        DuckDBTarget.parse_obj({"path": "w.duckdb", **fields})
