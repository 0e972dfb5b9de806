"""ElasticsearchSource against a real OpenSearch-compatible server (osmem-server)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from elasticsearch import AsyncElasticsearch
from ledgerflow.blocks.elasticsearch import ElasticsearchSource, PlainJsonNode
from ledgerflow.errors import SourceError, SourceTerminalError
from ledgerflow.windows import Window, windows_between

from tests.netkit import free_port

START = datetime(2025, 3, 9, 10, tzinfo=UTC)  # 03:00 PDT, just after the spring-forward gap
WINDOW = Window(START, START + timedelta(hours=1), START.date(), "1h")


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def es(osmem_url: str) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(osmem_url, node_class=PlainJsonNode)
    yield client
    await client.close()


async def index_docs(
    es: AsyncElasticsearch, docs: list[dict[str, Any]], index: str = "events", ts_type: str = "date"
) -> None:
    if not await es.indices.exists(index=index):
        await es.indices.create(
            index=index,
            mappings={
                "properties": {"@timestamp": {"type": ts_type}, "service": {"type": "keyword"}}
            },
        )
    for i in range(0, len(docs), 5000):
        ops: list[dict[str, Any]] = []
        for doc in docs[i : i + 5000]:
            ops += [{"index": {"_index": index, "_id": doc.pop("_id")}}, doc]
        result = await es.bulk(operations=ops, refresh=True)
        assert not result["errors"]


def source(url: str, **fields: Any) -> ElasticsearchSource:
    return ElasticsearchSource.parse_obj(
        {"hosts": [url], "index": "events", "compatibility_headers": False, **fields}
    )


async def ids_of(src: ElasticsearchSource, window: Window) -> list[str]:
    ids: list[str] = []
    async for batch in src.extract(window):
        ids += batch.column("_id").to_pylist()
    return ids


async def test_boundaries_are_half_open(es: AsyncElasticsearch, osmem_url: str) -> None:
    await index_docs(
        es,
        [
            {"_id": "before", "@timestamp": iso(START - timedelta(milliseconds=1))},
            {"_id": "at-start", "@timestamp": iso(START)},
            {"_id": "inside", "@timestamp": iso(START + timedelta(minutes=30))},
            {"_id": "last-ms", "@timestamp": iso(WINDOW.end - timedelta(milliseconds=1))},
            {"_id": "at-end", "@timestamp": iso(WINDOW.end)},
        ],
    )
    src = source(osmem_url)
    assert await src.count(WINDOW) == 3
    assert sorted(await ids_of(src, WINDOW)) == ["at-start", "inside", "last-ms"]


async def test_batches_carry_id_index_utc_timestamp_and_the_document(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    await index_docs(
        es,
        [
            {
                "_id": "a",
                "@timestamp": "2025-03-09T03:15:00.250-07:00",
                "service": "web",
                "http": {"status": 200},
            },
            {
                "_id": "b",
                "@timestamp": int((START + timedelta(minutes=1)).timestamp() * 1000),
                "service": "api",
            },
        ],
    )
    src = source(osmem_url, columns={"service": "service", "status": "http.status"})
    batches = [b async for b in src.extract(WINDOW)]
    table = pa.Table.from_batches(batches).sort_by("_id")
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    rows = table.to_pylist()
    assert rows[0]["ts"] == datetime(2025, 3, 9, 10, 15, 0, 250000, tzinfo=UTC)
    assert rows[0]["_index"] == "events"
    assert '"http":{"status":200}' in rows[0]["document"]
    assert (rows[0]["service"], rows[0]["status"]) == ("web", "200")
    assert rows[1]["ts"] == START + timedelta(minutes=1) and rows[1]["status"] is None


# "auto" finds osmem's OpenSearch point in time (search_after + _shard_doc); "never" scrolls.
PAGING = pytest.mark.parametrize(
    ("paging", "api"), [("auto", "opensearch"), ("never", "")], ids=["pit", "scroll"]
)


@PAGING
async def test_documents_sharing_a_timestamp_are_neither_skipped_nor_repeated(
    es: AsyncElasticsearch, osmem_url: str, paging: str, api: str
) -> None:
    same = iso(START + timedelta(minutes=5))
    await index_docs(es, [{"_id": f"d{i:04d}", "@timestamp": same} for i in range(2500)])
    for slices in (1, 4):
        src = source(osmem_url, page_size=100, slices=slices, point_in_time=paging)
        ids = await ids_of(src, WINDOW)
        assert len(ids) == len(set(ids)) == 2500, f"slices={slices}"
        assert await src._pit_api_of(None) == api  # type: ignore[arg-type]
    assert await source(osmem_url).count(WINDOW) == 2500


@PAGING
async def test_sliced_and_unsliced_extraction_give_the_same_ids(
    es: AsyncElasticsearch, osmem_url: str, paging: str, api: str
) -> None:
    docs = [{"_id": f"e{i}", "@timestamp": iso(START + timedelta(seconds=i))} for i in range(3000)]
    await index_docs(es, docs)
    one = source(osmem_url, slices=1, page_size=250, point_in_time=paging)
    many = source(osmem_url, slices=3, page_size=250, point_in_time=paging)
    one_ids, many_ids = await ids_of(one, WINDOW), await ids_of(many, WINDOW)
    assert sorted(one_ids) == sorted(many_ids) and len(one_ids) == len(set(one_ids)) == 3000
    assert await many._pit_api_of(None) == api  # type: ignore[arg-type]


async def test_point_in_time_is_closed_after_the_extraction(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    await index_docs(es, [{"_id": "x", "@timestamp": iso(START)}])
    src = source(osmem_url, point_in_time="opensearch", slices=2)
    assert await ids_of(src, WINDOW) == ["x"]
    response = await es.perform_request(
        "GET", "/_search/point_in_time/_all", headers={"accept": "application/json"}
    )
    assert response.get("pits", []) == []


async def test_a_window_across_the_dst_change(es: AsyncElasticsearch, osmem_url: str) -> None:
    la = "America/Los_Angeles"
    # 01:59 PST and 03:00 PDT are one minute apart; the 2h window [00:00 PST, 03:00 PDT) is 2h.
    docs = [
        {"_id": "pst", "@timestamp": "2025-03-09T01:59:00-08:00"},
        {"_id": "pdt", "@timestamp": "2025-03-09T03:00:00-07:00"},
    ]
    await index_docs(es, docs)
    first, second = windows_between(
        datetime(2025, 3, 9, 8, tzinfo=UTC), datetime(2025, 3, 9, 11, tzinfo=UTC), la, "2h"
    )
    src = source(osmem_url)
    assert await ids_of(src, first) == ["pst"]
    assert await ids_of(src, second) == ["pdt"]


# Every way a default date mapping lets a document give its timestamp, one second apart.
STAMP_FORMS: list[Any] = [
    "2025-03-09T10:00:01Z",
    "2025-03-09T11:00:02+01:00",  # an offset
    "2025-03-09T02:00:03.250-08:00",  # an offset and a fraction
    "2025-03-09T10:00:04.123456789Z",  # nanoseconds: truncated to microseconds
    "2025-03-09T10:00:05",  # no zone: UTC, as Elasticsearch reads it
    int(datetime(2025, 3, 9, 10, 0, 6, tzinfo=UTC).timestamp() * 1000),  # epoch millis
    str(int(datetime(2025, 3, 9, 10, 0, 7, tzinfo=UTC).timestamp() * 1000)),  # ... as text
    ["2025-03-09T10:00:08Z", "2025-03-09T10:00:30Z"],  # an array: the server's value decides
]


async def server_stamps(es: AsyncElasticsearch, index: str) -> dict[str, str]:
    """The server's own formatting of each document's timestamp (docvalue_fields)."""
    return {k: v[0] for k, v in (await server_values(es, index)).items()}


async def server_values(es: AsyncElasticsearch, index: str) -> dict[str, list[str]]:
    """Every value of each document's timestamp, as the server formats it."""
    response = await es.search(
        index=index,
        size=100,
        docvalue_fields=[{"field": "@timestamp", "format": "strict_date_optional_time_nanos"}],
    )
    return {h["_id"]: h["fields"]["@timestamp"] for h in response["hits"]["hits"]}


