"""The DuckDB blocks under concurrency: one process's threads, other processes, and a fork.

Before one database per file per process, threads calling `duckdb.connect(path)` at once made
DuckDB 1.5 answer "Unique file handle conflict" a few times per thousand connects (classified as a
schema change: the window failed), and the first windows' concurrent CREATE TABLE conflicted.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ledgerflow.blocks.duckdb_common import DuckDBHandle, FileBusy, transient_reason
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.errors import SourceError, TargetError, TargetTerminalError
from ledgerflow.ports import Fence, Manifest, StagedFile
from ledgerflow.windows import Window

START = datetime(2025, 3, 9, tzinfo=UTC)
# Generous: a DuckDB file lock on a machine shared with other test runs. The tests that wait on
# purpose release the lock after well under a second.
LOCK_TIMEOUT = 60.0


def fence_for(window: Window, token: int = 1) -> Fence:
    """The fence of the window's first claim (these tests are about concurrency, not fencing)."""
    return Fence("p", window.start, token)


def window(i: int) -> Window:
    start = START + timedelta(hours=i)
    return Window(start, start + timedelta(hours=1), start.date(), "1h")


def staged(
    folder: Path, w: Window, rows: int, *, extra: dict[str, pa.Array] | None = None
) -> Manifest:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{w.key}.parquet".replace(":", "-")
    table = pa.table(
        {
            "event_id": pa.array([f"{w.key}-{i}" for i in range(rows)]),
            "ts": pa.array(
                [w.start + timedelta(seconds=i) for i in range(rows)], pa.timestamp("us")
            ),
            "n": pa.array(list(range(rows)), pa.int64()),
            **(extra or {}),
        }
    )
    pq.write_table(table, path)
    return Manifest(str(folder), (StagedFile(str(path), rows, path.stat().st_size),))


async def test_eight_concurrent_replace_and_count_calls_on_one_file_always_pass(
    tmp_path: Path,
) -> None:
    # The old code failed in its first iteration (the CREATE TABLE race) and, with the table made
    # beforehand, in one run of four (the file-handle race).
    for iteration in range(20):
        target = DuckDBTarget.parse_obj({"path": str(tmp_path / f"w{iteration}.duckdb")})
        windows = [window(i) for i in range(4)]
        manifests = [
            staged(tmp_path / f"stage{iteration}", w, 50 + i) for i, w in enumerate(windows)
        ]
        # A fresh file each time: the first replaces also race to create the table.
        results = await asyncio.gather(
            *(target.replace(w, m, fence_for(w)) for w, m in zip(windows, manifests, strict=True)),
            *(target.count(w, "p") for w in windows),
        )
        assert results[:4] == [50, 51, 52, 53], f"iteration {iteration}"
        assert all(c in (0, 50 + i) for i, c in enumerate(results[4:])), f"iteration {iteration}"
        # Replace again while counting: each window is loaded once, never twice.
        again = await asyncio.gather(
            *(target.replace(w, m, fence_for(w)) for w, m in zip(windows, manifests, strict=True)),
            *(target.count(w, "p") for w in windows),
        )
        assert again == [50, 51, 52, 53, 50, 51, 52, 53], f"iteration {iteration}"


def test_threads_opening_one_file_at_once_never_conflict(tmp_path: Path) -> None:
    """8 threads x 200 operations; connecting per operation failed 50 to 260 of 4000 here."""
    path = str(tmp_path / "w.duckdb")
    handle = DuckDBHandle(path, read_only=False)
    failures: list[BaseException] = []

    def work() -> None:
        for _ in range(200):
            try:
                cur = handle.open()
                try:
                    cur.execute("SELECT 1").fetchone()
                finally:
                    handle.close(cur)
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


async def test_a_read_only_source_and_a_target_share_one_file_in_one_process(
    tmp_path: Path,
) -> None:
    """DuckDB refuses one file opened read-only and read-write at once; the handles share it."""
    path = str(tmp_path / "w.duckdb")
    target = DuckDBTarget.parse_obj({"path": path, "table": "events"})
    source = DuckDBSource.parse_obj({"path": path, "table": "events"})
    first = window(0)
    await target.replace(first, staged(tmp_path / "s", first, 10), fence_for(first))
    for _ in range(5):
        ws = [window(i) for i in range(1, 4)]
        manifests = [staged(tmp_path / "s", w, 20) for w in ws]
        counts = await asyncio.gather(
            *(source.count(first) for _ in range(4)),
            *(target.replace(w, m, fence_for(w)) for w, m in zip(ws, manifests, strict=True)),
        )
        assert counts == [10] * 4 + [20] * 3
        batches = [b async for b in source.extract(first)]
        assert sum(b.num_rows for b in batches) == 10


def test_a_write_waits_for_the_read_only_operations_of_its_own_process(tmp_path: Path) -> None:
    path = str(tmp_path / "w.duckdb")
    duckdb.connect(path).close()
    reader = DuckDBHandle(path, read_only=True)
    writer = DuckDBHandle(path, read_only=False, lock_timeout=LOCK_TIMEOUT)
    cur = reader.open()
    done = threading.Event()

    def write() -> None:
        wcur = writer.open()
        try:
            wcur.execute("CREATE TABLE t AS SELECT 1 AS x")
        finally:
            writer.close(wcur)
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert not done.wait(0.3), "the write opened read-write while a read-only use was open"
    reader.close(cur)
    thread.join(LOCK_TIMEOUT)
    assert done.is_set()

    short = DuckDBHandle(path, read_only=False, lock_timeout=0.2)
    cur = reader.open()
    try:
        with pytest.raises(FileBusy, match="stayed busy"):
            short.open()
    finally:
        reader.close(cur)


HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


