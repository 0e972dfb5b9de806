"""Many workers opening one SQLite ledger at once, the first time, on a laptop.

The embedded ledger runs in WAL mode. A file that is new, empty or made by another tool starts in
SQLite's rollback-journal mode, and switching it takes an exclusive lock for which SQLite calls no
busy handler when the connection already reads: workers that open it together used to fail at
once with "database is locked", instead of waiting their turn as the README promises.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from ledgerflow.ledger import Ledger, LedgerUnavailable

WORKERS = 8
ROUNDS = 16


def _prepare(path: Path, start: str) -> None:
    if start == "empty file":
        path.touch()
    elif start == "rollback-journal file":
        with sqlite3.connect(path) as con:
            con.execute("PRAGMA journal_mode=DELETE")
            con.execute("CREATE TABLE another_tools_table (x INTEGER)")
        con.close()


def _journal_mode(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return str(con.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        con.close()


async def _open_at_once(url: str) -> list[object]:
    ledgers = [Ledger.from_url(url) for _ in range(WORKERS)]
    try:
        # return_exceptions: a failure must not leave the others running against closed engines.
        return await asyncio.gather(
            *(led.create_schema() for led in ledgers), return_exceptions=True
        )
    finally:
        for led in ledgers:
            await led.close()


@pytest.mark.parametrize("start", ["no file", "empty file", "rollback-journal file"])
async def test_workers_creating_a_sqlite_ledger_at_once_all_succeed(
    tmp_path: Path, start: str
) -> None:
    for round_ in range(ROUNDS):
        path = tmp_path / f"ledger-{round_}.db"
        _prepare(path, start)
        results = await _open_at_once(f"sqlite+aiosqlite:///{path}")
        failures = [repr(r) for r in results if isinstance(r, BaseException)]
        assert failures == [], f"round {round_}: {len(failures)} of {WORKERS} workers failed"
        assert results == [[]] * WORKERS
        assert _journal_mode(path) == "wal"
        async with Ledger.from_url(f"sqlite+aiosqlite:///{path}") as ledger:
            await ledger.check_schema()


def _sqlite_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


async def test_a_file_that_is_not_a_database_is_named_and_leaves_no_thread_behind(
    tmp_path: Path,
) -> None:
    """A connection that fails while it is being set up must still be closed: aiosqlite runs each
    one on a thread that is not a daemon, so one left open keeps the worker process from exiting
    after it reported the error."""
    path = tmp_path / "ledger.db"
    path.write_bytes(b"these are not the bytes of a SQLite database\n" * 100)
    before = set(_sqlite_threads())
    async with Ledger.from_url(f"sqlite+aiosqlite:///{path}") as ledger:
        with pytest.raises(LedgerUnavailable, match="file is not a database"):
            await ledger.create_schema()
    for _ in range(100):
        left = [t for t in _sqlite_threads() if t not in before and t.is_alive()]
        if not left:
            break
        await asyncio.sleep(0.05)
    assert left == []
