"""`DuckDBTarget`: the embedded target. A window is replaced in one DuckDB transaction."""

from __future__ import annotations

import contextlib
import os
import threading
from datetime import datetime
from typing import Any

import duckdb
from prefect.blocks.core import Block

from ledgerflow import failpoints
from ledgerflow.blocks.checks import forbid_unknown_fields
from ledgerflow.blocks.duckdb_common import (
    DUCKDB_ERRORS,
    DuckDBHandle,
    Resources,
    check_memory_limit,
    check_temp_directory,
    check_threads,
    creating_tables,
    table_exists,
    translate,
)
from ledgerflow.blocks.interrupt import Interrupt, in_thread
from ledgerflow.compat import Field, validator
from ledgerflow.errors import (
    FencedOut,
    LoadCountMismatch,
    RowsOutsideWindow,
    TableOwnedByAnotherPipeline,
    TargetError,
    TargetTerminalError,
)
from ledgerflow.ports import Fence, Manifest
from ledgerflow.sqlident import quote_identifier
from ledgerflow.windows import Window

# What a load may use by default. Measured on a 600,000-document window (about 180 MB of JSON
# text): DuckDB's own defaults (80% of memory, a thread per core) took the load to +270 MB of
# resident memory, one thread to +140 MB whatever the limit from 32MB to 256MB; a larger load
# spills to temp_directory instead of growing (tests/integration/test_duckdb_resources.py).
DEFAULT_MEMORY_LIMIT = "128MB"
DEFAULT_THREADS: int | None = 1


