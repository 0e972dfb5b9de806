"""A page of hits as an Arrow batch: `_id`, `_index`, the timestamp as UTC, the document as JSON
text (for a Snowflake VARIANT) and any mapped columns as text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from elasticsearch import AsyncElasticsearch

from ledgerflow.blocks.elasticsearch.jsontext import dig, field_text, json_text, text_column
from ledgerflow.blocks.elasticsearch.probe import TimestampMapping
from ledgerflow.blocks.elasticsearch.stamps import (
    UTC_MICROS,
    parse_stamps,
    source_value,
    utc_micros,
)

Hit = Mapping[str, Any]


@dataclass(frozen=True)
class Shaping:
    """How one extraction turns hits into batches."""

    client: AsyncElasticsearch
    timestamp_field: str
    mapping: TimestampMapping
    columns: Mapping[str, str]

    def docvalue_fields(self) -> list[dict[str, str]]:
        return [{"field": self.timestamp_field, "format": "strict_date_optional_time_nanos"}]

    async def batch(self, hits: list[Hit]) -> pa.RecordBatch:
        indices = pa.array([h["_index"] for h in hits], pa.string())
        data: dict[str, pa.Array] = {
            "_id": pa.array([h["_id"] for h in hits], pa.string()),
            "_index": indices,
            "ts": await self._timestamps(hits, indices),
            "document": pa.array([json_text(h.get("_source", {})) for h in hits], pa.string()),
        }
        for column, path in self.columns.items():
            data[column] = text_column([field_text(dig(h.get("_source", {}), path)) for h in hits])
        return pa.RecordBatch.from_pydict(data)

    async def _timestamps(self, hits: list[Hit], indices: pa.Array) -> pa.Array:
        """Each hit's timestamp as UTC microseconds: from _source where the mapping allows,
        with the server's own formatting fetched for any value this cannot read."""
        if not self.mapping.stamps_from_source:
            return utc_micros(pa.array([self._docvalue(h) for h in hits], pa.string()))
        values = [source_value(h.get("_source") or {}, self.timestamp_field) for h in hits]
        parsed = parse_stamps(values)
        unread = [i for i, v in enumerate(parsed) if v is None]
        if unread:
            fetched = await self._server_stamps([hits[i] for i in unread])
            for i in unread:
                parsed[i] = fetched.get((hits[i]["_index"], hits[i]["_id"]))
        stamps = pa.array(parsed, UTC_MICROS)
        if not self.mapping.millis_indices:
            return stamps
        in_millis = pc.is_in(indices, pa.array(self.mapping.millis_indices, pa.string()))
        truncated = pc.floor_temporal(stamps, unit="millisecond")
        return pc.if_else(in_millis, truncated, stamps)

    async def _server_stamps(self, hits: list[Hit]) -> dict[tuple[str, str], int | None]:
        """The server-formatted timestamps of a few hits (values _source gives in a form this
        cannot read: a custom format, an array, a nested object)."""
        found: dict[tuple[str, str], int | None] = {}
        by_index: dict[str, list[str]] = {}
        for h in hits:
            by_index.setdefault(h["_index"], []).append(h["_id"])
        for index, ids in by_index.items():
            response = await self.client.search(
                index=index,
                query={"ids": {"values": ids}},
                docvalue_fields=self.docvalue_fields(),
                source=False,
                size=len(ids),
            )
            for h in response["hits"]["hits"]:
                stamp = utc_micros(pa.array([self._docvalue(h)], pa.string()))[0]
                found[(index, h["_id"])] = stamp.value
        return found

    def _docvalue(self, hit: Hit) -> str | None:
        """The timestamp as the server formatted it (docvalue_fields), if the hit carries it;
        of several values the earliest, the one that places the document in a window."""
        values: list[str] = (hit.get("fields") or {}).get(self.timestamp_field, [None])
        if len(values) == 1:
            return values[0]
        # The formatted texts differ in length, so they are compared as instants, not text.
        micros = utc_micros(pa.array(values, pa.string())).cast(pa.int64()).to_pylist()
        return str(values[micros.index(min(micros))])
