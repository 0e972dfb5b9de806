"""SnowflakeTarget creates its table once, before and outside the windows' loads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from ledgerflow.blocks import snowflake_sql as sql
from ledgerflow.blocks.snowflake_target import SnowflakeTarget
from ledgerflow.errors import TargetError
from ledgerflow.ports import Fence, Manifest
from ledgerflow.windows import Window

from .warehouse_kit import Peers

START = datetime(2025, 3, 9, tzinfo=UTC)


def fence_for(window: Window, token: int = 1) -> Fence:
    """The fence of the window's first claim (these tests are about concurrency, not fencing)."""
    return Fence("p", window.start, token)


def window(i: int) -> Window:
    start = START + timedelta(hours=i)
    return Window(start, start + timedelta(hours=1), start.date(), "1h")


async def staged(peers: Peers, bucket: str, w: Window, rows: int) -> Manifest:
    batch = pa.RecordBatch.from_pydict(
        {
            "_id": [f"{w.key}-{i}" for i in range(rows)],
            "_index": ["logs"] * rows,
            "ts": pa.array(
                [w.start + timedelta(seconds=i) for i in range(rows)], pa.timestamp("us", tz="UTC")
            ),
            "document": ['{"n": 1}'] * rows,
        }
    )

    async def one() -> AsyncIterator[pa.RecordBatch]:
        yield batch

    return await peers.stage(bucket).write(f"p/{w.start:%Y%m%dT%H}", one(), name_prefix="part")


def sessions(monkeypatch: pytest.MonkeyPatch, *, fail_first_create: bool = False) -> list[str]:
    """The actions of every Snowflake session the target opens, in order."""
    actions: list[str] = []
    real = SnowflakeTarget._session

    async def spy(
        self: SnowflakeTarget, work: Callable[[Any], Any], action: str, **how: Any
    ) -> Any:
        actions.append(action)
        if fail_first_create and actions.count("create table") == 1 and action == "create table":
            # What a worker in another process creating the same table at once can cause.
            raise TargetError("create table failed: write-write conflict on the catalog")
        return await real(self, work, action, **how)

    monkeypatch.setattr(SnowflakeTarget, "_session", spy)
    return actions


async def test_concurrent_first_windows_all_load_and_create_the_table_once(
    peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    actions = sessions(monkeypatch)
    creates: list[str] = []
    real_sql = sql.create_table_sql

    def counted(table: str, *args: Any) -> str:
        creates.append(table)
        return real_sql(table, *args)

    monkeypatch.setattr(sql, "create_table_sql", counted)
    for _ in range(3):  # a fresh database each time: the first windows race to create the table
        bucket = peers.new_bucket()
        target = peers.target(bucket, f"LF_{uuid.uuid4().hex[:8].upper()}")
        windows = [window(i) for i in range(6)]
        manifests = [await staged(peers, bucket, w, 10 + i) for i, w in enumerate(windows)]
        actions.clear()
        loaded = await asyncio.gather(
            *(target.replace(w, m, fence_for(w)) for w, m in zip(windows, manifests, strict=True))
        )
        assert loaded == [10, 11, 12, 13, 14, 15]
        assert await asyncio.gather(*(target.count(w) for w in windows)) == loaded
        # Windows that started before the table was made take turns; all but one find it made.
        assert creates == [target.table], "the first windows each sent a CREATE TABLE"
        creates.clear()
        actions.clear()
        await target.replace(windows[0], manifests[0], fence_for(windows[0]))
        assert actions == ["replace"], "a later window created the table again"


async def test_a_conflicting_create_by_another_worker_is_retried_once_in_the_block(
    peers: Peers, monkeypatch: pytest.MonkeyPatch
) -> None:
    actions = sessions(monkeypatch, fail_first_create=True)
    bucket = peers.new_bucket()
    target = peers.target(bucket, f"LF_{uuid.uuid4().hex[:8].upper()}")
    w = window(0)
    assert await target.replace(w, await staged(peers, bucket, w, 7), fence_for(w)) == 7
    assert actions == ["create table", "create table", "create fence table", "replace"]