class DuckDBTarget(Block):
    """Loads staged Parquet into a DuckDB table; the table is created from the first files.

    Example:
        Load a saved target:
        ```python
        from ledgerflow.blocks.duckdb_target import DuckDBTarget

        target = DuckDBTarget.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Ledgerflow DuckDB Target"
    _block_type_slug = "ledgerflow-duckdb-target"
    _description = "Embedded target: a DuckDB table, each window replaced atomically."
    _known_fields = forbid_unknown_fields()

    path: str = Field(
        ".ledgerflow/warehouse.duckdb", title="Database file", description="DuckDB file to load."
    )
    table: str = Field("events", title="Table", description="Table the windows are loaded into.")
    timestamp_column: str = Field(
        "ts", title="Timestamp column", description="Column that places a row in a window."
    )
    create_table: bool = Field(
        True, title="Create table", description="Create the table from the first staged files."
    )

    memory_limit: str | None = Field(
        DEFAULT_MEMORY_LIMIT,
        title="Memory limit",
        description="DuckDB's memory while loading (e.g. '256MB'); a larger load spills to "
        "temp_directory. Unset: DuckDB's default, 80% of the machine's memory.",
    )
    threads: int | None = Field(
        DEFAULT_THREADS,
        title="Threads",
        description="DuckDB's threads while loading (each reads with its own buffers). "
        "Unset: one per core.",
    )
    temp_directory: str | None = Field(
        None,
        title="Temp directory",
        description="Where DuckDB spills what exceeds memory_limit. Unset: '<path>.tmp' beside "
        "the database file.",
    )

    _memory_limit = validator("memory_limit", allow_reuse=True)(check_memory_limit)
    _threads = validator("threads", allow_reuse=True)(check_threads)
    _temp_directory = validator("temp_directory", allow_reuse=True)(check_temp_directory)

    @validator("table")
    def _table(cls, v: str) -> str:
        quote_identifier(v, field="table")
        return v

    @validator("timestamp_column")
    def _ts(cls, v: str) -> str:
        quote_identifier(v, field="timestamp_column")
        return v

    @property
    def handle(self) -> DuckDBHandle:
        """Holds the file only while an operation runs (nothing stays open between them)."""
        resources = Resources(self.memory_limit, self.threads, self.temp_directory)
        return DuckDBHandle(self.path, read_only=False, resources=resources)

    async def count(self, window: Window) -> int:
        table, ts = self._names()

        def run(cur: duckdb.DuckDBPyConnection) -> int:
            if not table_exists(cur, table):
                return 0
            sql = f"SELECT count(*) FROM {table} WHERE {ts} >= ? AND {ts} < ?"
            row = cur.execute(sql, [window.start, window.end]).fetchone()
            return int(row[0]) if row else 0

        result: int = await self._guard(self.handle.run(run))
        return result

    async def replace(self, window: Window, manifest: Manifest, fence: Fence) -> int:
        table, ts = self._names()
        uris = [f.uri for f in manifest.files]
        failpoints.hit("before_target_txn")  # after the last ledger write, before connecting

        owned = table_key(self.table)

        def run(cur: duckdb.DuckDBPyConnection, interrupt: Interrupt) -> int:
            with creating_tables:
                create_fence_table(cur)
            if not table_exists(cur, table):  # before creating it: another pipeline's?
                check_owner(cur, fence.pipeline_id, owned)
            has_table = self._ensure_table(cur, table, uris)
            cur.execute("BEGIN TRANSACTION")
            try:
                # First: another pipeline's table, or a newer claim of this window or of one
                # overlapping it that reached the target already, makes this a no-op.
                seen = advance_fence(cur, fence, window.end, owned)
                if not has_table:
                    # The fence advanced; there is nothing to replace.
                    commit_fenced(self.path, cur, fence, window.end, owned, seen)
                    return 0
                cur.execute(
                    f"DELETE FROM {table} WHERE {ts} >= ? AND {ts} < ?", [window.start, window.end]
                )
                failpoints.hit("mid_load")  # inside the transaction, after the DELETE
                loaded = 0
                if uris:
                    row = cur.execute(
                        f"INSERT INTO {table} BY NAME SELECT * FROM read_parquet(?)",
                        [uris],
                    ).fetchone()
                    loaded = int(row[0]) if row else 0
                if loaded != manifest.rows:
                    raise LoadCountMismatch(loaded, manifest.rows)
                self._check_inside(cur, window, uris, loaded)
                failpoints.hit("before_commit")
                interrupt.check()
                commit_fenced(self.path, cur, fence, window.end, owned, seen)
                return loaded
            except BaseException:
                # A COMMIT that failed (a concurrent first load of this window committed its
                # fence row first) has already ended the transaction: keep its error, not
                # ROLLBACK's "no transaction is active".
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                raise

        def call(interrupt: Interrupt) -> int:
            cur = self.handle.open()
            try:
                interrupt.arm(cur.interrupt)
                return run(cur, interrupt)
            finally:
                interrupt.arm(None)
                self.handle.close(cur)

        result: int = await self._guard(in_thread(call))
        return result

    def _ensure_table(self, cur: duckdb.DuckDBPyConnection, table: str, uris: list[str]) -> bool:
        """Whether the table exists, creating it from the staged files if allowed.

        The table is created in its own short transaction, before the window's: concurrent windows
        then never conflict over the catalog inside their loads. Only this process can write the
        file, and its creators take turns, so the first windows do not race to create it.
        """
        if table_exists(cur, table):
            return True
        if not uris:
            return False  # nothing to load, and nothing to create the table from
        if not self.create_table:
            raise TargetTerminalError(
                f"target table {self.table!r} does not exist in {self.path!r} and create_table "
                "is off: create it, or set create_table"
            )
        with creating_tables:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM read_parquet(?) LIMIT 0",
                [uris],
            )
        return True

    def _check_inside(
        self, cur: duckdb.DuckDBPyConnection, window: Window, uris: list[str], loaded: int
    ) -> None:
        """Every loaded row lies in the window: the window was emptied first in this
        transaction, so it now holds exactly the loaded rows that belong to it."""
        if not loaded:
            return
        table, ts = self._names()
        bounds = [window.start, window.end]
        row = cur.execute(f"SELECT count(*) FROM {table} WHERE {ts} >= ? AND {ts} < ?", bounds)
        inside = int((row.fetchone() or (0,))[0])
        if inside == loaded:
            return
        outside = f"{ts} IS NULL OR NOT ({ts} >= ? AND {ts} < ?)"
        found = cur.execute(
            f"SELECT count(*), arbitrary(coalesce(CAST({ts} AS VARCHAR), 'NULL')) "
            f"FROM read_parquet(?) WHERE {outside}",
            [uris, *bounds],
        ).fetchone()
        count, example = (int(found[0]), found[1]) if found else (loaded - inside, "?")
        raise RowsOutsideWindow(
            count, loaded, window.start, window.end, f"{self.timestamp_column}={example}"
        )

    def _names(self) -> tuple[str, str]:
        return (
            quote_identifier(self.table, field="table"),
            quote_identifier(self.timestamp_column, field="timestamp_column"),
        )

    async def _guard(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except DUCKDB_ERRORS as exc:
            raise translate(
                exc,
                where=f"DuckDB target {self.path!r} table {self.table!r}",
                refused="refused the load (a schema change?)",
                transient=TargetError,
                terminal=TargetTerminalError,
            ) from exc


FENCE_TABLE = "ledgerflow_fences"
"""The target's fence rows: per (pipeline, window start), the greatest claim number seen, the
window's end (windows of one pipeline cut on two grids overlap after a re-tile) and the table the
window was loaded into (a table belongs to the pipeline whose fence rows name it)."""

_ADDED_COLUMNS = (("window_end", "TIMESTAMPTZ"), ("target_table", "VARCHAR"))
"""Columns a fence table made by an earlier ledgerflow lacks; their rows hold NULL there."""

_OVERLAPPING = (
    f"SELECT window_start, window_end, token FROM {FENCE_TABLE} WHERE pipeline_id = ? "
    "AND window_start <> ? AND window_start < ? AND (window_end IS NULL OR window_end > ?)"
)
"""The pipeline's other fence rows whose window overlaps [start, end). A row from before
window_end existed is taken to reach forever: every claim drawn since holds a greater number
(the ledger's counter starts above every earlier one), so it never refuses a current claim."""


def table_key(table: str) -> str:
    """How the fence rows name a table: DuckDB matches names without regard to case, and an
    unqualified name is in schema `main`."""
    parts = table.lower().split(".")
    return ".".join(["main", *parts] if len(parts) == 1 else parts)


def create_fence_table(cur: duckdb.DuckDBPyConnection) -> None:
    """Once, outside the window's transaction (a CREATE inside it would conflict with every
    other window's transaction); a fence table an earlier ledgerflow made gains the columns it
    lacks. Under `creating_tables`: this process's creators take turns, and no other process
    holds the file meanwhile."""
    if not table_exists(cur, FENCE_TABLE):
        try:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (pipeline_id VARCHAR NOT NULL, "
                "window_start TIMESTAMPTZ NOT NULL, token BIGINT NOT NULL, "
                "window_end TIMESTAMPTZ, target_table VARCHAR, "
                "PRIMARY KEY (pipeline_id, window_start))"
            )
        except duckdb.TransactionException:
            if not table_exists(cur, FENCE_TABLE):  # not another thread creating it first
                raise
    have = {
        str(r[0])
        for r in cur.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
            "AND schema_name = 'main' AND database_name = current_database()",
            [FENCE_TABLE],
        ).fetchall()
    }
    for name, kind in _ADDED_COLUMNS:
        if name not in have:
            cur.execute(f"ALTER TABLE {FENCE_TABLE} ADD COLUMN IF NOT EXISTS {name} {kind}")


