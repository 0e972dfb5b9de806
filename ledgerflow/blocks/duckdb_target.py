"""`DuckDBTarget`: the embedded target. A window is replaced in one DuckDB transaction."""

from __future__ import annotations

import contextlib
from typing import Any

import duckdb
from prefect.blocks.core import Block

from ledgerflow import failpoints
from ledgerflow.blocks.duckdb_common import (
    DUCKDB_ERRORS,
    DuckDBHandle,
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
    TargetError,
    TargetTerminalError,
)
from ledgerflow.ports import Fence, Manifest
from ledgerflow.sqlident import quote_identifier
from ledgerflow.windows import Window


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
        return DuckDBHandle(self.path, read_only=False)

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

        def run(cur: duckdb.DuckDBPyConnection, interrupt: Interrupt) -> int:
            with creating_tables:
                create_fence_table(cur)
            has_table = self._ensure_table(cur, table, uris)
            cur.execute("BEGIN TRANSACTION")
            try:
                # First: a newer claim that reached the target already makes this a no-op.
                advance_fence(cur, fence)
                if not has_table:
                    cur.execute("COMMIT")  # the fence advanced; there is nothing to replace
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
                cur.execute("COMMIT")
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
"""The target's fence rows: the greatest claim number seen per (pipeline, window start)."""


def create_fence_table(cur: duckdb.DuckDBPyConnection) -> None:
    """Once, outside the window's transaction (a CREATE inside it would conflict with every
    other window's transaction)."""
    if table_exists(cur, FENCE_TABLE):
        return
    try:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (pipeline_id VARCHAR NOT NULL, "
            "window_start TIMESTAMPTZ NOT NULL, token BIGINT NOT NULL, "
            "PRIMARY KEY (pipeline_id, window_start))"
        )
    except duckdb.TransactionException:
        if not table_exists(cur, FENCE_TABLE):  # not another thread creating it first
            raise


def advance_fence(cur: duckdb.DuckDBPyConnection, fence: Fence) -> None:
    """Record `fence.token` for the window unless a greater one is recorded (FencedOut).

    The row is always written (an equal token rewrites it), so of two transactions fencing one
    window, DuckDB's write-write conflict aborts the second: they cannot both commit.
    """
    row = cur.execute(
        f"INSERT INTO {FENCE_TABLE} VALUES (?, ?, ?) ON CONFLICT (pipeline_id, window_start) "
        f"DO UPDATE SET token = excluded.token WHERE {FENCE_TABLE}.token <= excluded.token "
        "RETURNING token",
        [fence.pipeline_id, fence.window_start, fence.token],
    ).fetchone()
    if row is None:
        found = cur.execute(
            f"SELECT token FROM {FENCE_TABLE} WHERE pipeline_id = ? AND window_start = ?",
            [fence.pipeline_id, fence.window_start],
        ).fetchone()
        recorded = int(found[0]) if found else -1
        raise FencedOut(fence.pipeline_id, fence.window_start.isoformat(), fence.token, recorded)
