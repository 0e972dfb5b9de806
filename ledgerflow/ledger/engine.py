"""The ledger's engine plumbing: async engines for Postgres and SQLite, and connections whose
connect errors become `LedgerUnavailable`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ledgerflow.errors import LedgerSchemaError, TransientError
from ledgerflow.redact import scrub_url, scrub_urls


class LedgerUnavailable(TransientError):
    """The ledger database could not be reached."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


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
        engine = create_async_engine(url, connect_args={"timeout": 30}, **options)
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
            url = scrub_url(self._engine.url.render_as_string(hide_password=True))
            raise LedgerUnavailable(
                f"cannot reach the ledger at {url}: {scrub_urls(str(exc))}"
            ) from exc
        return conn

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)