def check_owner(cur: duckdb.DuckDBPyConnection, pipeline_id: str, table: str) -> None:
    """Refuse (TableOwnedByAnotherPipeline) when another pipeline's fence rows name `table`."""
    row = cur.execute(
        f"SELECT pipeline_id FROM {FENCE_TABLE} WHERE target_table = ? AND pipeline_id <> ? "
        "LIMIT 1",
        [table, pipeline_id],
    ).fetchone()
    if row is not None:
        raise TableOwnedByAnotherPipeline(
            f"{table!r} (DuckDB file {_file(cur)!r})", str(row[0]), pipeline_id
        )


Seen = frozenset[tuple[datetime, datetime | None, int]]
"""The pipeline's other fence rows overlapping the window, as the transaction saw them."""


def advance_fence(cur: duckdb.DuckDBPyConnection, fence: Fence, end: datetime, table: str) -> Seen:
    """Inside the window's transaction, before anything else: refuse another pipeline's table
    (TableOwnedByAnotherPipeline), record `fence.token` for the window unless a greater one is
    recorded for it or for any window of the pipeline overlapping [start, end) (FencedOut), and
    return the overlapping rows seen, for `commit_fenced`.

    The window's row is always written (an equal token rewrites it), so of two transactions
    fencing one window, DuckDB's write-write conflict aborts the second: they cannot both commit.
    """
    check_owner(cur, fence.pipeline_id, table)
    row = cur.execute(
        f"INSERT INTO {FENCE_TABLE} (pipeline_id, window_start, token, window_end, target_table) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline_id, window_start) DO UPDATE SET "
        "token = excluded.token, window_end = excluded.window_end, "
        f"target_table = excluded.target_table WHERE {FENCE_TABLE}.token <= excluded.token "
        "RETURNING token",
        [fence.pipeline_id, fence.window_start, fence.token, end, table],
    ).fetchone()
    if row is None:
        found = cur.execute(
            f"SELECT token FROM {FENCE_TABLE} WHERE pipeline_id = ? AND window_start = ?",
            [fence.pipeline_id, fence.window_start],
        ).fetchone()
        recorded = int(found[0]) if found else -1
        raise FencedOut(fence.pipeline_id, fence.window_start.isoformat(), fence.token, recorded)
    seen = _overlapping(cur, fence, end)
    _refuse_newer(fence, seen)
    return seen


