"""`DuckDBTarget`: the embedded target. A window is replaced in one DuckDB transaction."""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
from prefect.blocks.core import Block

from ledgerflow import failpoints
from ledgerflow.blocks.checks import forbid_unknown_fields, in_range
from ledgerflow.blocks.duckdb_common import (
    AUTO,
    DUCKDB_ERRORS,
    DuckDBHandle,
    LoadShape,
    Resources,
    check_memory_limit,
    check_temp_directory,
    creating_tables,
    load_shape,
    memory_bytes,
    out_of_memory,
    table_exists,
    table_leaf_columns,
    translate,
)
from ledgerflow.blocks.duckdb_fences import (
    FENCE_TABLE,
    Seen,
    advance_fence,
    check_owner,
    commit_fenced,
    create_fence_table,
    table_key,
)
from ledgerflow.blocks.interrupt import Interrupt, in_thread
from ledgerflow.compat import Field, validator
from ledgerflow.errors import (
    LoadCountMismatch,
    RowsOutsideWindow,
    TargetError,
    TargetTerminalError,
)
from ledgerflow.ports import Fence, Manifest
from ledgerflow.sqlident import quote_identifier
from ledgerflow.windows import Window

# What a load may use by default ("auto"). Measured on a 600,000-document window (about 180 MB
# of JSON text): DuckDB's own defaults (80% of memory, a thread per core) took the load to +270 MB
# of resident memory, one thread to +140 MB whatever the limit from 32MB to 256MB; a larger load
# spills to temp_directory instead of growing (tests/integration/test_duckdb_resources.py).
# But DuckDB cannot spill what a load is filling and decoding (`python -m bench duckdb`):
# - about 0.65 MiB per column of the table (a load fills every one, NULL where the files lack it);
# - 1.35 times the largest staged row group, uncompressed (200 columns: 131 MiB with row groups
#   of 2.5 MiB, 339 MiB with one of 160 MiB);
# - the table's last row group, which the window's rows join until it holds ROW_GROUP_ROWS: at the
#   COMMIT all of it is in memory (200 columns after an earlier window: 271 MiB for 50,000 rows,
#   where 150,000, which fill row groups of their own, need 135).
# So a fixed 128MB refused every window of a 200-field document. "auto" keeps AUTO_BASE for any
# operation and reserves, for each load in progress, what `load_memory` says.
DEFAULT_MEMORY_LIMIT = AUTO
DEFAULT_THREADS: int | None = 1
AUTO_BASE = "64MiB"
AUTO_LOAD_FLOOR = 64 * 2**20
ROW_GROUP_ROWS = 122_880  # DuckDB's row group
VALUE_BYTES = 16  # DuckDB's in-memory width of a value (a string's is 16, inlined up to 12 bytes)


def load_memory(shape: LoadShape, rows: int, *, floor: bool = True) -> int:
    """The bytes "auto" gives one load of `rows` rows of this shape, above what it was measured
    to need: 1 MiB per column, and 1.5 times the largest staged row group and the fixed-width
    part of the row group the rows join; at least AUTO_LOAD_FLOOR (`floor`)."""
    joined = min(rows, ROW_GROUP_ROWS) * VALUE_BYTES * shape.columns
    need = shape.columns * 2**20 + (shape.largest_row_group + joined) * 3 // 2
    return max(AUTO_LOAD_FLOOR, need) if floor else need


