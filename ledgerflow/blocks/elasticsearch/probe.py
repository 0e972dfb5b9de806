"""What a server and its mapping allow, asked once per block: read before the first request
that depends on it, and kept as one immutable answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elasticsearch import ApiError, AsyncElasticsearch

from ledgerflow.blocks.elasticsearch.paging import PitApi, close_pit, open_pit
from ledgerflow.blocks.elasticsearch.stamps import (
    DATE_TYPES,
    DEFAULT_DATE_FORMAT,
    READABLE_DATE_FORMATS,
)
from ledgerflow.errors import SourceTerminalError


@dataclass(frozen=True)
class TimestampMapping:
    """How every index the block reads maps its timestamp field."""

    # True when every index maps it with ISO 8601 / epoch formats only, so it can be read
    # from _source; otherwise each hit carries the server-formatted value (docvalue_fields).
    stamps_from_source: bool
    # Indices that map it as `date`, which keeps milliseconds: a finer _source value is truncated.
    millis_indices: frozenset[str]


@dataclass(frozen=True)
class ServerFacts:
    """What has been learned about the server so far; None where not asked yet."""

    mapping: TimestampMapping | None = None
    pit_api: PitApi | None = None


async def read_mapping(client: AsyncElasticsearch, index: str, field: str) -> TimestampMapping:
    """The timestamp's mapping in every index `index` matches; a field that is not a date in
    one of them is a config error (a window of it would be read wrongly)."""
    found = await client.indices.get_field_mapping(index=index, fields=field)
    kinds: dict[str, str | None] = {}
    formats: set[str] = set()
    for name, body in found.items():
        mapping = body.get("mappings", {}).get(field, {}).get("mapping", {})
        leaf: dict[str, Any] = next(iter(mapping.values()), {}) if mapping else {}
        kinds[name] = leaf.get("type")
        formats.update(str(leaf.get("format") or DEFAULT_DATE_FORMAT).split("||"))
    wrong = {i: k for i, k in kinds.items() if k not in DATE_TYPES}
    if wrong:
        raise SourceTerminalError(
            f"timestamp_field={field!r} is not mapped as a date in "
            + ", ".join(f"{i} ({k or 'unmapped'})" for i, k in sorted(wrong.items()))
            + f"; it must be one of {DATE_TYPES} in every index {index!r} matches"
        )
    return TimestampMapping(
        stamps_from_source=formats <= READABLE_DATE_FORMATS,
        millis_indices=frozenset(i for i, k in kinds.items() if k == "date"),
    )


async def find_pit_api(client: AsyncElasticsearch, index: str) -> PitApi:
    """The point-in-time API the server answers: Elasticsearch's, else OpenSearch's, else none
    (a scroll). Each is tried by opening (and closing) a short point in time."""
    apis: tuple[PitApi, ...] = ("elasticsearch", "opensearch")
    for api in apis:
        try:
            pit_id = await open_pit(client, index, api, keep_alive="10s")
        except ApiError as exc:
            if "index_not_found" in str(exc) or exc.meta.status not in (400, 404, 405):
                raise
            continue  # no such route on this server
        await close_pit(client, api, pit_id)
        return api
    return ""
