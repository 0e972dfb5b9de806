"""The Elasticsearch package: its slices merged into one bounded stream, its block type kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from ledgerflow.blocks.elasticsearch.paging import Page, fan_in

# A hang detector, not a timing assertion: every case finishes in milliseconds or never.
HANG = 30


async def pages(name: str, n: int, closed: list[str]) -> AsyncIterator[Page]:
    try:
        for i in range(n):
            yield [f"{name}{i}"]
            await asyncio.sleep(0)
    finally:
        closed.append(name)


async def failing(after: int) -> AsyncIterator[Page]:
    for i in range(after):
        yield [f"f{i}"]
    raise RuntimeError("slice 2 lost its node")


async def test_every_page_of_every_slice_arrives_once() -> None:
    closed: list[str] = []
    got = [p async for p in fan_in([pages("a", 50, closed), pages("b", 70, closed)], maxsize=2)]
    assert sorted(x for p in got for x in p) == sorted(
        [f"a{i}" for i in range(50)] + [f"b{i}" for i in range(70)]
    )
    assert sorted(closed) == ["a", "b"]


async def test_a_failing_slice_fails_the_stream_while_others_fill_the_queue() -> None:
    closed: list[str] = []

    async def drain() -> list[Page]:
        return [p async for p in fan_in([pages("a", 10_000, closed), failing(3)], maxsize=1)]

    with pytest.raises(RuntimeError, match="slice 2 lost its node"):
        await asyncio.wait_for(drain(), HANG)
    assert closed == ["a"]  # the healthy slice was stopped and closed (its scroll cleared)


async def test_leaving_early_stops_and_closes_every_slice() -> None:
    closed: list[str] = []
    stream = fan_in([pages("a", 10_000, closed), pages("b", 10_000, closed)], maxsize=1)
    async for _ in stream:
        break
    await asyncio.wait_for(stream.aclose(), HANG)  # type: ignore[attr-defined]
    assert sorted(closed) == ["a", "b"]


def test_blocks_saved_before_the_split_still_load_by_their_slug() -> None:
    from ledgerflow.blocks.elasticsearch import ElasticsearchSource
    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import lookup_type

    # A saved document names its block type by slug, which Prefect's registry maps to the class
    # (the module the class lives in is recorded nowhere).
    assert ElasticsearchSource.get_block_type_slug() == "ledgerflow-elasticsearch-source"
    assert lookup_type(Block, "ledgerflow-elasticsearch-source") is ElasticsearchSource
