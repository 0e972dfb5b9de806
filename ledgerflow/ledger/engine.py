"""The ledger's engine plumbing: async engines for Postgres and SQLite, and connections whose
connect errors become `LedgerUnavailable`."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import aiosqlite
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ledgerflow.errors import LedgerSchemaError, TransientError
from ledgerflow.redact import scrub_url, scrub_urls


class LedgerUnavailable(TransientError):
    """The ledger database could not be reached."""


_BUSY_SECONDS = 30
"""How long a SQLite ledger connection waits for another one's lock before it gives up."""


def _locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


async def _switch_to_wal(con: aiosqlite.Connection) -> None:
    """Put the file in WAL mode, waiting for other connections that hold it.

    WAL is a property of the file, kept once set. Switching a rollback-journal file (new, empty,
    or made by another tool) takes an exclusive lock, and SQLite returns "database is locked" at
    once, without its busy handler, when another connection holds the file: so connections that
    open a new ledger together retry here, sleeping on the event loop, not in a thread the other
    connections' commits may need.
    """
    deadline = time.monotonic() + _BUSY_SECONDS
    delay = 0.002
    while True:
        try:
            await con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def _prepare_sqlite(con: aiosqlite.Connection) -> None:
    await con.execute(f"PRAGMA busy_timeout={_BUSY_SECONDS * 1000}")
    await _switch_to_wal(con)
    await con.execute("PRAGMA synchronous=NORMAL")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    try:
        dbapi_connection.run_async(_prepare_sqlite)
    except BaseException:
        # SQLAlchemy's pool does not close a connection whose connect event failed, and an
        # unclosed aiosqlite connection's thread keeps the process from exiting.
        dbapi_connection.close()
        raise


def make_engine(
    url: str, *, pool_size: int = 5, autocommit: bool = False, pooled: bool = True
) -> AsyncEngine:
    """An async engine for a `postgresql+asyncpg://` or `sqlite+aiosqlite://` URL.

    `autocommit` engines run each statement as its own transaction: for the single-statement
    operations, which then need no BEGIN/COMMIT round trips.
    """
    parsed = sa.engine.make_url(url)
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if not pooled:
        options["poolclass"] = NullPool
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": _BUSY_SECONDS}, **options)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() != "asyncpg":
            raise LedgerSchemaError(
                f"ledger URL driver {parsed.get_driver_name()!r} is not async; "
                "use postgresql+asyncpg://user@host/db"
            )
        # No pre-ping: it costs a round trip per checkout. A dropped connection fails one
        # statement, which is transient and retried; recycling keeps idle ones fresh.
        if pooled:
            options.update(pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
        return create_async_engine(url, **options)
    raise LedgerSchemaError(
        f"ledger URL backend {parsed.get_backend_name()!r} is not supported; "
        "allowed: postgresql+asyncpg://... or sqlite+aiosqlite:///path"
    )


class _Guarded:
    """A connection (optionally inside a transaction) whose connect errors are translated."""

    def __init__(self, engine: AsyncEngine, *, begin: bool) -> None:
        self._engine = engine
        self._begin = begin
        self._cm: Any = None

    async def __aenter__(self) -> AsyncConnection:
        self._cm = self._engine.begin() if self._begin else self._engine.connect()
        try:
            conn: AsyncConnection = await self._cm.__aenter__()
        except (OSError, OperationalError, DBAPIError) as exc:
            raise LedgerUnavailable(
                f"cannot reach the ledger at {self._where()}: {scrub_urls(str(exc))}"
            ) from exc
        return conn

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        await self._cm.__aexit__(exc_type, exc, tb)
        if isinstance(exc, DBAPIError) and _read_only(exc):
            # A ledger that opens and reads but refuses writes (a SQLite file the worker may
            # not write, a Postgres replica): say so, not with the statement's SQL.
            raise LedgerUnavailable(
                f"the ledger at {self._where()} cannot be written: "
                f"{scrub_urls(str(exc.orig))}; the worker needs write access to it (for SQLite, "
                "to the file and its folder; for Postgres, a primary, not a read-only replica)"
            ) from exc

    def _where(self) -> str:
        return scrub_url(self._engine.url.render_as_string(hide_password=True))


def _read_only(exc: DBAPIError) -> bool:
    words = str(exc.orig).lower()
    return "readonly database" in words or "read-only transaction" in words
