"""S3Stage on moto's S3 server and SnowflakeTarget on fakesnow's server: the production path."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from ledgerflow.blocks.snowflake_target import SnowflakeTarget
from ledgerflow.errors import (
    FencedOut,
    LoadCountMismatch,
    RowsOutsideWindow,
    StageTerminalError,
    TableOwnedByAnotherPipeline,
    TargetTerminalError,
)
from ledgerflow.ports import Fence
from ledgerflow.windows import Window

from .warehouse_kit import Peers, s3_auth_enforced

START = datetime(2025, 3, 9, 10, tzinfo=UTC)
WINDOW = Window(START, START + timedelta(hours=2), START.date(), "2h")
FENCE = Fence("p", START, 1)


@pytest.fixture
def bucket(peers: Peers) -> str:
    return peers.new_bucket()


@pytest.fixture
def database() -> str:
    return f"LF_{uuid.uuid4().hex[:8].upper()}"


def events(n: int, start: datetime = START, prefix: str = "e") -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            "_id": [f"{prefix}{i}" for i in range(n)],
            "_index": ["logs"] * n,
            "ts": pa.array(
                [start + timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
            "document": [f'{{"n": {i}, "tags": ["a", "b"]}}' for i in range(n)],
        }
    )


async def stream(*batches: pa.RecordBatch) -> AsyncIterator[pa.RecordBatch]:
    for b in batches:
        yield b


# --- S3Stage ------------------------------------------------------------------------------------


async def test_stage_writes_parts_lists_them_and_clears(peers: Peers, bucket: str) -> None:
    stage = peers.stage(bucket, target_file_mb=1)
    big = [events(120_000, prefix=f"b{k}-") for k in range(4)]
    manifest = await stage.write("p/2025-03-09/w", stream(*big), name_prefix="part-abc")
    assert manifest.rows == 480_000 and len(manifest.files) > 1
    assert all(
        f.uri.startswith(f"s3://{bucket}/ledgerflow/p/2025-03-09/w/part-abc-")
        for f in manifest.files
    )
    assert manifest.matches(await stage.files("p/2025-03-09/w"))
    await stage.clear("p/2025-03-09/w")
    assert await stage.files("p/2025-03-09/w") == []


async def test_stage_clear_handles_more_than_1000_keys(peers: Peers, bucket: str) -> None:
    client = peers.credentials().get_s3_client()
    for i in range(1_205):
        client.put_object(Bucket=bucket, Key=f"ledgerflow/p/d/w/part-{i:05d}.parquet", Body=b"x")
    client.put_object(Bucket=bucket, Key="ledgerflow/p/d/other/keep.parquet", Body=b"x")
    stage = peers.stage(bucket)
    assert len(await stage.files("p/d/w")) == 1_205
    await stage.clear("p/d/w")
    assert await stage.files("p/d/w") == []
    assert len(await stage.files("p/d/other")) == 1


async def test_a_failed_write_leaves_no_parts_behind(peers: Peers, bucket: str) -> None:
    stage = peers.stage(bucket, target_file_mb=1)

    async def broken() -> AsyncIterator[pa.RecordBatch]:
        yield events(60_000)
        yield events(60_000, prefix="f")
        raise ConnectionError("source went away")

    with pytest.raises(ConnectionError):
        await stage.write("p/d/w", broken(), name_prefix="part-x")
    assert await stage.files("p/d/w") == []


async def test_a_missing_bucket_is_a_clear_error(peers: Peers) -> None:
    with pytest.raises(
        StageTerminalError, match=r"bucket does not exist \(NoSuchBucket\).*'no-such-bucket'"
    ):
        await peers.stage("no-such-bucket").files("p/d/w")


async def test_refused_credentials_are_clear_terminal_errors_without_the_secret(
    peers: Peers, bucket: str
) -> None:
    stage = peers.stage(bucket)
    stage.bucket.credentials = peers.credentials("AKIAUNKNOWNLEDGERFLW", "sk-never-shown-42")
    with s3_auth_enforced(), pytest.raises(StageTerminalError) as info:
        await stage.write("p/d/w", stream(events(10)), name_prefix="part-x")
    assert "the access key id is not known (InvalidAccessKeyId)" in str(info.value)
    assert "sk-never-shown-42" not in str(info.value)
    assert await stage.files("p/d/w") == []


# --- SnowflakeTarget ----------------------------------------------------------------------------


async def staged(
    peers: Peers, bucket: str, *batches: pa.RecordBatch, prefix: str = "part-a"
) -> Any:
    return await peers.stage(bucket).write("p/2025-03-09/w", stream(*batches), name_prefix=prefix)


async def test_replace_loads_the_window_with_a_variant_document(
    peers: Peers, bucket: str, database: str
) -> None:
    target = peers.target(bucket, database)
    assert await target.count(WINDOW) == 0
    manifest = await staged(peers, bucket, events(500))
    assert await target.replace(WINDOW, manifest, FENCE) == 500
    assert await target.count(WINDOW) == 500
    with peers.sql_connection(database) as conn:
        cur = conn.cursor()
        cur.execute("SELECT DOCUMENT:n, WINDOW_START, LOADED_AT FROM EVENTS WHERE _ID = 'e7'")
        n, window_start, loaded_at = cur.fetchone()
    assert int(n) == 7
    assert window_start is not None and loaded_at is not None


async def test_a_rerun_replaces_instead_of_duplicating_even_with_the_same_files(
    peers: Peers, bucket: str, database: str
) -> None:
    target = peers.target(bucket, database)
    manifest = await staged(peers, bucket, events(300))
    assert await target.replace(WINDOW, manifest, FENCE) == 300
    # Same file names again (a resumed window): FORCE loads them, the DELETE keeps it exact.
    assert await target.replace(WINDOW, manifest, FENCE) == 300
    assert await target.count(WINDOW) == 300


async def test_rows_deleted_behind_our_back_load_again_not_load_skipped(
    peers: Peers, bucket: str, database: str
) -> None:
    target = peers.target(bucket, database)
    manifest = await staged(peers, bucket, events(200))
    await target.replace(WINDOW, manifest, FENCE)
    with peers.sql_connection(database) as conn:
        conn.cursor().execute("DELETE FROM EVENTS")
    assert await target.count(WINDOW) == 0
    assert await target.replace(WINDOW, manifest, FENCE) == 200
    assert await target.count(WINDOW) == 200


async def test_a_failure_between_delete_and_copy_leaves_the_target_exactly_as_before(
    peers: Peers, bucket: str, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = peers.target(bucket, database)
    await target.replace(WINDOW, await staged(peers, bucket, events(250)), FENCE)
    newer = await staged(peers, bucket, events(400, prefix="n"), prefix="part-b")

    def explode(self: Any, cur: Any, files: list[str]) -> int:
        raise ConnectionResetError("network dropped after the DELETE")

    monkeypatch.setattr(type(target), "_copy", explode)
    with pytest.raises(ConnectionResetError):
        await target.replace(WINDOW, newer, FENCE)
    monkeypatch.undo()
    assert await target.count(WINDOW) == 250
    with peers.sql_connection(database) as conn:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM EVENTS WHERE _ID LIKE 'e%'")
        assert cur.fetchone()[0] == 250


async def test_a_load_short_of_the_manifest_rolls_back(
    peers: Peers, bucket: str, database: str
) -> None:
    target = peers.target(bucket, database)
    await target.replace(WINDOW, await staged(peers, bucket, events(100)), FENCE)
    manifest = await staged(peers, bucket, events(150, prefix="m"), prefix="part-c")
    lying = type(manifest)(
        manifest.location, tuple(type(f)(f.uri, f.rows + 1, f.bytes) for f in manifest.files)
    )
    with pytest.raises(LoadCountMismatch, match="rolled back"):
        await target.replace(WINDOW, lying, FENCE)
    assert await target.count(WINDOW) == 100


async def test_a_missing_stage_is_a_clear_error(peers: Peers, bucket: str, database: str) -> None:
    target = peers.target(bucket, database)
    broken = target.copy(update={"stage": "NO_SUCH_STAGE"})
    with pytest.raises(TargetTerminalError, match="EVENTS"):
        await broken.replace(WINDOW, await staged(peers, bucket, events(10)), FENCE)
    assert await target.count(WINDOW) == 0


@pytest.mark.usefixtures("prefect_harness")
async def test_the_whole_flow_elasticsearch_to_s3_to_snowflake(
    peers: Peers, bucket: str, database: str, osmem_url: str, tmp_path: Any
) -> None:
    from elasticsearch import AsyncElasticsearch
    from ledgerflow.blocks.elasticsearch import ElasticsearchSource, PlainJsonNode
    from ledgerflow.demo import DEMO_START
    from ledgerflow.flows.pipeline import windowed_pipeline

    from .kit import Pipeline

    first = DEMO_START.astimezone(UTC)
    es = AsyncElasticsearch(osmem_url, node_class=PlainJsonNode)
    await es.indices.create(
        index="events", mappings={"properties": {"@timestamp": {"type": "date"}}}
    )
    ops: list[dict[str, Any]] = []
    for i in range(3000):
        stamp = (first + timedelta(seconds=i * 5)).isoformat().replace("+00:00", "Z")
        ops += [{"index": {"_index": "events", "_id": f"d{i}"}}, {"@timestamp": stamp, "n": i}]
    await es.bulk(operations=ops, refresh=True)
    await es.close()

    pipeline = Pipeline(tmp_path, rows=10)
    name = pipeline.name
    await ElasticsearchSource.parse_obj(
        {"hosts": [osmem_url], "index": "events", "compatibility_headers": False}
    ).save(name)
    await peers.stage(bucket).save(name)
    await peers.target(bucket, database).save(name)
    await pipeline.save(
        source_block=f"ledgerflow-elasticsearch-source/{name}",
        stage_block=f"ledgerflow-s3-stage/{name}",
        target_block=f"ledgerflow-snowflake-target/{name}",
        end=DEMO_START + timedelta(hours=6),
        concurrency=2,
    )
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    records = await pipeline.records()
    assert len(records) == 3 and {r.pipeline_status for r in records} == {"COMPLETED"}
    assert sum(r.target_count or 0 for r in records) == 3000
    with peers.sql_connection(database) as conn:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*), COUNT(DISTINCT _ID) FROM EVENTS")
        assert cur.fetchone() == (3000, 3000)

    # A rerun of a completed window: reopen it, and it is replaced, not duplicated.
    from ledgerflow.ledger import Ledger

    async with Ledger.from_url(pipeline.ledger_url) as ledger:
        await ledger.reopen(name, [records[0].id], "operator reload")
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    with peers.sql_connection(database) as conn:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*), COUNT(DISTINCT _ID) FROM EVENTS")
        assert cur.fetchone() == (3000, 3000)


# --- SnowflakeTarget: the fence and the window check -------------------------------------------


def ids_loaded(peers: Peers, database: str) -> list[str]:
    with peers.sql_connection(database) as conn:
        cur = conn.cursor()
        cur.execute("SELECT _ID FROM EVENTS ORDER BY _ID")
        return [r[0] for r in cur.fetchall()]


async def test_a_stale_fence_commits_nothing_and_a_newer_one_wins(
    peers: Peers, bucket: str, database: str
) -> None:
    target = peers.target(bucket, database)
    newer = await staged(peers, bucket, events(30, prefix="n"), prefix="part-n")
    older = await staged(peers, bucket, events(20, prefix="o"), prefix="part-o")
    assert await target.replace(WINDOW, newer, Fence("p", START, 5)) == 30
    with pytest.raises(FencedOut, match=r"fence token 4\).*token 5 .*wrote nothing"):
        await target.replace(WINDOW, older, Fence("p", START, 4))
    assert ids_loaded(peers, database) == sorted(f"n{i}" for i in range(30))
    assert await target.replace(WINDOW, newer, Fence("p", START, 5)) == 30  # the same claim
    assert await target.replace(WINDOW, older, Fence("p", START, 6)) == 20
    assert ids_loaded(peers, database) == sorted(f"o{i}" for i in range(20))
    # Another pipeline may not load this table at all (it asserted that pipeline 'q' loads it
    # before: red-team finding #2, two pipelines sharing a table erase each other's rows).
    with pytest.raises(TableOwnedByAnotherPipeline, match=r"loaded by pipeline 'p'.*'q'"):
        await target.replace(WINDOW, newer, Fence("q", START, 1))
    assert ids_loaded(peers, database) == sorted(f"o{i}" for i in range(20))


async def test_old_transaction_begun_then_newer_commits_then_old_commits_nothing(
    peers: Peers, bucket: str, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zombie's connection is open in a transaction (autocommit off) but paused before its
    fence; the newer claim commits meanwhile; the zombie then resumes and commits nothing."""
    target = peers.target(bucket, database)
    zombie_files = await staged(peers, bucket, events(7, prefix="z"), prefix="part-z")
    newer = await staged(peers, bucket, events(12, prefix="n"), prefix="part-n")
    reached, go = threading.Event(), threading.Event()
    real = SnowflakeTarget._advance_fence

    def paused(self: SnowflakeTarget, cur: Any, fence: Fence, end: datetime) -> None:
        if fence.token == 2:
            cur.execute("SELECT COUNT(*) FROM EVENTS")  # the transaction's snapshot is taken
            reached.set()
            assert go.wait(60)
        real(self, cur, fence, end)

    monkeypatch.setattr(SnowflakeTarget, "_advance_fence", paused)
    zombie = asyncio.create_task(target.replace(WINDOW, zombie_files, Fence("p", START, 2)))
    assert await asyncio.to_thread(reached.wait, 60)
    assert await target.replace(WINDOW, newer, Fence("p", START, 3)) == 12
    go.set()
    with pytest.raises(FencedOut, match=r"token 2.*token 3"):
        await zombie
    assert ids_loaded(peers, database) == sorted(f"n{i}" for i in range(12))


