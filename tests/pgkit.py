"""Throwaway Postgres databases for tests and the chaos scripts (which run outside pytest)."""

from __future__ import annotations

import os
import uuid

import asyncpg

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_dsn() -> str:
    """The superuser DSN the chaos scripts use: LEDGERFLOW_TEST_PG or the local server."""
    return os.environ.get("LEDGERFLOW_TEST_PG", DEFAULT_ADMIN_DSN)


def asyncpg_url(dsn: str, database: str) -> str:
    """A SQLAlchemy asyncpg URL for `database` on the server of `dsn`."""
    head, _, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}" + (f"?{query}" if query else "")


async def create_database(admin: str, prefix: str = "lf_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