def commit_fenced(
    path: str,
    cur: duckdb.DuckDBPyConnection,
    fence: Fence,
    end: datetime,
    table: str,
    seen: Seen,
) -> None:
    """COMMIT, unless another pipeline took the table or an overlapping window's fence row
    changed since the transaction began.

    Two loads of overlapping windows (one grid before a re-tile, one after) write fence rows
    with different keys, so DuckDB's write-write check does not stop the second, and neither
    transaction sees the other's uncommitted row. So the committed rows are read afresh, on
    another cursor, and compared with what this transaction saw, under a lock that every fenced
    COMMIT of this file in this process holds (no other process holds the file meanwhile): of
    two such loads, the second to commit sees the first. A greater number is FencedOut; a smaller
    one is retried (TargetError): the retry's DELETE then sees the rows it loaded."""
    with _commit_lock(path):
        fresh = cur.cursor()
        try:
            check_owner(fresh, fence.pipeline_id, table)
            now = _overlapping(fresh, fence, end)
        finally:
            fresh.close()
        _refuse_newer(fence, now)
        if now != seen:
            changed = sorted(now - seen, key=lambda r: r[0])
            raise TargetError(
                f"pipeline {fence.pipeline_id!r} window {fence.window_start.isoformat()}: the "
                f"overlapping window {_span(changed[0]) if changed else '(removed)'} was loaded "
                "by an earlier claim while this load ran; rolled back to load again over it"
            )
        cur.execute("COMMIT")


def _overlapping(cur: duckdb.DuckDBPyConnection, fence: Fence, end: datetime) -> Seen:
    rows = cur.execute(
        _OVERLAPPING, [fence.pipeline_id, fence.window_start, end, fence.window_start]
    ).fetchall()
    return frozenset((r[0], r[1], int(r[2])) for r in rows)


def _refuse_newer(fence: Fence, rows: Seen) -> None:
    newer = [r for r in rows if r[2] > fence.token]
    if newer:
        top = max(newer, key=lambda r: r[2])
        raise FencedOut(
            fence.pipeline_id, fence.window_start.isoformat(), fence.token, top[2], _span(top)
        )


def _file(cur: duckdb.DuckDBPyConnection) -> str:
    row = cur.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return str(row[0]) if row and row[0] else "?"


def _span(row: tuple[datetime, datetime | None, int]) -> str:
    return f"[{row[0].isoformat()}, {row[1].isoformat() if row[1] else '?'})"


_commit_locks: dict[str, threading.Lock] = {}
_commit_locks_guard = threading.Lock()


def _commit_lock(path: str) -> threading.Lock:
    key = os.path.abspath(path)
    with _commit_locks_guard:
        return _commit_locks.setdefault(key, threading.Lock())


def _forget_commit_locks() -> None:
    global _commit_locks_guard
    _commit_locks.clear()
    _commit_locks_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_commit_locks)