def hold(path: str, seconds: float) -> subprocess.Popen[str]:
    """Another process that holds `path` read-write for `seconds` once it prints 'held'."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


async def test_an_operation_waits_for_another_process_holding_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "w.duckdb")
    proc = hold(path, 1.0)
    try:
        target = DuckDBTarget.parse_obj({"path": path})
        w = window(0)
        assert await target.replace(w, staged(tmp_path / "s", w, 5), fence_for(w)) == 5
    finally:
        proc.wait(LOCK_TIMEOUT)


def _child_query(path: str) -> None:
    handle = DuckDBHandle(path, read_only=True)
    cur = handle.open()
    try:
        assert cur.execute("SELECT count(*) FROM t").fetchone() == (3,)
    finally:
        handle.close(cur)


def test_a_forked_child_opens_its_own_database(tmp_path: Path) -> None:
    path = str(tmp_path / "w.duckdb")
    with duckdb.connect(path) as con:
        con.execute("CREATE TABLE t AS SELECT * FROM range(3)")
    handle = DuckDBHandle(path, read_only=True)
    cur = handle.open()  # the parent's database is open while the child runs
    try:
        child = multiprocessing.get_context("fork").Process(target=_child_query, args=(path,))
        child.start()
        child.join(LOCK_TIMEOUT)
        assert child.exitcode == 0
    finally:
        handle.close(cur)


# --- the classifier, on real DuckDB exceptions -------------------------------------------------


def raised(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Error:
    with pytest.raises(duckdb.Error) as info:
        con.execute(sql)
    return info.value


def test_a_file_handle_conflict_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    con = duckdb.connect()
    con.execute(f"ATTACH '{path}' AS a")
    exc = raised(con, f"ATTACH '{path}' AS b")
    assert isinstance(exc, duckdb.BinderException)  # the class a missing column also has
    assert transient_reason(exc) == "another connection was attaching the same file"


def test_write_write_conflicts_are_transient(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    a, b = con.cursor(), con.cursor()
    a.execute("BEGIN")
    b.execute("BEGIN")
    a.execute("CREATE TABLE t (x INT)")
    exc = raised(b, "CREATE TABLE t (x INT)")
    a.execute("COMMIT")
    b.execute("ROLLBACK")
    assert transient_reason(exc) == "a concurrent transaction changed the same table", exc

    a.execute("INSERT INTO t VALUES (1)")
    a.execute("BEGIN")
    b.execute("BEGIN")
    a.execute("DELETE FROM t")
    exc = raised(b, "DELETE FROM t")
    assert transient_reason(exc) == "a concurrent transaction changed the same rows", exc


def test_a_lock_held_by_another_process_is_transient(tmp_path: Path) -> None:
    path = str(tmp_path / "w.duckdb")
    proc = hold(path, 30)
    try:
        with pytest.raises(duckdb.Error) as info:
            duckdb.connect(path)
        assert transient_reason(info.value) == "another process holds the file's lock"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT missing FROM t", duckdb.BinderException),
        ("INSERT INTO t BY NAME SELECT 1 AS x, 2 AS extra", duckdb.BinderException),
        ("INSERT INTO t SELECT 'abc'", duckdb.ConversionException),
        ("SELECT * FROM no_such_table", duckdb.CatalogException),
    ],
)
def test_schema_problems_are_terminal(sql: str, kind: type[duckdb.Error]) -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (x INT)")
    exc = raised(con, sql)
    assert isinstance(exc, kind)
    assert transient_reason(exc) is None


# --- what the blocks raise ---------------------------------------------------------------------


async def test_a_schema_change_fails_the_load_naming_the_table_and_the_column(
    tmp_path: Path,
) -> None:
    target = DuckDBTarget.parse_obj({"path": str(tmp_path / "w.duckdb"), "table": "events"})
    w = window(0)
    await target.replace(w, staged(tmp_path / "s", w, 5), fence_for(w))
    drifted = staged(tmp_path / "s2", w, 5, extra={"country": pa.array(["fr"] * 5)})
    with pytest.raises(TargetTerminalError, match=r"table 'events' refused the load.*\"country\""):
        await target.replace(w, drifted, fence_for(w))
    retyped = staged(tmp_path / "s3", w, 5, extra={"n": pa.array(["x"] * 5)})
    with pytest.raises(TargetTerminalError, match=r"table 'events'.*column n"):
        await target.replace(w, retyped, fence_for(w))
    assert await target.count(w, "p") == 5, "a refused load changed the window"


async def test_a_missing_table_with_create_table_off_names_the_table(tmp_path: Path) -> None:
    path = str(tmp_path / "w.duckdb")
    target = DuckDBTarget.parse_obj({"path": path, "table": "events", "create_table": False})
    w = window(0)
    with pytest.raises(
        TargetTerminalError, match=r"'events' does not exist .* create_table is off"
    ):
        await target.replace(w, staged(tmp_path / "s", w, 5), fence_for(w))


async def test_a_file_locked_for_too_long_is_a_transient_error(tmp_path: Path) -> None:
    path = str(tmp_path / "w.duckdb")
    proc = hold(path, 30)
    try:
        target = DuckDBTarget.parse_obj({"path": path})
        target_handle = DuckDBHandle(path, read_only=False, lock_timeout=0.3)
        with pytest.raises(TargetError, match="another process holds the file's lock"):
            await target._guard(target_handle.run(lambda cur: cur.execute("SELECT 1")))
        source = DuckDBSource.parse_obj({"path": path, "table": "events"})
        source_handle = DuckDBHandle(path, read_only=True, lock_timeout=0.3)
        with pytest.raises(SourceError, match="another process holds the file's lock"):
            await source._guard(source_handle.run(lambda cur: cur.execute("SELECT 1")))
    finally:
        proc.kill()
        proc.wait()
