"""Upgrading a ledger made by the previous schema, in place, with rows in every state."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from ledgerflow.errors import LedgerSchemaError
from ledgerflow.ledger import Ledger, Status
from ledgerflow.ledger.models import FENCE_COUNTERS, RECORDS, SCHEMA_VERSION

from tests.integration.ledger_v1 import DDL

PIPE = "orders"
T0 = datetime(2025, 3, 8, 8, tzinfo=UTC)
H2 = timedelta(hours=2)
FAR = datetime(2100, 1, 1, tzinfo=UTC)


def _row(i: int, status: Status, **extra: Any) -> dict[str, Any]:
    start = T0 + i * H2
    return {
        "pipeline_id": PIPE,
        "target_day": start.date(),
        "window_start_time": start,
        "window_end_time": start + H2,
        "time_interval": "2h",
        "pipeline_status": status.value,
        "record_first_created_time": T0,
        "record_last_updated_time": T0,
        **extra,
    }


V1_ROWS = [
    _row(0, Status.COMPLETED, source_count=10, target_count=10, audit_result="PASS",
         audit_status="COMPLETED", count_difference=0, percentage_difference=0,
         phase_completed="AUDIT", loaded_count=10, extracted_count=10),
    _row(1, Status.FAILED, error_message="[audit] target 9 != source 10", retry_attempt=2,
         source_count=10, target_count=9, audit_result="FAIL", percentage_difference=10),
    _row(2, Status.IN_PROGRESS, lease_token="00000000-0000-0000-0000-000000000001",
         pipeline_locked_at=T0, dag_run_id="run-1", phase_completed="SOURCE_TO_STAGE",
         stage_manifest='{"location": "x", "files": []}'),
    _row(3, Status.PENDING, force_reload=True),
    _row(4, Status.PENDING, priority=1),
]  # fmt: skip


async def _make_v1_ledger(url: str) -> None:
    """The tables exactly as version 1 created them, stamped 1, holding V1_ROWS."""
    engine = sa.ext.asyncio.create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in DDL[engine.dialect.name]:
                await conn.exec_driver_sql(statement)
            await conn.execute(
                sa.text(
                    "INSERT INTO ledgerflow_schema (component, version, applied_at) "
                    "VALUES ('pipeline_records', 1, :at)"
                ),
                {"at": T0 if engine.dialect.name == "postgresql" else T0.isoformat(" ")[:19]},
            )
            for row in V1_ROWS:  # one by one, naming only the columns version 1 had
                columns = [sa.column(name, RECORDS.c[name].type) for name in row]
                await conn.execute(sa.table(RECORDS.name, *columns).insert(), row)
    finally:
        await engine.dispose()


async def test_a_version_1_ledger_is_refused_until_upgraded_then_keeps_every_row(
    ledger_url: str,
) -> None:
    await _make_v1_ledger(ledger_url)
    async with Ledger.from_url(ledger_url) as ledger:
        with pytest.raises(LedgerSchemaError, match=r"version 1.*ledgerflow init"):
            await ledger.check_schema()

        assert await ledger.create_schema() == list(range(2, SCHEMA_VERSION + 1))
        await ledger.check_schema()
        assert await ledger.create_schema() == []  # idempotent

        async with ledger.engine.connect() as conn:
            columns = await conn.run_sync(
                lambda sync: {c["name"] for c in sa.inspect(sync).get_columns(RECORDS.name)}
            )
        assert columns == {c.name for c in RECORDS.columns}

        rows = await ledger.windows(PIPE)
        assert len(rows) == len(V1_ROWS)
        for before, after in zip(V1_ROWS, rows, strict=True):
            for column, value in before.items():
                got = getattr(after, column)
                assert got == value or str(got) == str(value), (column, got, value)

        # The upgraded ledger works: the priority window is claimed first, completed, and the
        # live lease taken before the upgrade still fences its holder.
        assert {r.fence_token for r in rows} == {0}
        async with ledger.engine.connect() as conn:  # the pipeline's counter, from its windows
            counters = (await conn.execute(sa.select(FENCE_COUNTERS))).all()
        assert [tuple(c) for c in counters] == [(PIPE, 0)]
        lease = await ledger.claim(PIPE, "run-2", cutoff=FAR)
        assert lease is not None and lease.window.start == T0 + 4 * H2
        assert lease.fence == 1  # greater than anything a version-1 worker wrote (no fence)
        # The widened percentage: a target 100,001 times its source overflowed NUMERIC(9,2).
        done = await ledger.complete(
            lease, {"source_count": 1, "target_count": 100_001, "percentage_difference": 10**7}
        )
        assert done.pipeline_status == Status.COMPLETED
        assert done.percentage_difference == 10**7
        released = await ledger.release_stale(PIPE, older_than=timedelta(0), max_attempts=3)
        assert [r.window_start_time for r in released] == [T0 + 2 * H2]


async def test_workers_upgrading_at_once_migrate_once(ledger_url: str) -> None:
    await _make_v1_ledger(ledger_url)
    ledgers = [Ledger.from_url(ledger_url) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(led.create_schema() for led in ledgers))
    finally:
        for led in ledgers:
            await led.close()
    assert sorted(applied, key=len) == [[], [], list(range(2, SCHEMA_VERSION + 1))]


async def test_a_database_without_ledgerflow_tables_is_created_fresh(ledger_url: str) -> None:
    async with Ledger.from_url(ledger_url) as ledger:
        with pytest.raises(LedgerSchemaError, match="no ledgerflow schema yet"):
            await ledger.check_schema()
        assert await ledger.create_schema() == []
        await ledger.check_schema()
