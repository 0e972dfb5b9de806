"""What the DuckDB source and target share: a lazily opened connection used from worker threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

T = TypeVar("T")


class DuckDBHandle:
    """One DuckDB connection per block instance; each call gets its own cursor in a thread.

    DuckDB cursors are cheap and may be used from any one thread at a time, which is what
    `asyncio.to_thread` gives each call. The session time zone is UTC, so TIMESTAMP (naive)
    columns are read as UTC and compare correctly with the aware window bounds.
    """

    def __init__(self, path: str, *, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._con is None:
                if self.path != ":memory:" and not self.read_only:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._con = duckdb.connect(self.path, read_only=self.read_only)
                self._con.execute("SET TimeZone = 'UTC'")
            cur = self._con.cursor()
        cur.execute("SET TimeZone = 'UTC'")
        return cur

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        def call() -> T:
            cur = self.cursor()
            try:
                return fn(cur)
            finally:
                cur.close()

        return await asyncio.to_thread(call)

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None


def table_exists(cur: duckdb.DuckDBPyConnection, quoted_table: str) -> bool:
    try:
        cur.execute(f"SELECT 1 FROM {quoted_table} LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True
