"""`DuckDBTarget`: the embedded target. A window is replaced in one DuckDB transaction."""

from __future__ import annotations

from typing import Any

import duckdb
from prefect.blocks.core import Block
from pydantic.v1 import Field, validator

from ledgerflow import failpoints
from ledgerflow.blocks.duckdb_common import (
    DUCKDB_ERRORS,
    DuckDBHandle,
    creating_tables,
    table_exists,
    translate,
)
from ledgerflow.errors import LoadCountMismatch, TargetError, TargetTerminalError
from ledgerflow.ports import Manifest
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

    async def replace(self, window: Window, manifest: Manifest) -> int:
        table, ts = self._names()
        uris = [f.uri for f in manifest.files]

        def run(cur: duckdb.DuckDBPyConnection) -> int:
            if not self._ensure_table(cur, table, uris):
                return 0
            cur.execute("BEGIN TRANSACTION")
            try:
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
                cur.execute("COMMIT")
                return loaded
            except BaseException:
                cur.execute("ROLLBACK")
                raise

        result: int = await self._guard(self.handle.run(run))
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
