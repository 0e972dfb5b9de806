"""Shared fixtures: a real Postgres (the machine's, or an embedded one), SQLite, Prefect."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ledgerflow.ledger import Ledger

from tests.pgkit import asyncpg_url, create_database, drop_database

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _reachable(host: str, port: int) -> bool:
    try:
        # A closed port refuses at once; the generous timeout only spares a busy machine.
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Postgres superuser DSN: LEDGERFLOW_TEST_PG, the local server, or an embedded one."""
    explicit = os.environ.get("LEDGERFLOW_TEST_PG")
    if explicit:
        yield explicit
        return
    if _reachable("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
async def pg_url(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = await create_database(pg_admin_dsn)
    yield asyncpg_url(pg_admin_dsn, name)
    await drop_database(pg_admin_dsn, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_admin_dsn: str
) -> AsyncIterator[str]:
    """A fresh ledger database URL on each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    name = await create_database(pg_admin_dsn)
    yield asyncpg_url(pg_admin_dsn, name)
    await drop_database(pg_admin_dsn, name)


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    """A ledger with its schema, on each backend in turn."""
    led = Ledger.from_url(ledger_url)
    await led.create_schema()
    yield led
    await led.close()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect API (SQLite) for the whole session: starting one costs seconds."""
    from ledgerflow.compat import PREFECT_3, prefect_test_harness

    with prefect_test_harness():
        if not PREFECT_3:  # Prefect 3's harness has started (and migrated) its server by now
            _prepare_prefect_database()
        yield


def _prepare_prefect_database() -> None:
    """Migrate the harness's database and register every block type before its API starts.

    Prefect 2's in-process API gives its start (the same two steps) 30 s, hard-coded
    (`LifespanManager(startup_timeout=30)` in prefect/client/base.py); on a busy shared machine a
    fresh database took longer and the first test to touch the API failed with a TimeoutError.
    Done here, with no limit, the start finds the work done (migrations at head, block types
    imported and stored) and takes a fraction of that."""
    import asyncio

    from prefect.server.database.dependencies import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    async def prepare() -> None:
        db = provide_database_interface()
        await db.create_db()
        session = await db.session()
        async with session:
            await run_block_auto_registration(session=session)
            await session.commit()

    asyncio.run(prepare())
