"""Paging a window: point in time + `search_after` + `_shard_doc` where the server has a point
in time, a sliced scroll (cleared at the end) where it does not, and the slices read in
parallel into one bounded stream of pages.

Both sort on a per-document tiebreaker, so documents that share a timestamp are never skipped
or repeated (the mistake of tapping `search_after` on the timestamp alone)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from elasticsearch import AsyncElasticsearch

from ledgerflow.blocks.elasticsearch.stamps import iso_millis
from ledgerflow.windows import Window

# Which point-in-time API a server has: Elasticsearch's, OpenSearch's, or none ("": a scroll).
PitApi = Literal["elasticsearch", "opensearch", ""]
Page = list[Any]  # the hits of one response
_END = object()


@dataclass(frozen=True)
class Reading:
    """What every request of one window's extraction shares."""

    client: AsyncElasticsearch
    index: str
    query: dict[str, Any]
    search_args: dict[str, Any]
    keep_alive: str
    slices: int

    def slice_clause(self, slice_id: int) -> dict[str, Any]:
        return {"slice": {"id": slice_id, "max": self.slices}} if self.slices > 1 else {}


def window_query(window: Window, field: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    """The window's documents: those whose earliest timestamp value is in [start, end).

    A range query alone matches a document whose timestamp is an array in every window
    that any of its values falls in, so it would be counted and loaded more than once. The
    must_not clause leaves it to the window of its earliest value (the value `ts` holds);
    for a single value it changes nothing.
    """
    fmt = "strict_date_optional_time"
    start, end = iso_millis(window.start), iso_millis(window.end)
    clauses: list[dict[str, Any]] = [{"range": {field: {"gte": start, "lt": end, "format": fmt}}}]
    if extra:
        clauses.append(extra)
    earlier = {"range": {field: {"lt": start, "format": fmt}}}
    return {"bool": {"filter": clauses, "must_not": [earlier]}}


async def window_pages(reading: Reading, api: PitApi) -> AsyncIterator[Page]:
    """Every page of the window, the slices read in parallel. One point in time serves every
    slice, so they all read the same snapshot; it is closed at the end."""
    pit_id = await open_pit(reading.client, reading.index, api, reading.keep_alive) if api else None
    try:
        pagers = [
            _pit_pages(reading, i, pit_id) if pit_id is not None else _scroll_pages(reading, i)
            for i in range(reading.slices)
        ]
        async for page in fan_in(pagers, maxsize=4 * reading.slices):
            yield page
    finally:
        if pit_id is not None:
            with contextlib.suppress(Exception):  # it expires after keep_alive anyway
                await close_pit(reading.client, api, pit_id)


async def fan_in(pagers: Sequence[AsyncIterator[Page]], maxsize: int) -> AsyncIterator[Page]:
    """The pages of every pager as they come, at most `maxsize` waiting (bounded memory).

    The pagers run in a TaskGroup inside a producer task, never in this generator: a TaskGroup
    cancels the task that entered it when a child fails, and here that task is the consumer,
    which may be awaiting its own work between two pages. The first failure ends the group
    (the other pagers are cancelled) and is raised here; leaving early cancels every pager.
    """
    pages: asyncio.Queue[Any] = asyncio.Queue(maxsize=maxsize)

    async def pump(pager: AsyncIterator[Page]) -> None:
        # Closed here, not left to the garbage collector: a scroll is cleared as the pager ends.
        async with contextlib.aclosing(pager):  # type: ignore[type-var]
            async for page in pager:
                await pages.put(page)

    async def produce() -> None:
        outcome: object = _END
        try:
            async with asyncio.TaskGroup() as group:
                for pager in pagers:
                    group.create_task(pump(pager))
        except BaseExceptionGroup as failed:
            outcome = failed.exceptions[0]
        await pages.put(outcome)

    producer = asyncio.create_task(produce())
    try:
        while (page := await pages.get()) is not _END:
            if isinstance(page, BaseException):
                raise page
            yield page
    finally:
        producer.cancel()
        await asyncio.wait([producer])


async def open_pit(client: AsyncElasticsearch, index: str, api: PitApi, keep_alive: str) -> str:
    if api == "opensearch":
        response = await client.perform_request(
            "POST",
            f"/{quote(index, safe=',*')}/_search/point_in_time",
            params={"keep_alive": keep_alive},
            headers={"accept": "application/json"},
        )
        return str(response["pit_id"])
    opened = await client.open_point_in_time(index=index, keep_alive=keep_alive)
    return str(opened["id"])


async def close_pit(client: AsyncElasticsearch, api: PitApi, pit_id: str) -> None:
    if api == "opensearch":
        await client.perform_request(
            "DELETE",
            "/_search/point_in_time",
            headers={"accept": "application/json", "content-type": "application/json"},
            body={"pit_id": [pit_id]},
        )
    else:
        await client.close_point_in_time(id=pit_id)


async def _pit_pages(reading: Reading, slice_id: int, pit_id: str) -> AsyncIterator[Page]:
    """search_after over the point in time, ordered by _shard_doc: a total order, so
    documents sharing a timestamp are never skipped or repeated."""
    after: list[Any] | None = None
    while True:
        extra = reading.slice_clause(slice_id)
        if after is not None:
            extra["search_after"] = after
        response = await reading.client.search(
            pit={"id": pit_id, "keep_alive": reading.keep_alive},
            query=reading.query,
            sort=[{"_shard_doc": "asc"}],
            track_total_hits=False,
            **reading.search_args,
            **extra,
        )
        pit_id = response.get("pit_id", pit_id)
        hits = response["hits"]["hits"]
        if not hits:
            return
        yield hits
        after = hits[-1]["sort"]


async def _scroll_pages(reading: Reading, slice_id: int) -> AsyncIterator[Page]:
    client = reading.client
    response = await client.search(
        index=reading.index,
        scroll=reading.keep_alive,
        query=reading.query,
        sort=["_doc"],
        **reading.search_args,
        **reading.slice_clause(slice_id),
    )
    scroll_id = response.get("_scroll_id")
    try:
        while hits := response["hits"]["hits"]:
            yield hits
            response = await client.scroll(scroll_id=scroll_id, scroll=reading.keep_alive)
            scroll_id = response.get("_scroll_id", scroll_id)
    finally:
        if scroll_id:
            with contextlib.suppress(Exception):
                await client.clear_scroll(scroll_id=scroll_id)
