"""The DuckDB target's fences: which claim of which window last reached a table, and which
pipeline a table belongs to. A write is refused when a newer claim of an overlapping window of
its pipeline got there first, or when the table is another pipeline's."""

from __future__ import annotations

import os
import threading
from datetime import datetime

import duckdb

from ledgerflow.blocks.duckdb_common import table_exists
from ledgerflow.errors import ConfigError, FencedOut, TableOwnedByAnotherPipeline, TargetError
from ledgerflow.ports import Fence

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


def table_key(cur: duckdb.DuckDBPyConnection, table: str) -> str:
    """How the fence rows name a table: the schema and table DuckDB resolves `table` to in this
    file, in lower case (DuckDB matches names without regard to case). `web_events`,
    `main.web_events`, `warehouse.web_events` and `warehouse.main.web_events` in warehouse.duckdb
    are one table and get one key, so no spelling lets a second pipeline past the owner
    (red-team #6). A name in another attached database is refused: the fence rows live in this
    file and could not guard it."""
    parts = table.lower().split(".")
    row = cur.execute("SELECT current_database(), current_schema()").fetchone()
    database, schema = (str(row[0]).lower(), str(row[1]).lower()) if row else ("", "main")
    if len(parts) == 3:
        catalog, schema, name = parts
    elif len(parts) == 2:
        first, name = parts
        catalog = database
        if _is_schema(cur, first) or (first != database and not _is_database(cur, first)):
            schema = first
        else:
            catalog = first
    else:
        catalog, name = database, parts[0]
    if catalog != database:
        raise ConfigError(
            f"table={table!r} is in database {catalog!r}, not in this target's file (database "
            f"{database!r}); allowed: a table of the target's own file, as table, schema.table, "
            f"or {database}.schema.table"
        )
    return f"{schema}.{name}"


def _is_schema(cur: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = cur.execute(
        "SELECT count(*) FROM duckdb_schemas() WHERE database_name = current_database() "
        "AND lower(schema_name) = ?",
        [name],
    ).fetchone()
    return bool(row and row[0])


def _is_database(cur: duckdb.DuckDBPyConnection, name: str) -> bool:
    row = cur.execute(
        "SELECT count(*) FROM duckdb_databases() WHERE lower(database_name) = ?", [name]
    ).fetchone()
    return bool(row and row[0])


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
