"""A ledger the worker may read but not write: a SQLite file of mode 0444 (root-owned, copied off
a read-only snapshot), or a Postgres database that only takes read-only transactions (a replica).
Opening it, `create_schema` (nothing to do) and `check_schema` pass; the first write used to fail
with SQLAlchemy's raw `OperationalError` carrying the claim's SQL, not the ledger's own error
naming the cause and what to do. (Red team, SQLite ledger wave: found by a helper attacking the
embedded ledger; several worker processes, SIGKILL mid-write and locked files all held.)

As root, file modes do not stop writes, so the test also marks the file immutable (chattr +i)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from ledgerflow.ledger import Ledger, LedgerUnavailable

FAR = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture
def read_only_ledger(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ledger.db"
    yield path
    if os.geteuid() == 0 and path.exists():
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)


def _make_read_only(path: Path) -> None:
    path.chmod(0o444)
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a file read-only")
        done = subprocess.run(["chattr", "+i", str(path)], check=False, capture_output=True)
        if done.returncode:
            pytest.skip(f"chattr +i refused here ({done.stderr.decode().strip()})")


async def test_a_read_only_sqlite_ledger_file_says_it_cannot_be_written(
    read_only_ledger: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{read_only_ledger}"
    async with Ledger.from_url(url) as ledger:
        await ledger.create_schema()
    _make_read_only(read_only_ledger)
    with pytest.raises(OSError):
        read_only_ledger.open("r+b")  # the file really cannot be written
    async with Ledger.from_url(url) as ledger:
        await ledger.check_schema()  # reading works
        with pytest.raises(LedgerUnavailable, match=r"cannot be written.*readonly.*write access"):
            await ledger.claim("orders", "run-1", cutoff=FAR)


async def test_a_read_only_postgres_ledger_says_it_cannot_be_written(
    pg_admin_dsn: str, pg_url: str
) -> None:
    async with Ledger.from_url(pg_url) as ledger:
        await ledger.create_schema()
    name = pg_url.rsplit("/", 1)[1].split("?")[0]
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    finally:
        await admin.close()
    async with Ledger.from_url(pg_url) as ledger:
        await ledger.check_schema()
        with pytest.raises(LedgerUnavailable, match=r"cannot be written.*read-only.*replica"):
            await ledger.claim("orders", "run-1", cutoff=FAR)