def as_micros(stamp: str) -> datetime:
    value = pa.array([stamp]).cast(pa.timestamp("ns", tz="UTC"))
    return value.cast(pa.timestamp("us", tz="UTC"), safe=False)[0].as_py()


async def test_timestamps_read_from_source_equal_the_servers_in_every_form(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    docs = [{"_id": f"f{i}", "@timestamp": v} for i, v in enumerate(STAMP_FORMS)]
    await index_docs(es, docs, index="forms")
    expected = {k: as_micros(v) for k, v in (await server_stamps(es, "forms")).items()}
    assert len(expected) == len(STAMP_FORMS)
    src = source(osmem_url, index="forms")
    got: dict[str, datetime] = {}
    async for batch in src.extract(WINDOW):
        got |= dict(
            zip(batch.column("_id").to_pylist(), batch.column("ts").to_pylist(), strict=True)
        )
    # the fast path ran, with the array fetched from the server
    assert src._facts.mapping and src._facts.mapping.stamps_from_source
    assert got == expected


async def test_a_custom_date_format_uses_the_servers_formatting(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    await es.indices.create(
        index="custom",
        mappings={"properties": {"@timestamp": {"type": "date", "format": "yyyy/MM/dd HH:mm:ss"}}},
    )
    await es.bulk(
        operations=[
            {"index": {"_index": "custom", "_id": "c1"}},
            {"@timestamp": "2025/03/09 10:20:30"},
        ],
        refresh=True,
    )
    src = source(osmem_url, index="custom")
    batches = [b async for b in src.extract(WINDOW)]
    assert src._facts.mapping and not src._facts.mapping.stamps_from_source
    assert batches[0].column("ts").to_pylist() == [datetime(2025, 3, 9, 10, 20, 30, tzinfo=UTC)]


async def test_documents_without_the_timestamp_belong_to_no_window(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    await index_docs(
        es,
        [
            {"_id": "dated", "@timestamp": iso(START)},
            {"_id": "undated", "service": "web"},
            {"_id": "null", "@timestamp": None},
        ],
    )
    src = source(osmem_url)
    assert await src.count(WINDOW) == 1
    assert await ids_of(src, WINDOW) == ["dated"]


async def test_the_extra_query_is_anded_with_the_window(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    await index_docs(
        es,
        [
            {"_id": "web", "@timestamp": iso(START), "service": "web"},
            {"_id": "api", "@timestamp": iso(START), "service": "api"},
        ],
    )
    src = source(osmem_url, query={"term": {"service": "web"}})
    assert await src.count(WINDOW) == 1
    assert await ids_of(src, WINDOW) == ["web"]


async def test_a_missing_index_is_an_error_unless_configured_empty(osmem_url: str) -> None:
    with pytest.raises(SourceTerminalError, match=r"does not exist; .*missing_index='empty'"):
        await source(osmem_url, index="nope").count(WINDOW)
    empty = source(osmem_url, index="nope", missing_index="empty")
    assert await empty.count(WINDOW) == 0
    assert await ids_of(empty, WINDOW) == []


async def test_a_timestamp_not_mapped_as_a_date_is_refused(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    await es.indices.create(
        index="events", mappings={"properties": {"@timestamp": {"type": "keyword"}}}
    )
    with pytest.raises(
        SourceTerminalError, match=r"'@timestamp' is not mapped as a date in events \(keyword\)"
    ):
        await source(osmem_url).count(WINDOW)


async def test_a_malformed_extra_query_is_a_clear_error(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    await index_docs(es, [{"_id": "a", "@timestamp": iso(START)}])
    with pytest.raises(SourceTerminalError, match="is the extra query valid DSL"):
        await source(osmem_url, query={"rnage": {"x": 1}}).count(WINDOW)
    with pytest.raises(ValueError, match="must be one query clause"):
        source(osmem_url, query={"term": {}, "match": {}})


async def test_an_unreachable_host_is_a_transient_error_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    src = source(url, max_retries=0, request_timeout=2)
    with pytest.raises(SourceError, match=f"cannot reach Elasticsearch {url}") as info:
        await src.count(WINDOW)
    assert not isinstance(info.value, SourceTerminalError)


@pytest.fixture
async def refusing_server() -> AsyncIterator[str]:
    """A loopback HTTP server that answers every request as Elasticsearch does a bad API key."""

    async def refuse(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "error": {"type": "security_exception", "reason": "unable to authenticate"},
                "status": 401,
            },
            status=401,
            headers={"X-Elastic-Product": "Elasticsearch"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_refused_credentials_are_terminal_and_never_echo_the_secret(
    refusing_server: str,
) -> None:
    src = source(refusing_server, api_key="sk-very-secret-123")
    with pytest.raises(
        SourceTerminalError, match=r"refused the credentials during count \(401\)"
    ) as info:
        await src.count(WINDOW)
    assert "sk-very-secret-123" not in str(info.value)
    assert "sk-very-secret-123" not in repr(src)


def test_config_errors_name_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="set hosts"):
        ElasticsearchSource.parse_obj({"index": "x"})
    with pytest.raises(ValueError, match="set one auth method, not api_key and username/password"):
        ElasticsearchSource.parse_obj(
            {
                "hosts": ["http://h:9200"],
                "index": "x",
                "api_key": "k",
                "username": "u",
                "password": "p",
            }
        )
    with pytest.raises(ValueError, match="slices=64 must be between 1 and 32"):
        ElasticsearchSource.parse_obj({"hosts": ["http://h:9200"], "index": "x", "slices": 64})


@pytest.mark.usefixtures("prefect_harness")
async def test_the_whole_flow_from_elasticsearch_to_the_embedded_stage_and_target(
    es: AsyncElasticsearch, osmem_url: str, tmp_path: Any
) -> None:
    from ledgerflow.demo import DEMO_END, DEMO_START
    from ledgerflow.flows.pipeline import windowed_pipeline

    from .kit import Pipeline

    span = (DEMO_END - DEMO_START).total_seconds()
    first = DEMO_START.astimezone(UTC)
    docs = [
        {
            "_id": f"ev{i}",
            "@timestamp": iso(first + timedelta(seconds=(i * 37.3) % span)),
            "service": ["web", "api"][i % 2],
        }
        for i in range(4000)
    ]
    docs += [{"_id": f"dup{i}", "@timestamp": iso(first + timedelta(hours=5))} for i in range(300)]
    await index_docs(es, docs)
    pipeline = Pipeline(tmp_path, rows=1000)
    await source(osmem_url, slices=2, page_size=200).save(pipeline.name)
    name = await pipeline.save(
        source_block=f"ledgerflow-elasticsearch-source/{pipeline.name}", concurrency=4
    )
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    records = await pipeline.records()
    assert len(records) == 24 and {r.pipeline_status for r in records} == {"COMPLETED"}
    assert sum(r.source_count or 0 for r in records) == 4300
    assert pipeline.warehouse_rows("_id") == (4300, 4300)
    assert all(r.extracted_count == r.source_count for r in records if r.phase_completed == "AUDIT")


@pytest.fixture
async def stalling_proxy(osmem_url: str) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A loopback HTTP proxy to osmem that stalls the 3rd page request once (a scroll or a
    point-in-time search), like a hung node."""
    import aiohttp

    state = {"pages": 0, "stalls": 0}
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        scroll = request.path.startswith("/_search/scroll") and request.method != "DELETE"
        if scroll or (request.path == "/_search" and request.method == "POST"):
            state["pages"] += 1
            if state["pages"] == 3 and not state["stalls"]:
                state["stalls"] += 1
                # Far longer than the client's request_timeout (3 s, itself generous so that a
                # normal page on a busy machine never times out): only this stall does.
                await asyncio.sleep(10)
        async with session.request(
            request.method,
            osmem_url + request.path_qs,
            data=await request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        ) as upstream:
            body = await upstream.read()
            headers = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return web.Response(status=upstream.status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", state
    await runner.cleanup()
    await session.close()


@pytest.mark.usefixtures("prefect_harness")
async def test_a_node_timing_out_mid_extraction_is_retried_and_never_partly_staged(
    es: AsyncElasticsearch, stalling_proxy: tuple[str, dict[str, int]], tmp_path: Any
) -> None:
    from ledgerflow.demo import DEMO_START
    from ledgerflow.flows.pipeline import windowed_pipeline

    from .kit import Pipeline

    proxy, state = stalling_proxy
    first = DEMO_START.astimezone(UTC)
    await index_docs(
        es, [{"_id": f"d{i}", "@timestamp": iso(first + timedelta(seconds=i))} for i in range(1000)]
    )
    pipeline = Pipeline(tmp_path, rows=10)
    await source(proxy, slices=1, page_size=100, request_timeout=3, max_retries=0).save(
        pipeline.name
    )
    name = await pipeline.save(
        source_block=f"ledgerflow-elasticsearch-source/{pipeline.name}",
        end=DEMO_START + timedelta(hours=2),
        max_retry_task=2,
        retry_backoff_seconds=0.1,
    )
    state_ = await windowed_pipeline(config_block=name, return_state=True)
    assert state_.is_completed(), state_.message
    assert state["stalls"] == 1, "the proxy never stalled: the test proved nothing"
    [row] = await pipeline.records()
    assert (row.source_count, row.extracted_count, row.target_count) == (1000, 1000, 1000)
    assert pipeline.warehouse_rows("_id") == (1000, 1000)
    staged = list((tmp_path / "stage").rglob("*.parquet"))
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in staged) == 1000


# --- source fidelity: the server's own reading is the oracle ---------------------------------

BEFORE = Window(START - timedelta(hours=1), START, START.date(), "1h")
# 1741514400000 ms is START; every spelling below sits on or just around it, as JSON text.
BOUNDARY_SPELLINGS = {
    "frac-4": "1741514399999.9995",  # a float rounds this onto START; the server truncates
    "frac-6": "1741514399999.999999",
    "frac-half": "1741514399999.5",
    "frac-text": '"1741514399999.9995"',
    "millis-before": "1741514399999",
    "at-float": "1741514400000.0",
    "at": "1741514400000",
    "after-frac": "1741514400000.000001",
    "after-frac-text": '"1741514400000.0005"',
    "iso-nanos": '"2025-03-09T09:59:59.999999999Z"',
    "iso-offset": '"2025-03-09T10:59:59.9999999+01:00"',
    "iso-at": '"2025-03-09T10:00:00Z"',
}


async def bulk_text(
    es: AsyncElasticsearch, index: str, docs: dict[str, str], ts_type: str = "date"
) -> None:
    """Index documents given as JSON text, so numbers and escapes reach the server as written
    (a Python client would re-spell them). Only the timestamp is mapped."""
    await es.indices.create(
        index=index,
        mappings={"dynamic": False, "properties": {"@timestamp": {"type": ts_type}}},
    )
    lines = []
    for doc_id, text in docs.items():
        lines += [f'{{"index": {{"_index": "{index}", "_id": "{doc_id}"}}}}', text]
    body: Any = "\n".join(lines) + "\n"  # the client passes text through as written
    result = await es.bulk(operations=body, refresh=True)
    assert not result["errors"], result


def stamped(stamps: dict[str, str]) -> dict[str, str]:
    """Documents (as JSON text) that hold only a timestamp, given as JSON text."""
    return {k: f'{{"@timestamp": {v}}}' for k, v in stamps.items()}


async def server_ids(es: AsyncElasticsearch, index: str, window: Window) -> set[str]:
    """Which documents the server's own range query puts in the window."""
    query = source("http://unused:9200", index=index)._window_query(window)
    response = await es.search(index=index, query=query, size=1000, source=False)
    return {h["_id"] for h in response["hits"]["hits"]}


async def extracted(src: ElasticsearchSource, window: Window) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    async for batch in src.extract(window):
        rows |= {row["_id"]: row for row in batch.to_pylist()}
    return rows


@pytest.mark.parametrize("ts_type", ["date", "date_nanos"])
async def test_epoch_millis_with_a_fraction_land_where_the_server_puts_them(
    es: AsyncElasticsearch, osmem_url: str, ts_type: str
) -> None:
    await bulk_text(es, "edges", stamped(BOUNDARY_SPELLINGS), ts_type)
    oracle = {k: as_micros(v) for k, v in (await server_stamps(es, "edges")).items()}
    src = source(osmem_url, index="edges")
    seen: dict[str, dict[str, Any]] = {}
    for window in (BEFORE, WINDOW):
        rows = await extracted(src, window)
        assert set(rows) == await server_ids(es, "edges", window), window
        assert await src.count(window) == len(rows)
        for doc_id, row in rows.items():
            assert window.start <= row["ts"] < window.end, (doc_id, row["ts"])
        seen |= rows
    assert set(seen) == set(BOUNDARY_SPELLINGS)  # the two windows hold every document once
    assert {k: r["ts"] for k, r in seen.items()} == oracle
    # read from _source, not fetched from the server
    assert src._facts.mapping and src._facts.mapping.stamps_from_source


async def test_a_lone_surrogate_loads_as_the_server_returned_it(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    docs = {f"plain{i}": f'{{"@timestamp": "{iso(START)}", "n": {i}}}' for i in range(30)}
    docs["lone"] = f'{{"@timestamp": "{iso(START)}", "s": "a\\ud800b", "k\\udc00": ["\\ud83d"]}}'
    docs["pair"] = f'{{"@timestamp": "{iso(START)}", "s": "\\ud83d\\ude00"}}'
    await bulk_text(es, "events", docs)
    src = source(osmem_url, page_size=10, columns={"s": "s"})
    rows = await extracted(src, WINDOW)
    assert set(rows) == set(docs)
    lone = rows["lone"]
    # The unpaired surrogate stays the JSON escape the server sent: valid UTF-8 text that a
    # JSON reader turns back into the same code unit.
    assert "\\ud800" in lone["document"] and "\\udc00" in lone["document"]
    assert lone["s"] == "a\\ud800b"
    assert json.loads(lone["document"]) == {
        "@timestamp": iso(START),
        "s": "a\ud800b",
        "k\udc00": ["\ud83d"],
    }
    assert json.loads(rows["pair"]["document"]) == {"@timestamp": iso(START), "s": "\U0001f600"}
    assert json.loads(rows["plain7"]["document"]) == {"@timestamp": iso(START), "n": 7}
    table = pa.Table.from_pylist(list(rows.values()))
    pq.write_table(table, io.BytesIO())  # the stage can write it


BIG_NUMBERS = (
    '{"@timestamp": "2025-03-09T10:00:00Z", "u65": 18446744073709551617,'
    ' "neg": -18446744073709551617, "u64": 18446744073709551615, "i63": -9223372036854775808,'
    ' "dec": 1.10000000000000000001, "long_dec": 12345678901234567890.123456789,'
    ' "tiny": 1e-400, "list": [1, 18446744073709551616, 0.30000000000000000001]}'
)


@pytest.mark.parametrize("paging", ["auto", "never"])
async def test_big_numbers_round_trip_exactly(
    es: AsyncElasticsearch, osmem_url: str, paging: str
) -> None:
    docs = {f"plain{i}": f'{{"@timestamp": "{iso(START)}", "n": {i}.5}}' for i in range(30)}
    docs["big"] = BIG_NUMBERS
    await bulk_text(es, "events", docs)
    rows = await extracted(source(osmem_url, page_size=10, point_in_time=paging), WINDOW)
    async with aiohttp.ClientSession() as http, http.get(f"{osmem_url}/events/_doc/big") as got:
        served = json.loads(await got.read(), parse_float=Decimal)["_source"]  # the raw bytes
    assert set(rows) == set(docs)

    def exact(text: str) -> Any:
        return json.loads(text, parse_float=Decimal)

    assert exact(rows["big"]["document"]) == exact(BIG_NUMBERS)
    assert exact(rows["big"]["document"]) == served
    assert exact(rows["plain3"]["document"]) == {"@timestamp": iso(START), "n": Decimal("3.5")}


ARRAY_STAMPS = {
    "spans-up": '["2025-03-09T09:30:00Z", "2025-03-09T10:30:00Z"]',
    "spans-down": '["2025-03-09T10:30:00Z", "2025-03-09T09:30:00Z"]',
    "spans-mixed": '[1741514400500, "2025-03-09T09:59:59.999Z"]',  # epoch millis and ISO
    "inside": '["2025-03-09T10:40:00Z", "2025-03-09T10:20:00Z"]',
    "from-earlier": '["2025-03-09T08:00:00Z", "2025-03-09T10:10:00Z"]',  # a third window's
    "single": '"2025-03-09T10:05:00Z"',
}


@pytest.mark.parametrize("ts_type", ["date", "date_nanos"])
async def test_an_array_timestamp_belongs_to_the_window_of_its_earliest_value(
    es: AsyncElasticsearch, osmem_url: str, ts_type: str
) -> None:
    await bulk_text(es, "arrays", stamped(ARRAY_STAMPS), ts_type)
    # The oracle: every value as the server reads it; the earliest decides.
    earliest = {
        k: min(as_micros(v) for v in values)
        for k, values in (await server_values(es, "arrays")).items()
    }
    src = source(osmem_url, index="arrays", slices=2, page_size=10)
    seen: list[str] = []
    for window in (BEFORE, WINDOW):
        rows = await extracted(src, window)
        assert await src.count(window) == len(rows)
        expected = {k for k, v in earliest.items() if window.start <= v < window.end}
        assert set(rows) == expected, window
        assert {k: r["ts"] for k, r in rows.items()} == {k: earliest[k] for k in expected}
        seen += rows
    assert sorted(seen) == sorted(set(ARRAY_STAMPS) - {"from-earlier"})  # each once


@pytest.mark.usefixtures("prefect_harness")
async def test_boundary_documents_and_exact_numbers_load_once_end_to_end(
    es: AsyncElasticsearch, osmem_url: str, tmp_path: Any
) -> None:
    """The way a float lost a document: stamped with the next window's start, loaded there, and
    deleted by that window's replace. Every boundary document lands once; the odd one is intact."""
    import duckdb
    from ledgerflow.demo import DEMO_START
    from ledgerflow.flows.pipeline import windowed_pipeline

    from .kit import Pipeline

    first = DEMO_START.astimezone(UTC)
    docs: dict[str, str] = {}
    for k in range(1, 4):  # the 2h windows' inner boundaries
        millis = int((first + timedelta(hours=2 * k)).timestamp() * 1000)
        docs |= stamped({f"edge{k}": f"{millis - 1}.9995", f"at{k}": str(millis)})
    odd = BIG_NUMBERS.replace("2025-03-09T10:00:00Z", iso(first + timedelta(minutes=30)))
    docs["odd"] = odd.replace('"list"', '"s": "a\\ud800b", "list"')
    await bulk_text(es, "events", docs)
    pipeline = Pipeline(tmp_path, rows=10)
    await source(osmem_url, page_size=10).save(pipeline.name)
    name = await pipeline.save(
        source_block=f"ledgerflow-elasticsearch-source/{pipeline.name}",
        end=first + timedelta(hours=8),
    )
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    records = await pipeline.records()
    assert len(records) == 4 and {r.pipeline_status for r in records} == {"COMPLETED"}
    assert pipeline.warehouse_rows("_id") == (len(docs), len(docs))
    con = duckdb.connect(str(pipeline.warehouse))
    try:
        row = con.execute("SELECT document FROM web_events WHERE _id = 'odd'").fetchone()
    finally:
        con.close()
    assert row is not None
    assert json.loads(row[0], parse_float=Decimal) == json.loads(docs["odd"], parse_float=Decimal)


# --- fingerprint: what lets a crashed worker's stage be resumed ----------------------------------
# Checked against osmem, which differs from Elasticsearch here: it keeps one `_seq_no` counter per
# index whatever its shard count (Elasticsearch counts per shard, hence None for more than one
# shard), and it refuses scripts in aggregations (so no scripted hash of `_id`/`_version`).


async def test_the_fingerprint_changes_with_any_write_to_the_window_and_only_then(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    inside = START + timedelta(minutes=10)
    await index_docs(
        es,
        [{"_id": f"d{i}", "@timestamp": iso(inside), "service": "web"} for i in range(5)]
        + [{"_id": "outside", "@timestamp": iso(WINDOW.end + timedelta(minutes=1))}],
    )
    src = source(osmem_url)
    first = await src.fingerprint(WINDOW)
    assert first is not None and first == await src.fingerprint(WINDOW)

    # A document outside the window changes nothing.
    await es.index(index="events", id="outside", document={"@timestamp": iso(WINDOW.end)})
    await es.indices.refresh(index="events")
    assert await src.fingerprint(WINDOW) == first

    # An edit in place (same count).
    doc = {"@timestamp": iso(inside), "service": "api"}
    await es.index(index="events", id="d1", document=doc, refresh=True)
    edited = await src.fingerprint(WINDOW)
    assert edited not in (None, first)

    # A delete plus a late arrival (same count again).
    await es.delete(index="events", id="d0", refresh=True)
    await es.index(index="events", id="late", document={"@timestamp": iso(inside)}, refresh=True)
    assert await src.count(WINDOW) == 5
    swapped = await src.fingerprint(WINDOW)
    assert swapped not in (None, first, edited)

    # The extra query's documents only.
    web = source(osmem_url, query={"term": {"service": "web"}})
    before = await web.fingerprint(WINDOW)
    await es.index(index="events", id="d1", document=doc, refresh=True)  # still "api"
    assert await web.fingerprint(WINDOW) == before


async def test_the_fingerprint_is_unknown_where_it_cannot_be_trusted(
    es: AsyncElasticsearch, osmem_url: str
) -> None:
    # Sequence numbers are per shard: a delete in one and an insert in another could cancel.
    await es.indices.create(
        index="sharded",
        mappings={"properties": {"@timestamp": {"type": "date"}}},
        settings={"number_of_shards": 2},
    )
    await es.index(index="sharded", id="a", document={"@timestamp": iso(START)}, refresh=True)
    assert await source(osmem_url, index="sharded").fingerprint(WINDOW) is None
    # A missing index treated as empty has nothing to fingerprint.
    assert await source(osmem_url, index="nope", missing_index="empty").fingerprint(WINDOW) is None
