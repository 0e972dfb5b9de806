"""A throwaway Postgres database for a benchmark: the local server, or an embedded one."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator

import asyncpg


def admin_dsn(stack: contextlib.ExitStack) -> str:
    explicit = os.environ.get("LEDGERFLOW_TEST_PG")
    if explicit:
        return explicit
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return "postgresql://postgres@127.0.0.1:5432/postgres"
    except OSError:
        from pgserver.postgres_server import get_server

        folder = stack.enter_context(tempfile.TemporaryDirectory())
        server = get_server(folder, cleanup_mode="stop")
        stack.callback(server.cleanup)
        return str(server.get_uri())


@contextlib.asynccontextmanager
async def fresh_database(dsn: str) -> AsyncIterator[str]:
    """Yield a postgresql+asyncpg URL of a new database, dropped afterwards."""
    name = f"lf_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    head, _, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}" + (f"?{query}" if query else "")
    finally:
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
