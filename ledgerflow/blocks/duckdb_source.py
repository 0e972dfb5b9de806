"""`DuckDBSource`: the embedded source, a DuckDB table or files DuckDB reads, with a timestamp.

Rows whose timestamp is NULL belong to no window: they are neither counted nor extracted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import duckdb
import pyarrow as pa
from prefect.blocks.core import Block

from ledgerflow.blocks.checks import forbid_unknown_fields, in_range
from ledgerflow.blocks.duckdb_common import DUCKDB_ERRORS, DuckDBHandle, translate
from ledgerflow.compat import Field, root_validator, validator
from ledgerflow.errors import SourceError, SourceTerminalError
from ledgerflow.sqlident import quote_identifier
from ledgerflow.windows import Window

_READERS = {
    ".parquet": "read_parquet",
    ".csv": "read_csv",
    ".json": "read_json",
    ".jsonl": "read_json",
}
_TIME_TYPES = ("TIMESTAMP", "DATE")
_OTHER_PRECISIONS = ("TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S")


class DuckDBSource(Block):
    """Reads windows from a DuckDB table or from Parquet/CSV/JSON files matched by a glob.

    Example:
        Count one window's rows:
        ```python
        from ledgerflow.blocks.duckdb_source import DuckDBSource

        source = DuckDBSource.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Ledgerflow DuckDB Source"
    _block_type_slug = "ledgerflow-duckdb-source"
    _description = "Embedded source: a DuckDB table or file glob with a timestamp column."
    _known_fields = forbid_unknown_fields()

    path: str = Field(":memory:", title="Database file", description="DuckDB file (read-only).")
    table: str | None = Field(None, title="Table", description="Table to read (or use files).")
    files: str | None = Field(
        None, title="Files", description="Glob of .parquet, .csv or .json files (or use table)."
    )
    timestamp_column: str = Field(
        "ts",
        title="Timestamp column",
        description="TIMESTAMP (naive: UTC; _NS, _MS, _S read as microseconds), TIMESTAMPTZ or "
        "DATE (the day's 00:00 UTC, not the pipeline's local midnight) column.",
    )
    columns: list[str] | None = Field(None, title="Columns", description="Default: all columns.")
    batch_rows: int = Field(65_536, title="Rows per batch", description="Bounds memory per batch.")

    @validator("table")
    def _table(cls, v: str | None) -> str | None:
        if v is not None:
            quote_identifier(v, field="table")
        return v

    @validator("timestamp_column")
    def _ts(cls, v: str) -> str:
        quote_identifier(v, field="timestamp_column")
        return v

    @validator("columns", each_item=True)
    def _column(cls, v: str) -> str:
        quote_identifier(v, field="columns")
        return v

    @validator("files")
    def _files(cls, v: str | None) -> str | None:
        if v is not None and not any(v.endswith(ext) for ext in _READERS):
            raise ValueError(f"files={v!r} must end in one of {sorted(_READERS)}")
        return v

    _batch = in_range("batch_rows", 1_000, 10_000_000)

    @root_validator(skip_on_failure=True)
    def _one_relation(cls, values: dict[str, Any]) -> dict[str, Any]:
        if (values.get("table") is None) == (values.get("files") is None):
            raise ValueError("set exactly one of table or files")
        return values

    # --- Source protocol ----------------------------------------------------------------------

    async def count(self, window: Window) -> int:
        relation, params = self._relation()

        def run(cur: duckdb.DuckDBPyConnection) -> int:
            _, inside = self._reading(cur, relation, params)
            sql = f"SELECT count(*) FROM {relation} WHERE {inside}"
            row = cur.execute(sql, [*params, window.start, window.end]).fetchone()
            return int(row[0]) if row else 0

        result: int = await self._guard(self.handle.run(run))
        return result

    async def fingerprint(self, window: Window) -> str | None:
        """The window's row count, the sum of a hash of each extracted row (its columns'
        values) and a digest of the extracted columns' names and types: a row deleted, added or
        edited in place changes it, whatever the count, and so does a column renamed or retyped.
        DuckDB's `hash` sees stored values only: `12.34::DECIMAL(12,2)` hashes like `1234` and a
        renamed column like the old one, so without the schema digest a source converted from
        `latency_ms INTEGER` to `latency_s DECIMAL(12,3)` kept its fingerprint (red-team #7)."""
        relation, params = self._relation()

        def run(cur: duckdb.DuckDBPyConnection) -> str:
            cols, inside = self._reading(cur, relation, params)
            sql = (
                f"SELECT count(*), sum(hash(r)) FROM (SELECT {cols} FROM {relation} "
                f"WHERE {inside}) AS r"
            )
            row = cur.execute(sql, [*params, window.start, window.end]).fetchone()
            rows, digest = row if row else (0, None)
            described = cur.execute(f"SELECT {cols} FROM {relation} LIMIT 0", params).description
            schema = hashlib.sha256(
                json.dumps([(d[0], str(d[1])) for d in described or []]).encode()
            ).hexdigest()[:16]
            return f"duckdb:{int(rows)}:{int(digest or 0)}:{schema}"

        result: str = await self._guard(self.handle.run(run))
        return result

    async def extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        relation, params = self._relation()
        handle = self.handle

        def open_reader() -> tuple[duckdb.DuckDBPyConnection, pa.RecordBatchReader]:
            cur = handle.open()
            try:
                cols, inside = self._reading(cur, relation, params)
                sql = f"SELECT {cols} FROM {relation} WHERE {inside}"
                cur.execute(sql, [*params, window.start, window.end])
                return cur, cur.to_arrow_reader(self.batch_rows)
            except BaseException:
                handle.close(cur)
                raise

        def next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
            try:
                return reader.read_next_batch()
            except StopIteration:  # cannot cross a thread boundary into a Future
                return None

        cur, reader = await self._guard(asyncio.to_thread(open_reader))
        try:
            while (batch := await self._guard(asyncio.to_thread(next_batch, reader))) is not None:
                if batch.num_rows:
                    yield batch
        finally:
            handle.close(cur)

    # --- helpers ------------------------------------------------------------------------------

    @property
    def handle(self) -> DuckDBHandle:
        """Holds the file only while an operation runs (nothing stays open between them)."""
        return DuckDBHandle(self.path, read_only=self.path != ":memory:")

    def _relation(self) -> tuple[str, list[Any]]:
        if self.table is not None:
            return quote_identifier(self.table, field="table"), []
        assert self.files is not None
        reader = next(fn for ext, fn in _READERS.items() if self.files.endswith(ext))
        return f"{reader}(?)", [self.files]

    def _reading(
        self, cur: duckdb.DuckDBPyConnection, relation: str, params: list[Any]
    ) -> tuple[str, str]:
        """(the extracted columns, the WHERE clause for `[?, ?)`), the timestamp column read as
        `_timestamp` reads it in both."""
        ts = self._timestamp(cur, relation, params)
        name = quote_identifier(self.timestamp_column)
        if not self.columns:
            cols = "*" if ts == name else f"* REPLACE ({ts} AS {name})"
        else:
            cols = ", ".join(
                f"{ts} AS {name}" if c == self.timestamp_column else quote_identifier(c)
                for c in self.columns
            )
        return cols, f"{ts} >= ? AND {ts} < ?"

    def _timestamp(self, cur: duckdb.DuckDBPyConnection, relation: str, params: list[Any]) -> str:
        """The timestamp column as an expression DuckDB compares with the TIMESTAMPTZ bounds.
        TIMESTAMP_NS, _MS and _S (pandas' and pyarrow's naive Parquet timestamps are _NS) it
        will not compare (a Binder Error, here and in the target): they are read, and loaded,
        as TIMESTAMP, microseconds, as every ledgerflow window is cut (nanoseconds are
        dropped, so a value keeps its side of a boundary)."""
        kind = self._check_timestamp(cur, relation, params).upper()
        ts = quote_identifier(self.timestamp_column)
        return f"CAST({ts} AS TIMESTAMP)" if kind in _OTHER_PRECISIONS else ts

    def _check_timestamp(
        self, cur: duckdb.DuckDBPyConnection, relation: str, params: list[Any]
    ) -> str:
        described = cur.execute(f"DESCRIBE SELECT * FROM {relation}", params).fetchall()
        types = {str(name): str(kind) for name, kind, *_ in described}
        kind = types.get(self.timestamp_column)
        if kind is None:
            raise SourceTerminalError(
                f"timestamp_column={self.timestamp_column!r} is not a column of {relation}; "
                f"columns are {sorted(types)}"
            )
        if not kind.upper().startswith(_TIME_TYPES):
            raise SourceTerminalError(
                f"timestamp_column={self.timestamp_column!r} has type {kind}; "
                "allowed: TIMESTAMP, TIMESTAMPTZ or DATE"
            )
        return kind

    async def _guard(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except DUCKDB_ERRORS as exc:
            raise translate(
                exc,
                where=f"DuckDB source {self.path!r}",
                refused="refused the query",
                transient=SourceError,
                terminal=SourceTerminalError,
            ) from exc
