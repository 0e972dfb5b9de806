"""The DuckDB target's memory settings: applied to the load, and a load larger than the memory
limit still lands whole (DuckDB spills to temp_directory)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ledgerflow.blocks.duckdb_common import DuckDBHandle, Resources, load_shape, memory_bytes
from ledgerflow.blocks.duckdb_target import DuckDBTarget, load_memory
from ledgerflow.errors import TargetTerminalError
from ledgerflow.ports import Fence, Manifest, StagedFile
from ledgerflow.windows import Window

START = datetime(2025, 3, 9, tzinfo=UTC)
WINDOW = Window(START, START + timedelta(hours=2), START.date(), "2h")


def stage(folder: Path, rows: int, text_bytes: int, group_rows: int | None = None) -> Manifest:
    """`rows` rows in the window, each carrying `text_bytes` of incompressible-looking text, in
    parts of 50,000 rows, in row groups of `group_rows` (as an Elasticsearch stage writes them:
    a row group per page) or one row group per part."""
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
        pq.write_table(table, path, compression="none", row_group_size=group_rows)
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
    assert await target.count(WINDOW, "p") == 200_000
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
    # memory_limit "auto": 64MiB outside a load (a load reserves more while it runs), one thread
    assert target.memory_limit == "auto"
    assert got == ("64.0 MiB", 1, str(tmp_path / "w.duckdb.tmp"))


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
        ({"memory_limit": "80%"}, "not a memory size; allowed: 'auto', or a number and a unit"),
        ({"memory_limit": "lots"}, "not a memory size; allowed: 'auto', or a number"),
        ({"memory_limit": "Auto"}, "not a memory size"),
        ({"memory_limit": "4MB"}, "below 32MiB"),
        ({"threads": 0}, "threads=0 must be between 1 and 1024"),
        ({"temp_directory": "  "}, "names no folder"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(fields: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        DuckDBTarget.parse_obj({"path": "w.duckdb", **fields})


def wide_stage(folder: Path, rows: int, columns: int, start: datetime = START) -> Manifest:
    """`rows` rows of a document with `columns` short keyword fields (an ECS-style log line),
    in the window starting at `start`, as one part."""
    folder.mkdir(parents=True)
    step = 7_200_000_000 // rows
    fields: dict[str, pa.Array] = {
        "_id": pa.array([f"{folder.name}-{i:08d}" for i in range(rows)]),
        "ts": pa.array(
            [start + timedelta(microseconds=i * step) for i in range(rows)],
            pa.timestamp("us", tz="UTC"),
        ),
    }
    for c in range(columns - 2):
        fields[f"field_{c:03d}"] = pa.array([f"v{(i * 31 + c) % 99991:07d}" for i in range(rows)])
    path = folder / "part-00000.parquet"
    pq.write_table(pa.table(fields), path)
    return Manifest(str(folder), (StagedFile(str(path), rows, path.stat().st_size),))


WIDE = 250  # DuckDB holds about 0.7 MB per column while it loads: 128MB held at most 180 or so


async def test_a_wide_window_loads_with_the_default_settings(tmp_path: Path) -> None:
    manifest = wide_stage(tmp_path / "stage", 20_000, WIDE)
    target = DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb")})
    assert await target.replace(WINDOW, manifest, Fence("p", WINDOW.start, 1)) == 20_000
    assert await target.count(WINDOW, "p") == 20_000


async def test_wide_windows_loading_at_once_in_one_process_each_get_their_memory(
    tmp_path: Path,
) -> None:
    """The limit is the database's: loads at once reserve the sum, and a count that opens a
    cursor of its own meanwhile (at the base limit) does not take their reservations away."""
    starts = [START + timedelta(hours=2 * k) for k in range(3)]
    windows = [Window(s, s + timedelta(hours=2), START.date(), "2h") for s in starts]
    staged = [wide_stage(tmp_path / f"w{k}", 10_000, WIDE, w.start) for k, w in enumerate(windows)]
    target = DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb")})
    await target.replace(WINDOW, wide_stage(tmp_path / "seed", 10, WIDE), Fence("p", START, 1))
    loads = asyncio.gather(
        *(
            target.replace(w, m, Fence("p", w.start, 2))
            for w, m in zip(windows, staged, strict=True)
        )
    )
    limits, reservations = set(), set()
    while not loads.done():  # counts keep opening cursors while the loads run
        await target.count(WINDOW, "p")
        cur = target.handle.open()
        try:
            row = cur.execute("SELECT current_setting('memory_limit')").fetchone()
        finally:
            target.handle.close(cur)
        limits.add(memory_bytes(str(row[0]).replace(" ", "")) if row else 0)
        reservations.add(target.handle.reserved())
        await asyncio.sleep(0.01)
    assert await loads == [10_000] * 3
    assert [await target.count(w, "p") for w in windows] == [10_000] * 3
    con = duckdb.connect()
    try:
        each = [load_memory(load_shape(con, [f.uri for f in m.files]), m.rows) for m in staged]
    finally:
        con.close()
    assert max(reservations) == sum(each)  # every load's own, at once
    # and the database's limit was the base and all of them (DuckDB shows it rounded: 1.1 GiB)
    assert max(limits) >= (64 * 2**20 + sum(each)) * 0.95
    assert target.handle.reserved() == 0


async def test_a_set_limit_too_small_for_a_wide_window_fails_naming_what_it_needs(
    tmp_path: Path,
) -> None:
    target = DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb"), "memory_limit": "128MB"})
    await target.replace(WINDOW, wide_stage(tmp_path / "old", 10, WIDE), Fence("p", START, 1))
    manifest = wide_stage(tmp_path / "stage", 20_000, WIDE)
    with pytest.raises(TargetTerminalError) as failed:
        await target.replace(WINDOW, manifest, Fence("p", WINDOW.start, 2))
    message = str(failed.value)
    assert f"memory_limit='128MB' with {WIDE} columns" in message
    con = duckdb.connect()
    try:
        shape = load_shape(con, [manifest.files[0].uri])
        need = (64 * 2**20 + load_memory(shape, manifest.rows, floor=False)) // 2**20
    finally:
        con.close()
    assert need > 64 + WIDE  # 1 MiB per column, and the row group
    assert f"allowed: memory_limit of at least {need}MiB, or 'auto'" in message
    assert await target.count(WINDOW, "p") == 10  # the window's earlier load stands, whole


def test_a_struct_counts_as_its_fields(tmp_path: Path) -> None:
    """What a load reserves follows the columns DuckDB fills: each field of a struct is one."""
    path = tmp_path / "nested.parquet"
    user = pa.array([{"id": "u1", "geo": {"country": "US", "city": "SF"}}])
    pq.write_table(pa.table({"_id": pa.array(["a"]), "user": user}), path)
    con = duckdb.connect()
    try:
        shape = load_shape(con, [str(path)])
    finally:
        con.close()
    assert shape.columns == 4
    assert 0 < shape.largest_row_group < 1000


async def test_a_window_staged_in_large_row_groups_loads_with_the_default_settings(
    tmp_path: Path,
) -> None:
    """DuckDB decodes a staged row group whole: one of 60,000 rows of 200 fields (160 MiB
    uncompressed) needs about 340 MiB, where 1 MiB per column alone would give 264. A stage
    written by another tool, or by an earlier release, can have such row groups."""
    rows = 60_000
    step = 7_200_000_000 // rows
    fields = {
        "_id": pa.array([f"d{i:08d}" for i in range(rows)]),
        "ts": pa.array(
            [START + timedelta(microseconds=i * step) for i in range(rows)],
            pa.timestamp("us", tz="UTC"),
        ),
    }
    for c in range(198):
        fields[f"f{c:03d}"] = pa.array([f"v{(i * 31 + c) % 99991:07d}" for i in range(rows)])
    (tmp_path / "stage").mkdir()
    path = tmp_path / "stage" / "part-00000.parquet"
    pq.write_table(pa.table(fields), path, row_group_size=rows)
    manifest = Manifest(str(path.parent), (StagedFile(str(path), rows, path.stat().st_size),))
    target = DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb")})
    assert await target.replace(WINDOW, manifest, Fence("p", WINDOW.start, 1)) == rows
    assert await target.count(WINDOW, "p") == rows


@pytest.mark.parametrize("where", ["file", "memory"])
def test_a_reservation_raises_the_limit_for_its_operation_and_gives_it_back(
    tmp_path: Path, where: str
) -> None:
    path = str(tmp_path / "r.duckdb") if where == "file" else ":memory:"
    handle = DuckDBHandle(path, read_only=False, resources=Resources(memory_limit="64MiB"))
    cur = handle.open()
    try:

        def limit() -> str:
            row = cur.execute("SELECT current_setting('memory_limit')").fetchone()
            assert row is not None
            return str(row[0])

        with handle.reserving(cur, 100 * 2**20):
            assert limit() == "164.0 MiB"
        assert limit() == "64.0 MiB"
        with pytest.raises(RuntimeError), handle.reserving(cur, 10 * 2**20):
            raise RuntimeError("the load failed")
        assert limit() == "64.0 MiB"
        assert handle.reserved() == 0
    finally:
        handle.close(cur)


async def test_a_load_does_not_keep_the_staged_files_in_duckdbs_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB 1.3+ caches the bytes of the files a query reads in its buffer pool. A load reads
    each staged file once: cached, they only took the pool's room, at the load's peak."""
    manifest = stage(tmp_path / "stage", 100_000, 200, group_rows=1_000)
    staged = sum(f.bytes for f in manifest.files)
    target = DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb")})
    held: dict[str, int] = {}

    def look(name: str) -> None:  # the end of the load, every statement run, before COMMIT
        if name != "before_commit":
            return
        cur = target.handle.open()  # a second cursor on the load's database
        try:
            rows = cur.execute("SELECT tag, memory_usage_bytes FROM duckdb_memory()").fetchall()
        finally:
            target.handle.close(cur)
        held.update({str(tag): int(used) for tag, used in rows})

    monkeypatch.setattr("ledgerflow.blocks.duckdb_target.failpoints.hit", look)
    assert await target.replace(WINDOW, manifest, Fence("p", WINDOW.start, 1)) == 100_000
    assert held, "the load never reached its commit"
    assert held["EXTERNAL_FILE_CACHE"] == 0, f"{held} (the stage is {staged:,} bytes)"