def least_memory(shape: LoadShape) -> int:
    """The bytes a load of this shape needs at the least, whatever the rows and the table: 0.65
    MiB per column and its largest staged row group (the least measured, into an empty table)."""
    return shape.columns * 2**20 * 65 // 100 + shape.largest_row_group


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
        "temp_directory, but DuckDB holds about 1 MiB per column and a staged row group in memory "
        "while it loads. 'auto': 64MiB, plus for each load in progress 1MiB per column and 1.5 "
        "times the largest staged row group (at least 64MiB). "
        "Unset: DuckDB's default, 80% of the machine's memory.",
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
    _threads = in_range("threads", 1, 1024, note=", or unset for one per core")
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
        limit = AUTO_BASE if self.memory_limit == AUTO else self.memory_limit
        resources = Resources(limit, self.threads, self.temp_directory)
        return DuckDBHandle(self.path, read_only=False, resources=resources)

    def identity(self) -> str:
        """The database file's real path and the table, in lower case (DuckDB matches names
        without regard to case), without the default schema `main` or the file's own database
        name: `web_events`, `main.web_events` and `warehouse.main.web_events` in
        `warehouse.duckdb` are one table. A relative `path` is resolved against the working
        directory, so two workers started in different directories are two targets."""
        path = self.path if self.path == ":memory:" else os.path.realpath(self.path)
        parts = self.table.lower().split(".")
        if len(parts) == 3 and parts[0] == Path(path).stem.lower():
            parts = parts[1:]
        if len(parts) == 2 and parts[0] == "main":
            parts = parts[1:]
        return f"duckdb:{path}#{'.'.join(parts)}"

    async def count(self, window: Window, pipeline_id: str) -> int:
        table, ts = self._names()

        def run(cur: duckdb.DuckDBPyConnection) -> int:
            if table_exists(cur, FENCE_TABLE):  # another pipeline's rows are not ours to count
                check_owner(cur, pipeline_id, table_key(cur, self.table))
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

        def run(cur: duckdb.DuckDBPyConnection, interrupt: Interrupt) -> int:
            owned = table_key(cur, self.table)
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
                # Sized only now: a load the fence stops never reads its (maybe cleared) files.
                shape = self._shape(cur, table, uris)
                with self.handle.reserving(cur, self._reservation(shape, manifest.rows)):
                    try:
                        return fill(cur, interrupt, owned, seen)
                    except duckdb.Error as exc:
                        if not out_of_memory(exc):
                            raise
                        raise self._out_of_memory(exc, shape, manifest.rows) from exc
            except BaseException:
                # A COMMIT that failed (a concurrent first load of this window committed its
                # fence row first) has already ended the transaction: keep its error, not
                # ROLLBACK's "no transaction is active".
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                raise

        def fill(
            cur: duckdb.DuckDBPyConnection, interrupt: Interrupt, owned: str, seen: Seen
        ) -> int:
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

    def _shape(self, cur: duckdb.DuckDBPyConnection, table: str, uris: list[str]) -> LoadShape:
        """The staged files' shape; a load fills every column of the table, NULL where the
        files lack it, so the table's columns count too."""
        shape = load_shape(cur, uris)
        return replace(shape, columns=max(shape.columns, table_leaf_columns(cur, table)))

    def _reservation(self, shape: LoadShape, rows: int) -> int:
        """What a load reserves on top of the limit ("auto" only)."""
        return load_memory(shape, rows) if self.memory_limit == AUTO else 0

    def _out_of_memory(self, exc: duckdb.Error, shape: LoadShape, rows: int) -> Exception:
        """The load's error for DuckDB's out-of-memory: what the limit was, and what to set."""
        where = f"DuckDB target {self.path!r} table {self.table!r}"
        columns = shape.columns
        # What "auto" would give this load alone, as advice; only a limit below the least it
        # needs is terminal: a set limit above that may have run out because of the loads
        # beside it, and a retry may pass.
        need = (memory_bytes(AUTO_BASE) + load_memory(shape, rows, floor=False)) // 2**20
        if self.memory_limit == AUTO:
            limit = (memory_bytes(AUTO_BASE) + self.handle.reserved()) // 2**20
            return TargetError(
                f"{where}: the load ran out of memory under memory_limit='auto' ({limit}MiB "
                f"for {columns} columns and the loads in progress beside it); will retry. If it "
                f"persists, set memory_limit above {limit}MiB: {exc}"
            )
        if self.memory_limit is None:
            return TargetError(
                f"{where}: the load ran out of memory under DuckDB's default limit (80% of the "
                f"machine's memory) with {columns} columns; will retry: {exc}"
            )
        what = (
            f"{where}: the load ran out of memory_limit={self.memory_limit!r} with {columns} "
            f"columns and {rows} rows (DuckDB holds about 1 MiB per column and whole row groups "
            "while it loads, and cannot spill them); "
            f"allowed: memory_limit of at least {need}MiB, or 'auto' to size it per load"
        )
        if memory_bytes(self.memory_limit) < least_memory(shape):
            return TargetTerminalError(f"{what}: {exc}")  # no retry fits it in
        return TargetError(f"{what}; will retry (other loads may have held memory): {exc}")

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
