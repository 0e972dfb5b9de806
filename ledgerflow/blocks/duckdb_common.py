"""What the DuckDB source and target share: short-lived connections, used from worker threads.

A DuckDB file can be open read-write in one process at a time. Several worker processes (a work
pool) share the embedded target, so a connection is opened per operation and closed after it, and
an operation that finds the file locked by another process waits for it (up to `lock_timeout`)
instead of failing. Within one process, connections to the same file share one database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

T = TypeVar("T")


class DuckDBHandle:
    """Opens `path` per operation; the session time zone is UTC, so TIMESTAMP (naive) columns are
    read as UTC and compare correctly with the aware window bounds."""

    def __init__(self, path: str, *, read_only: bool, lock_timeout: float = 120.0) -> None:
        self.path = path
        self.read_only = read_only
        self.lock_timeout = lock_timeout

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A new connection, waiting while another process holds the file's lock."""
        if self.path != ":memory:" and not self.read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(self.path, read_only=self.read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        con.execute("SET TimeZone = 'UTC'")
        return con

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `fn` on a fresh connection in a worker thread, and close it."""

        def call() -> T:
            con = self.connect()
            try:
                return fn(con)
            finally:
                con.close()

        return await asyncio.to_thread(call)


def table_exists(cur: duckdb.DuckDBPyConnection, quoted_table: str) -> bool:
    try:
        cur.execute(f"SELECT 1 FROM {quoted_table} LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True