HOUR = timedelta(hours=1)
EARLY = Window(START, START + HOUR, START.date(), "1h")  # the grid before a re-tile
LATE = Window(START + HOUR, START + 2 * HOUR, START.date(), "1h")


async def test_a_worker_frozen_on_a_window_a_retile_replaced_is_fenced_out(
    peers: Peers, bucket: str, database: str
) -> None:
    """After a re-tile to 2h, claim 3 loaded the 2h window; the workers frozen on the 1h windows
    (claims 1 and 2) are refused, whatever their window's start."""
    target = peers.target(bucket, database)
    newer = await staged(peers, bucket, events(30, prefix="n"), prefix="part-n")
    assert await target.replace(WINDOW, newer, Fence("p", START, 3)) == 30
    stale = await staged(peers, bucket, events(5, start=LATE.start, prefix="z"), prefix="part-z")
    for token, window in ((1, LATE), (2, EARLY)):
        with pytest.raises(FencedOut, match=rf"fence token {token}\).*token 3 "):
            await target.replace(window, stale, Fence("p", window.start, token))
    assert ids_loaded(peers, database) == sorted(f"n{i}" for i in range(30))


async def test_a_fence_table_made_before_window_ends_is_upgraded_in_place(
    peers: Peers, bucket: str, database: str
) -> None:
    target = peers.target(bucket, database)
    with peers.sql_connection(database) as conn:  # as the previous ledgerflow created it
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE LEDGERFLOW_FENCES (PIPELINE_ID VARCHAR NOT NULL, "
            "WINDOW_START TIMESTAMP_TZ NOT NULL, TOKEN NUMBER(38, 0) NOT NULL)"
        )
        cur.execute("INSERT INTO LEDGERFLOW_FENCES VALUES ('p', %s, 5)", (START,))
    stale = await staged(peers, bucket, events(5, start=LATE.start, prefix="z"), prefix="part-z")
    # The row from before is taken to reach forever: a stale claim of a later window loses.
    with pytest.raises(FencedOut, match=r"token 5 "):
        await target.replace(LATE, stale, Fence("p", LATE.start, 4))
    newer = await staged(peers, bucket, events(12, prefix="n"), prefix="part-n")
    assert await target.replace(WINDOW, newer, Fence("p", START, 6)) == 12
    with peers.sql_connection(database) as conn:
        cur = conn.cursor()
        cur.execute("SELECT PIPELINE_ID, TOKEN, WINDOW_END, TARGET_TABLE FROM LEDGERFLOW_FENCES")
        assert [tuple(r) for r in cur.fetchall()] == [("p", 6, WINDOW.end, "EVENTS")]
    with pytest.raises(TableOwnedByAnotherPipeline, match=r"'EVENTS'.*pipeline 'p'.*'q'"):
        await target.replace(LATE, stale, Fence("q", LATE.start, 1))
    assert ids_loaded(peers, database) == sorted(f"n{i}" for i in range(12))


async def test_a_row_outside_the_window_aborts_the_load(
    peers: Peers, bucket: str, database: str
) -> None:
    target = peers.target(bucket, database)
    await target.replace(WINDOW, await staged(peers, bucket, events(5, prefix="k")), FENCE)
    late = events(3, start=WINDOW.end - timedelta(seconds=1), prefix="x")  # 2 at or past the end
    with pytest.raises(RowsOutsideWindow, match=r"2 of the 3 loaded rows .*TS=2025-03-09 12:00"):
        await target.replace(WINDOW, await staged(peers, bucket, late, prefix="part-x"), FENCE)
    assert ids_loaded(peers, database) == sorted(f"k{i}" for i in range(5))
