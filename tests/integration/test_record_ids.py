"""A window's ledger id is never reused, so `retry --id N` from an older notification never acts
on another window.

A re-tile deletes PENDING windows and the next registration inserts new ones. SQLite hands out
max(id) + 1 unless the table is AUTOINCREMENT, so the new windows used to take the deleted ones'
ids; Postgres' sequence never reuses one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from ledgerflow.ledger import Ledger, migrations
from ledgerflow.ledger.models import RECORDS, SCHEMA_VERSION

from tests.integration.test_fence_counter import T0, grid, scheduled
from tests.integration.test_migrations import _make_v1_ledger


async def test_a_window_registered_after_a_retile_never_takes_a_deleted_windows_id(
    ledger: Ledger,
) -> None:
    await scheduled(ledger, grid("1h"), T0 + timedelta(hours=2))  # [T0, +1h), [+1h, +2h)
    deleted = {r.id for r in await ledger.windows("orders")}
    assert len(deleted) == 2
    await ledger.retile("orders", grid("2h"), T0)
    assert await ledger.windows("orders") == []
    await scheduled(ledger, grid("2h"), T0 + timedelta(hours=2))
    [window] = await ledger.windows("orders")
    assert window.window_start_time == T0
    assert window.id not in deleted and window.id is not None
    assert window.id > max(i for i in deleted if i is not None)


async def test_an_upgraded_sqlite_ledger_keeps_its_rows_ids_and_claim_indexes_and_never_reuses(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    await _make_v1_ledger(url)
    async with Ledger.from_url(url) as ledger:
        assert await ledger.create_schema() == list(range(2, SCHEMA_VERSION + 1))
        rows = await ledger.windows("orders")
        assert [r.id for r in rows] == [1, 2, 3, 4, 5]
        top = rows[-1]
        assert top.id is not None
        async with ledger.engine.begin() as conn:
            await conn.execute(sa.delete(RECORDS).where(RECORDS.c.id == top.id))
            schema = dict(
                (
                    await conn.execute(
                        sa.text("SELECT name, sql FROM sqlite_master WHERE tbl_name = :t"),
                        {"t": RECORDS.name},
                    )
                ).all()
            )
            values = {c.name: getattr(top, c.name) for c in RECORDS.columns if c.name != "id"}
            values["window_start_time"] = later = datetime(2030, 1, 1, tzinfo=UTC)
            values["window_end_time"] = later + timedelta(hours=2)
            new_id = (await conn.execute(sa.insert(RECORDS).values(**values))).inserted_primary_key
    assert "AUTOINCREMENT" in schema[RECORDS.name]
    for name in ("idx_claim_oldest", "idx_claim_newest"):
        assert "WHERE pipeline_status = 'PENDING'" in schema[name], schema[name]
    assert "uq_pipeline_window" in schema[RECORDS.name]
    assert {
        "idx_pipeline_status",
        "idx_time_window",
        "idx_phase_completed",
        "idx_locked_at",
    } <= set(schema)
    assert new_id is not None and new_id[0] > top.id


async def test_a_version_2_sqlite_ledger_without_autoincrement_is_rebuilt_by_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An early build of version 2 stamped SQLite ledgers 2 without AUTOINCREMENT."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    await _make_v1_ledger(url)
    with monkeypatch.context() as early_build:
        early_build.setattr(migrations, "_sqlite_autoincrement", lambda connection: True)
        async with Ledger.from_url(url) as ledger:
            assert await ledger.create_schema() == list(range(2, SCHEMA_VERSION + 1))
    assert "AUTOINCREMENT" not in await _table_sql(url)
    async with Ledger.from_url(url) as ledger:
        assert await ledger.create_schema() == []
        assert [r.id for r in await ledger.windows("orders")] == [1, 2, 3, 4, 5]
    assert "AUTOINCREMENT" in await _table_sql(url)


async def _table_sql(url: str) -> str:
    async with Ledger.from_url(url) as ledger, ledger.engine.connect() as conn:
        found = await conn.scalar(
            sa.text("SELECT sql FROM sqlite_master WHERE name = :t"), {"t": RECORDS.name}
        )
    return str(found)
